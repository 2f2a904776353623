"""Real artefact annotations as data: both published flag formats, masks, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from attnmel.data.artefacts import list_artefact_masks, load_artefact_mask, read_flags
from attnmel.errors import AttnMelError
from tests._shared import shared_data

# ../shared beside the clone; a user's clone has none: skipped.
ARTEFACTS = shared_data("artefacts")
IDS = ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004"]
# The table both files below encode: ruler on 1 and 4, patches on 2.
TABLE = {"ISIC_0000001": {"ruler": 1, "patches": 0}, "ISIC_0000002": {"ruler": 0, "patches": 1},
         "ISIC_0000003": {"ruler": 0, "patches": 0}, "ISIC_0000004": {"ruler": 1, "patches": 0}}


def write_bissoto(path, table=TABLE, bad=None):
    """Bissoto et al. 2020's layout: ';', an unnamed index column, ids with .png, label columns."""
    lines = [";image;ruler;patches;label;label_string"]
    for i, (key, row) in enumerate(table.items()):
        ruler = bad if bad is not None and i == 2 else row["ruler"]
        lines.append(f"{i};{key}.png;{ruler};{row['patches']};0;benign")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_r2r(path, table=TABLE):
    """Reveal-to-Revise's layout: artefact -> ids with _downsampled; an unlisted image has no artefact."""
    data = {a: [f"{k}_downsampled" for k, row in table.items() if row[a]] for a in ("ruler", "patches")}
    path.write_text(json.dumps(data))
    return path


def test_each_published_format_reads_to_the_same_table(tmp_path):
    csv = read_flags(write_bissoto(tmp_path / "isic_bias.csv"), IDS)
    js = read_flags(write_r2r(tmp_path / "artifacts_isic.json"), IDS)
    assert csv.names == ["ruler", "patches"] and sorted(js.names) == ["patches", "ruler"]
    for key, row in TABLE.items():
        assert csv.row(key) == row and js.row(key) == row
        assert csv.row(f"{key}.jpg") == row  # ids compare without extension
    np.testing.assert_array_equal(csv.matrix(IDS), js.matrix(IDS)[:, [js.names.index(a) for a in csv.names]])


def test_bad_flags(tmp_path):
    with pytest.raises(AttnMelError) as e:
        read_flags(write_bissoto(tmp_path / "f.csv", bad="2"), IDS)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "f.csv" in msg and "line 4" in msg and "column ruler" in msg
    with pytest.raises(AttnMelError) as e:
        read_flags(write_bissoto(tmp_path / "g.csv"), ["OTHER_1", "OTHER_2"])
    assert "g.csv" in str(e.value) and "0 of 4 ids matched" in str(e.value)


def test_artefact_masks_any_colour_resized_to_the_image(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[2:4, 2:6] = (31, 120, 180)  # Reveal-to-Revise's patch colour
    Image.fromarray(rgb).save(tmp_path / "ISIC_0000002_downsampled.png")
    Image.fromarray(rgb).save(tmp_path / "ISIC_9999999.png")
    masks = list_artefact_masks(tmp_path, IDS)
    assert list(masks) == ["ISIC_0000002"]
    m = load_artefact_mask(masks["ISIC_0000002"], (16, 16))
    expected = np.zeros((16, 16), bool)
    expected[4:8, 4:12] = True
    np.testing.assert_array_equal(m, expected)
    with pytest.raises(AttnMelError, match="0 of 2 masks matched"):
        list_artefact_masks(tmp_path, ["X_1"])


@pytest.mark.skipif(not ARTEFACTS.is_dir(), reason=f"no artefact annotations at {ARTEFACTS}")
def test_real_flag_files_agree_with_the_sources_counts():
    artefacts_root = ARTEFACTS
    bissoto = read_flags(artefacts_root / "bissoto2020_isic_bias.csv")
    lines = (artefacts_root / "bissoto2020_isic_bias.csv").read_text().split("\n")[1:]
    rows = [ln.split(";") for ln in lines if ln.strip()]
    assert len(bissoto.flags) == len(rows) and bissoto.names == ["dark_corner", "hair", "gel_border", "gel_bubble",
                                                                 "ruler", "ink", "patches"]
    assert sum(r["patches"] for r in bissoto.flags.values()) == sum(r[8] == "1" for r in rows)
    r2r = read_flags(artefacts_root / "reveal2revise_artifacts_isic.json")
    assert sum(r["band_aid"] for r in r2r.flags.values()) == len(
        set(json.loads((artefacts_root / "reveal2revise_artifacts_isic.json").read_text())["band_aid"]))
    masks = list_artefact_masks(artefacts_root / "reveal2revise_bandaid_masks")
    assert len(masks) == 36


def test_artefact_paster_pastes_on_the_given_share():
    import torch

    from attnmel.data.artefacts import ArtefactPaster, Cutout

    cut = Cutout(torch.full((3, 4, 4), 9.0), torch.ones(4, 4, dtype=torch.bool), "src")
    img = torch.zeros(3, 32, 32)
    lesion = torch.zeros(32, 32, dtype=torch.bool)
    lesion[8:24, 8:24] = True
    gen = torch.Generator().manual_seed(0)
    always = [ArtefactPaster([cut], 1.0)(img, lesion, gen) for _ in range(20)]
    assert all(int((x[0] == 9).sum()) == 16 and not (x[0][lesion] == 9).any() for x in always)
    never = ArtefactPaster([cut], 0.0)(img, lesion, gen)
    assert torch.equal(never, img)
    half = sum(bool((ArtefactPaster([cut], 0.5)(img, None, gen) == 9).any()) for _ in range(200))
    assert 70 < half < 130


def test_training_items_carry_pasted_artefacts(synthetic_factory, tmp_path):
    from attnmel import config as config_mod
    from attnmel.data.datamodule import AttnMelDataModule

    root = synthetic_factory(n=48, size=64, spurious=True)
    cfg = config_mod.defaults()
    cfg["data"].update(dataset="synthetic", root=str(root), image_size=64, resize=64, num_workers=0, cache=False,
                       cache_dir=str(tmp_path / "c"), oversample=1)
    plain = AttnMelDataModule(cfg).dataset("train")
    cfg["data"].update(artefact_augment=1.0,
                       artefact_masks=str(next(root.glob("ISIC-2017_Training_Artefact_GroundTruth"))))
    dm = AttnMelDataModule(cfg)
    aug = dm.dataset("train")
    assert aug.paster is not None and len(aug.paster.cuts) > 0
    changed = sum(not torch_equal(plain[k]["image"], aug[k]["image"]) for k in range(len(aug)))
    assert changed == len(aug)  # share 1.0: every training image gets a cut-out
    assert torch_equal(dm.dataset("val")[0]["image"], AttnMelDataModule({**cfg, "data": {
        **cfg["data"], "artefact_augment": 0.0}}).dataset("val")[0]["image"])  # never on evaluation


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
