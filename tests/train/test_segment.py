"""``attnmel segment``'s input geometry: the data layer's, or a refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from attnmel.errors import AttnMelError
from attnmel.train.segment import _prepare


def _data(**over) -> dict:
    return {"image_size": 32, "resize": 32, "center_crop": None, "crop_to_mask": None, **over}


def test_segment_feeds_the_whole_image_as_evaluation_does():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    x = _prepare(image, _data(), [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    # By hand: the whole 70 x 50 image resized by PIL (bilinear) to 32 x 32, then normalised.
    ref = np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    ref = (torch.from_numpy(ref).permute(2, 0, 1)[None] - 0.5) / 0.25
    assert x.shape == (1, 3, 32, 32)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("over,key", [({"center_crop": 0.8}, "center_crop"), ({"resize": 40}, "resize"),
                                      ({"crop_to_mask": "crop"}, "crop_to_mask")])
def test_segment_refuses_a_run_that_saw_part_of_each_image(over, key):
    image = np.zeros((50, 70, 3), dtype=np.uint8)
    with pytest.raises(AttnMelError, match=f"data.{key}") as e:
        _prepare(image, _data(**over), [0.5] * 3, [0.25] * 3)
    assert "\n" not in str(e.value)
