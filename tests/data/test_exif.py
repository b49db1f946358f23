"""EXIF orientation is applied wherever an image or its size is read, as annotation tools display photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionkit.data.images import image_header, read_image
from visionkit.errors import DataError
from visionkit.registry import DATASETS

BOX = (4, 28, 14, 40)  # x1, y1, x2, y2 of the object, in the displayed (upright) picture


def _phone_photo(path: Path) -> np.ndarray:
    """A JPEG stored landscape (48x32) with EXIF orientation 6, upright 32x48 with a white square at BOX."""
    shown = np.zeros((48, 32, 3), np.uint8)
    x1, y1, x2, y2 = BOX
    shown[y1:y2, x1:x2] = 255
    stored = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, exif=exif, quality=100)
    assert Image.open(path).size == (48, 32)
    return shown


def _inside_and_outside(image: torch.Tensor) -> tuple[float, float]:
    x1, y1, x2, y2 = BOX
    grey = image.float().mean(0)
    inside = grey[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].mean()
    mask = torch.ones_like(grey, dtype=torch.bool)
    mask[y1 - 1 : y2 + 1, x1 - 1 : x2 + 1] = False
    return float(inside), float(grey[mask].mean())


def test_reading_applies_the_orientation(tmp_path: Path) -> None:
    shown = _phone_photo(tmp_path / "photo.jpg")
    assert image_header(tmp_path / "photo.jpg") == (48, 32, 3)
    assert np.abs(read_image(tmp_path / "photo.jpg").astype(int) - shown).max() < 16  # JPEG noise only


def test_detection_trains_with_the_box_on_the_object(tmp_path: Path) -> None:
    _phone_photo(tmp_path / "images" / "photo.jpg")
    x1, y1, x2, y2 = BOX
    ann = {
        "images": [{"id": 1, "file_name": "photo.jpg", "width": 32, "height": 48}],  # the labelling tool's size
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1]}],
        "categories": [{"id": 1, "name": "square"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    dataset = DATASETS.get("coco", "detection")(ann_file=str(tmp_path / "ann.json"), image_dir=str(tmp_path / "images"))
    image, target = dataset[0]
    assert tuple(image.shape[-2:]) == (48, 32) and target["boxes"].tolist() == [[float(v) for v in BOX]]
    inside, outside = _inside_and_outside(image)
    assert inside > 0.9 and outside < 0.1  # the box lies on the white square, not on background
    ann["images"][0].update(width=48, height=32)  # labelled on the stored, unrotated picture: EXIF is named
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    stored = DATASETS.get("coco", "detection")(ann_file=str(tmp_path / "ann.json"), image_dir=str(tmp_path / "images"))
    with pytest.raises(DataError, match="EXIF orientation 6, which visionkit applies"):
        stored[0]


def test_segmentation_trains_with_the_mask_on_the_object(tmp_path: Path) -> None:
    _phone_photo(tmp_path / "data" / "images" / "photo.jpg")
    mask = np.zeros((48, 32), np.uint8)  # drawn on the picture as the tool displays it
    x1, y1, x2, y2 = BOX
    mask[y1:y2, x1:x2] = 1
    (tmp_path / "data" / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "data" / "masks" / "photo.png")
    folder = DATASETS.get("seg_folder", "segmentation")
    sample = folder(root=str(tmp_path / "data"), num_classes=2, mean=[0], std=[1])[0]
    image, target = sample["image"], sample["mask"]
    assert tuple(image.shape[-2:]) == (48, 32) and tuple(target.shape) == (48, 32)
    grey = image.float().mean(0)
    assert float(grey[target == 1].mean()) > 0.9 and float(grey[target == 0].mean()) < 0.1
