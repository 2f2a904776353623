"""``attnmel predict``: class probabilities for arbitrary images, with optional attention overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attnmel.errors import AttnMelError


def display_crop(image: np.ndarray, data_cfg: dict) -> np.ndarray:
    """The region the eval transform sees, as RGB uint8 at ``image_size``: for drawing maps over it.

    Eval geometry = square centre crop (``center_crop`` x short side) -> resize to ``resize`` -> centre crop
    ``image_size``, which is one centre crop of side ``center_crop * short * image_size / resize``
    (``center_crop`` null: the whole image resized to a square first).
    """
    from PIL import Image

    h, w = image.shape[:2]
    size, resize = int(data_cfg["image_size"]), int(data_cfg["resize"])
    if data_cfg["center_crop"] is None:  # the whole image squeezed to resize x resize, then the centre crop
        full = np.asarray(Image.fromarray(image).resize((resize, resize), Image.BILINEAR))
        off = (resize - size) // 2
        return np.ascontiguousarray(full[off:off + size, off:off + size])
    side = max(1, int(round(data_cfg["center_crop"] * min(h, w) * size / resize)))
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(image[top:top + side, left:left + side])
    return np.asarray(crop.resize((size, size), Image.BILINEAR))


def predict_images(run_dir: str | Path, images: list[Path], overlay_dir: Path | None = None,
                   batch_size: int = 16, print_table: bool = True) -> list[dict]:
    """Probabilities per image (printed as a table); ``overlay_dir``: a PNG per image with its maps."""
    from attnmel.data.datamodule import AttnMelDataModule
    from attnmel.data.images import load_image
    from attnmel.train.rundir import load_run

    run = load_run(run_dir)
    if run.cfg.get("task", "classification") != "classification":
        raise AttnMelError(f"{run_dir}: a segmentation run; use `attnmel segment`")
    for p in images:  # fail before any work on the first bad file, naming it
        load_image(p)
    dm = AttnMelDataModule(run.cfg)
    ds = dm.predict_dataset([Path(p) for p in images])
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    rows: list[dict] = []
    maps_all: list[dict[str, np.ndarray]] = []
    with torch.inference_mode():
        for batch in loader:
            out = run.model(batch["image"])
            probs = torch.softmax(out.logits.float(), dim=1).numpy()
            maps = {k: v[:, 0].float().numpy() for k, v in out.maps.items()}
            if not maps and hasattr(run.model, "class_activation_map"):
                cam = run.model.class_activation_map(batch["image"])[:, run.melanoma_index]
                maps = {"cam": cam.float().numpy()}
            for i in range(probs.shape[0]):
                row = {"image": str(images[len(rows)]), **{c: float(p) for c, p in zip(run.class_names, probs[i])}}
                row["predicted"] = run.class_names[int(probs[i].argmax())]
                rows.append(row)
                maps_all.append({k: v[i] for k, v in maps.items()})
    if print_table:
        _print_rows(rows, run.class_names)
    if overlay_dir is not None:
        overlay_dir = Path(overlay_dir)
        for row, maps in zip(rows, maps_all):
            path = Path(row["image"])
            shown = display_crop(load_image(path), run.cfg["data"])
            write_overlay(overlay_dir / f"{path.stem}_attention.png", shown, maps,
                          title=f"{row['predicted']} (melanoma p={row[run.class_names[run.melanoma_index]]:.3f})")
        print(f"overlays: {overlay_dir}")
    return rows


def _print_rows(rows: list[dict], class_names: list[str]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="predictions")
    table.add_column("image", overflow="fold")
    for c in class_names:
        table.add_column(c, justify="right")
    table.add_column("predicted")
    for r in rows:
        table.add_row(escape(Path(r["image"]).name), *(f"{r[c]:.4f}" for c in class_names), r["predicted"])
    Console().print(table)


def write_overlay(path: Path, image: np.ndarray, maps: dict[str, np.ndarray], title: str = "") -> Path:
    """The image, then each map upsampled and re-normalised to [0, 1] over it (jet, alpha 0.5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attnmel.explain.maps import postprocess_map
    from attnmel.io import atomic_path

    n = 1 + len(maps)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False)
    axes[0, 0].imshow(image)
    axes[0, 0].set_title("image", fontsize=9)
    for ax, (name, m) in zip(axes[0, 1:], maps.items()):
        ax.imshow(image)
        ax.imshow(postprocess_map(m, image.shape[:2]), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
    for ax in axes[0]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
