"""Annotation files: images only under their folder, ids once, boxes scored as trained, something to train on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionkit.errors import DataError
from visionkit.registry import DATASETS


def _coco(tmp_path: Path, file_names: list[str], ids: list[int] | None = None) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    outside = tmp_path / "secret.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(outside)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / name)
    ids = ids or list(range(1, len(file_names) + 1))
    data = {
        "images": [{"id": i, "file_name": n, "width": 16, "height": 16} for i, n in zip(ids, file_names)],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": 1, "bbox": [2, 2, 8, 8], "area": 64, "iscrowd": 0,
             "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]]}
            for k, i in enumerate(ids)
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }  # fmt: skip
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return ann, images


@pytest.mark.parametrize("name", ["../secret.png", "SECRET_ABSOLUTE"])
def test_coco_file_names_outside_the_image_folder_are_refused(tmp_path: Path, name: str) -> None:
    name = str(tmp_path / "secret.png") if name == "SECRET_ABSOLUTE" else name
    ann, images = _coco(tmp_path, ["a.png", name])
    detection = DATASETS.get("coco", "detection")
    with pytest.raises(DataError, match=r"image id 2 names the image .* outside the image folder .*allow_outside_root"):
        detection(ann_file=str(ann), image_dir=str(images))
    assert len(detection(ann_file=str(ann), image_dir=str(images), allow_outside_root=True)) == 2
    segmentation = DATASETS.get("coco", "segmentation")
    with pytest.raises(DataError, match=r"image id 2 names the image .* outside the image folder"):
        segmentation(annotations=str(ann), images=str(images))
    assert len(segmentation(annotations=str(ann), images=str(images), allow_outside_root=True)) == 2


def test_a_coco_image_id_given_twice_is_refused(tmp_path: Path) -> None:
    ann, images = _coco(tmp_path, ["a.png", "b.png"], ids=[7, 7])
    with pytest.raises(DataError, match="image id 7 is given twice"):
        DATASETS.get("coco", "detection")(ann_file=str(ann), image_dir=str(images))
    with pytest.raises(DataError, match="image id 7 is given twice"):
        DATASETS.get("coco", "segmentation")(annotations=str(ann), images=str(images))


def test_a_voc_filename_outside_jpeg_images_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "secret.jpg")
    (root / "ImageSets" / "Main" / "train.txt").write_text("x\n")
    (root / "Annotations" / "x.xml").write_text(
        "<annotation><filename>../../secret.jpg</filename><size><width>16</width><height>16</height></size>"
        "<object><name>cat</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
        "</object></annotation>"
    )
    voc = DATASETS.get("voc", "detection")
    with pytest.raises(DataError, match=r"names the image '../../secret.jpg', which lies outside the image folder"):
        voc(root=str(root))
    assert len(voc(root=str(root), allow_outside_root=True)) == 1


def test_boxes_dropped_from_training_are_not_scored_either(tmp_path: Path) -> None:
    ann, images = _coco(tmp_path, ["a.png", "b.png"])
    data = json.loads(ann.read_text())
    data["annotations"].append({"id": 9, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 6], "iscrowd": 0})
    data["annotations"].append({"id": 10, "image_id": 2, "category_id": 1, "bbox": [12, 12, 10, 10], "iscrowd": 0})
    ann.write_text(json.dumps(data))  # a zero-width box (dropped) and one reaching past the image (clipped)
    with pytest.warns(UserWarning, match="1 box.* clipped .* 1 box.* dropped"):
        dataset = DATASETS.get("coco", "detection")(ann_file=str(ann), image_dir=str(images))
    from visionkit.tasks.detection.evaluation import coco_evaluate

    trained = [(i, box.tolist()) for i, rec in enumerate(dataset.records, 1) for box in rec.boxes]
    perfect = [
        {"image_id": i, "category_id": 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": 1.0}
        for i, b in trained
    ]
    stats, _, _ = coco_evaluate(dataset.coco, perfect)
    assert stats["mAP"] == pytest.approx(1.0) and stats["mAP50"] == pytest.approx(1.0)


def test_a_split_of_only_crowd_regions_is_refused(tmp_path: Path) -> None:
    ann, images = _coco(tmp_path, ["a.png", "b.png"])
    data = json.loads(ann.read_text())
    for a in data["annotations"]:
        a["iscrowd"] = 1
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match="all 2 annotation.* are ignored regions .*mAP would read -1"):
        DATASETS.get("coco", "detection")(ann_file=str(ann), image_dir=str(images))
