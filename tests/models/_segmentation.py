"""The short segmenter fit that the U-Net and SegNet learning tests share."""

from __future__ import annotations

import torch
from torch import nn


def fit_and_score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int,
                  n_train: int = 64) -> tuple[float, float]:
    """Mean Jaccard on the held-out ``x[n_train:]`` before and after ``epochs`` over ``x[:n_train]`` (dice + BCE,
    Adam at 5e-3, shuffled batches of 8 from a seeded generator)."""
    from attnmel.losses.segmentation import build_segmentation_loss
    from attnmel.train.segmentation import jaccard_per_image

    def held_out() -> float:
        model.eval()
        with torch.no_grad():
            return jaccard_per_image(model(x[n_train:]), y[n_train:]).mean().item()

    loss_fn = build_segmentation_loss({"name": "dice_bce"})
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    before = held_out()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(n_train, generator=g).split(8):
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    return before, held_out()
