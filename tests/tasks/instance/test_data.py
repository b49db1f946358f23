"""Instance data: COCO polygons, multi-part polygons and RLE decoded as pycocotools does; bad masks named;
shapes-instance masks exact and disjoint; masks stay aligned through flips and mosaic."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.tasks.detection.helpers import write_image
from visionkit.errors import DataError
from visionkit.tasks.detection.datasets import ImageRecord, quiet_coco
from visionkit.tasks.detection.mosaic import MosaicDataset, MosaicOptions
from visionkit.tasks.instance.datasets import InstanceDataset, coco_instances, shapes_instances
from visionkit.tasks.instance.masks import box_of, decode, encode

SMALL = {"image_size": 48, "num_train": 12, "num_val": 4, "min_size": 10, "max_size": 28}


def _coco(segmentations: list, crowd: int | None = None) -> dict:
    """One 40x30 image with an annotation per segmentation (the `crowd`-th one iscrowd)."""
    anns = [
        {"id": k + 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 20], "iscrowd": int(k == crowd),
         "segmentation": seg}
        for k, seg in enumerate(segmentations)
    ]  # fmt: skip
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}


def _write(root: Path, data: dict) -> tuple[str, str]:
    write_image(root / "images" / "a.png", 40, 30)
    (root / "ann.json").write_text(json.dumps(data))
    return str(root / "ann.json"), str(root / "images")


def test_polygons_multipart_and_rle_decode_as_pycocotools_does(tmp_path: Path) -> None:
    triangle = [[5.0, 5.0, 25.0, 5.0, 15.0, 20.0]]
    two_parts = [[1.0, 1.0, 8.0, 1.0, 8.0, 8.0, 1.0, 8.0], [20.0, 10.0, 35.0, 10.0, 35.0, 25.0]]
    blob = np.zeros((30, 40), np.uint8)
    blob[12:28, 3:19] = 1
    crowd = {"size": [30, 40], "counts": [0, 100, 50, 1050]}  # uncompressed RLE, column-major runs
    data = _coco([triangle, two_parts, encode(blob), crowd], crowd=3)
    reference = quiet_coco(json.loads(json.dumps(data)))
    for ann in data["annotations"]:
        expected = reference.annToMask(reference.anns[ann["id"]])
        assert np.array_equal(decode(ann["segmentation"], 30, 40), expected), ann["id"]
    assert decode(two_parts, 30, 40)[:9, :9].any() and decode(two_parts, 30, 40)[10:26, 20:36].any()
    dataset = coco_instances(*_write(tmp_path, data))
    (rec,) = dataset.records
    assert len(rec.boxes) == 3 and len(rec.ignore_boxes) == 1  # the crowd is an ignore region, as COCO does
    masks = dataset.load_masks(0)
    assert masks.shape == (3, 30, 40) and np.array_equal(masks[2], blob)
    image, target = dataset[0]
    assert target["masks"].shape == (3, 30, 40) and target["masks"].dtype.is_floating_point is False
    assert target["labels"].tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        ([[1.0, 1.0, 10.0, 10.0]], "annotation id 1 in 'a.png': polygon 0 has 2 point"),
        ([[1.0, 1.0, 10.0, 1.0, 50.0, 10.0]], r"polygon 0 has the point \(50, 10\) outside the 40x30 image"),
        ({"size": [40, 30], "counts": "abc"}, "the RLE mask is 30x40 .* but the image is 40x30"),
        (None, "annotation id 1 in 'a.png' has no 'segmentation'"),
    ],
)
def test_bad_masks_are_named(tmp_path: Path, segmentation, message: str) -> None:
    with pytest.raises(DataError, match=message):
        coco_instances(*_write(tmp_path, _coco([segmentation])))


def test_shapes_instance_masks_are_exact_disjoint_and_boxed(tmp_path: Path) -> None:
    dataset = shapes_instances(split="train", **SMALL)
    total = 0
    for index, rec in enumerate(dataset.records):
        masks = dataset.load_masks(index)
        assert masks.sum(0).max(initial=0) <= 1  # a pixel belongs to one shape at most (occlusion applied)
        for mask, box in zip(masks, rec.boxes.tolist(), strict=True):
            assert box_of(mask) == box and mask.any()  # the box is the visible mask's
            total += 1
    assert total >= 20
    circles = [  # an unoccluded circle fills pi/4 of its box, to within the pixel grid
        (mask.sum(), (b[2] - b[0]) * (b[3] - b[1]))
        for i, rec in enumerate(dataset.records)
        for mask, b, label in zip(dataset.load_masks(i), rec.boxes.tolist(), rec.labels.tolist(), strict=True)
        if label == 0
    ]
    assert circles and np.median([area / box for area, box in circles]) == pytest.approx(np.pi / 4, abs=0.05)
    rle = json.loads((Path(dataset.records[0].path).parents[1] / "annotations_train.json").read_text())
    assert isinstance(rle["annotations"][0]["segmentation"]["counts"], str)  # counts as text


def test_masks_follow_a_flip(tmp_path: Path) -> None:
    flipped = shapes_instances(split="train", transforms=[{"name": "HorizontalFlip", "p": 1.0}], **SMALL)
    plain = shapes_instances(split="train", **SMALL)
    image, target = flipped[0]
    assert np.array_equal(target["masks"].numpy(), plain.load_masks(0)[:, :, ::-1])
    flipped_boxes = [[48 - b[2], b[1], 48 - b[0], b[3]] for b in plain.records[0].boxes.tolist()]
    assert np.allclose(target["boxes"].numpy(), flipped_boxes, atol=1e-4)


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def _triangles(root: Path) -> InstanceDataset:
    """Four black images, each with one solid triangle of its own colour (label = colour), masks as polygons."""
    records = []
    for k, colour in enumerate(COLOURS):
        width, height = 40 + 8 * k, 56 - 6 * k
        polygon = [4.0 + k, 4.0, width - 4.0, 10.0 + k, 12.0, height - 4.0]
        mask = decode([polygon], height, width)
        pixels = np.zeros((height, width, 3), np.uint8)
        pixels[mask > 0] = colour
        Image.fromarray(pixels).save(root / f"{k}.png")
        box = np.array([box_of(mask)], np.float32)
        records.append(ImageRecord(k, root / f"{k}.png", width, height, box, np.array([k]), segments=[[polygon]]))
    return InstanceDataset(records, [str(k) for k in range(4)], [1, 2, 3, 4], transforms=[])


def test_mosaic_masks_cover_their_objects_pixels(tmp_path: Path) -> None:
    mosaic = MosaicDataset(_triangles(tmp_path), 64, MosaicOptions(p=1.0, scale=(0.7, 1.3), degrees=10.0), epochs=5)
    checked = 0
    for seed in range(8):
        random.seed(seed)
        np.random.seed(seed)
        image, target = mosaic[seed % 4]
        pixels = (image * 255).round().permute(1, 2, 0).numpy()
        assert target["masks"].shape[1:] == (64, 64)
        masks, labels = target["masks"].numpy().astype(bool), target["labels"].numpy()
        for label in set(labels.tolist()):  # an image drawn twice gives two masks of its colour
            mask = masks[labels == label].any(0)
            if mask.sum() < 20:
                continue  # slivers at the border
            near = np.abs(pixels - COLOURS[label]).max(-1) < 128  # nearer its own colour than black
            assert (near & mask).sum() >= 0.9 * mask.sum(), f"seed {seed}: mask {label} off its object"
            assert (near & mask).sum() >= 0.9 * near.sum(), f"seed {seed}: object {label} outside its mask"
            checked += 1
    assert checked >= 12


def _yolo_segments(root: Path, text: str) -> str:
    from tests.tasks.detection.helpers import write_yolo

    return str(write_yolo(root, {"train/a": text, "val/a": text}, {"train/a": (40, 30), "val/a": (40, 30)}))


def test_ultralytics_segment_labels_give_polygon_masks_and_ground_truth(tmp_path: Path) -> None:
    from visionkit.registry import DATASETS

    text = "2 0.1 0.1 0.6 0.1 0.35 0.8\n0 0.5 0.5 0.9 0.5 0.9 0.9 0.5 0.9\n"
    dataset = DATASETS.get("yolo", "instance")(data_yaml=_yolo_segments(tmp_path, text))
    (rec,) = dataset.records
    assert rec.labels.tolist() == [2, 0] and np.allclose(rec.boxes[0], [4, 3, 24, 24])
    masks = dataset.load_masks(0)
    triangle = decode([[4.0, 3.0, 24.0, 3.0, 14.0, 24.0]], 30, 40)
    assert np.array_equal(masks[0], triangle) and masks[1].sum() == pytest.approx(16 * 12, abs=20)
    gt = dataset.coco.dataset["annotations"]
    assert [a["segmentation"] for a in gt] == rec.segments  # evaluation scores the same polygons


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 0.5 0.5 0.2 0.2\n", "line 1: instance segmentation needs a polygon per object"),
        ("0 0.1 0.1 1.5 0.1 0.3 0.8\n", r"line 1: polygon point \(1.5, 0.1\) lies outside the image"),
        ("7 0.1 0.1 0.6 0.1 0.35 0.8\n", "line 1: class index 7 is not one of the data YAML's 3 classes"),
    ],
)
def test_bad_segment_labels_name_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    from visionkit.registry import DATASETS

    with pytest.raises(DataError, match=message):
        DATASETS.get("yolo", "instance")(data_yaml=_yolo_segments(tmp_path, text))
