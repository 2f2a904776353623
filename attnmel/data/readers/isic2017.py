"""ISIC 2017 (and the synthetic set, written in the same layout).

```
ROOT/ISIC-2017_<S>_Data/ISIC_<id>.jpg              (+ ISIC_<id>_superpixels.png, *_metadata.csv: not images)
ROOT/ISIC-2017_<S>_Part1_GroundTruth/ISIC_<id>_segmentation.png
ROOT/ISIC-2017_<S>_Part2_GroundTruth/ISIC_<id>_features.json
ROOT/ISIC-2017_<S>_Part3_GroundTruth.csv           image_id,melanoma,seborrheic_keratosis (0.0/1.0)
ROOT/ISIC-2017_<S>_Artefact_GroundTruth/ISIC_<id>_artefact.png   (synthetic sets only: artefact masks)
```
with ``<S>`` = Training / Validation / Test_v2 (or Test).
"""

from __future__ import annotations

from pathlib import Path

from attnmel.data.readers._common import (
    BINARY_CLASSES,
    SPLIT_TAGS,
    assemble,
    binary_value,
    check_root,
    find_dir,
    find_file,
    labels_or_unlabelled,
    list_images,
    list_suffixed,
    missing_folder,
    read_table,
    unique_ids,
)
from attnmel.data.readers.registry import register_dataset
from attnmel.data.samples import DatasetIndex
from attnmel.errors import file_error

# Folder tags per split: the official ones, the test set also as Test_v2 (its second release).
ISIC2017_TAGS = {**{s: (t,) for s, t in SPLIT_TAGS.items()}, "test": ("Test_v2", "Test")}
CLASSES_3 = ["nevus", "melanoma", "seborrheic_keratosis"]


@register_dataset("isic2017", num_classes=(2, 3), options=("labels_optional",))
def read(root: str | Path, split: str, num_classes: int = 2, dataset: str = "isic2017",
         labels_optional: bool = False, split_tags: dict[str, tuple[str, ...]] | None = None) -> DatasetIndex:
    """Index one split of an ISIC 2017 download (no decoding).

    ``labels_optional``: without the Part 3 CSV (a Part 1-only download, for segmentation) every image gets
    label 0 instead of an error. ``split_tags``: folder tags of splits beyond train/val/test (the synthetic
    set's extra test conditions).
    """
    root = check_root(root)
    tags = {**ISIC2017_TAGS, **(split_tags or {})}[split]
    data_dir = find_dir(root, [f"ISIC-2017_{t}_Data" for t in tags])
    if data_dir is None:
        raise missing_folder(root, f"ISIC-2017_{tags[0]}_Data", split, "ISIC-2017_", "ISIC 2017")
    csv_path = find_file(root, [f"ISIC-2017_{t}_Part3_GroundTruth.csv" for t in tags])
    images = list_images(data_dir)
    labels, csv_path = labels_or_unlabelled(csv_path, root / f"ISIC-2017_{tags[0]}_Part3_GroundTruth.csv", split,
                                            images, lambda p: read_labels(p, num_classes), labels_optional, data_dir)
    mask_dir = find_dir(root, [f"ISIC-2017_{t}_Part1_GroundTruth" for t in tags])
    masks = list_suffixed(mask_dir, "_segmentation", ".png")
    dermo_dir = find_dir(root, [f"ISIC-2017_{t}_Part2_GroundTruth" for t in tags])
    dermo = {}
    if dermo_dir is not None:
        superpixels = list_suffixed(data_dir, "_superpixels", ".png")
        features = list_suffixed(dermo_dir, "_features", ".json")
        # A features JSON without its superpixel map keeps the map's expected path: opening it then names the
        # missing file (data check lists it), instead of the pair vanishing in silence.
        dermo = {k: (features[k], superpixels.get(k, data_dir / f"{k}_superpixels.png")) for k in features}
    # Not part of the ISIC release: the synthetic generator writes the ground truth of the artefacts it plants.
    artefact_dir = find_dir(root, [f"ISIC-2017_{t}_Artefact_GroundTruth" for t in tags])
    artefacts = list_suffixed(artefact_dir, "_artefact", ".png")
    class_names = BINARY_CLASSES if num_classes == 2 else CLASSES_3
    return assemble(dataset, split, class_names, labels, images, csv_path, data_dir, masks=masks, dermo=dermo,
                    unlabelled=images.keys() - labels.keys(), artefacts=artefacts)


def read_labels(csv_path: Path, num_classes: int) -> dict[str, int]:
    """Part 3 ground truth: K=2 melanoma vs rest; K=3 nevus 0, melanoma 1, seborrheic keratosis 2."""
    table = read_table(csv_path, ["image_id", "melanoma", "seborrheic_keratosis"])
    unique_ids(csv_path, ((ln, row["image_id"]) for ln, row in table.rows))
    labels: dict[str, int] = {}
    for lineno, row in table.rows:
        mel = binary_value(csv_path, lineno, "melanoma", row["melanoma"])
        sk = binary_value(csv_path, lineno, "seborrheic_keratosis", row["seborrheic_keratosis"])
        if mel and sk:
            raise file_error(csv_path, f"line {lineno}: {row['image_id']} is both melanoma and seborrheic_keratosis")
        labels[row["image_id"]] = mel if num_classes == 2 else (1 if mel else 2 if sk else 0)
    return labels
