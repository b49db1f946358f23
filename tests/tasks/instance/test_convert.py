"""Converters: COCO -> YOLO -> COCO on shapes-instance keeps boxes within 1 px and masks at IoU >= 0.98; crowds
refused or counted; instance PNGs (per instance and id maps) become the same masks; bad input names the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import visionkit
from tests.conftest import run_tool
from visionkit.config import CONFIG_ROOT, load_config
from visionkit.errors import DataError
from visionkit.tasks.instance.convert import coco_to_yolo, mask_polygon, masks_to_coco, yolo_to_coco
from visionkit.tasks.instance.datasets import coco_instances, shapes_instances, yolo_instances
from visionkit.tasks.instance.masks import decode

SMALL = {"image_size": 64, "num_train": 16, "num_val": 8, "min_size": 10, "max_size": 36, "max_objects": 6}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _shapes_files() -> tuple[str, str]:
    val = shapes_instances("val", **SMALL)
    root = Path(val.records[0].path).parent
    return str(root.parent / "annotations_val.json"), str(root)


def test_mask_polygon_keeps_parts_and_holes_exactly() -> None:
    mask = np.zeros((30, 40), np.uint8)
    mask[2:20, 2:20] = 1
    mask[6:10, 6:10] = 0  # a hole
    mask[25:28, 30:39] = 1  # a second part
    mask[0, 39] = 1  # a lone pixel
    polygon = mask_polygon(mask)
    assert np.array_equal(decode([polygon], 30, 40), mask)
    assert mask_polygon(np.zeros((5, 5), np.uint8)) == []


def test_coco_yolo_coco_round_trip_on_shapes_instance(tmp_path: Path) -> None:
    ann_file, image_dir = _shapes_files()
    report = coco_to_yolo(ann_file, image_dir, str(tmp_path / "yolo"), split="val", segments=True)
    source = json.loads(Path(ann_file).read_text())
    assert report["images"] == len(source["images"]) and report["objects"] == len(source["annotations"])
    # the YOLO layout trains as it is ...
    dataset = yolo_instances(report["data_yaml"], split="val")
    assert sum(len(r.boxes) for r in dataset.records) == len(source["annotations"])
    # ... and comes back as COCO with every box within 1 px and every mask at IoU >= 0.98
    back = yolo_to_coco(report["data_yaml"], str(tmp_path / "coco"), splits=["val"], segments=True)["val"]
    again = json.loads(Path(back["ann_file"]).read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in source["images"]}
    by_name = {Path(im["file_name"]).name: im["id"] for im in source["images"]}
    new_id = {im["id"]: by_name[Path(im["file_name"]).name] for im in again["images"]}
    originals: dict[int, list[dict]] = {}
    for ann in source["annotations"]:
        originals.setdefault(ann["image_id"], []).append(ann)
    converted: dict[int, list[dict]] = {}
    for ann in again["annotations"]:
        converted.setdefault(new_id[ann["image_id"]], []).append(ann)
    worst_box, worst_iou, count = 0.0, 1.0, 0
    for image_id, anns in originals.items():
        height, width = sizes[image_id]
        assert len(converted[image_id]) == len(anns)
        for old, new in zip(anns, converted[image_id], strict=True):  # written in order
            assert old["category_id"] == new["category_id"]
            worst_box = max(worst_box, float(np.abs(np.subtract(old["bbox"], new["bbox"])).max()))
            worst_iou = min(worst_iou, _iou(decode(old["segmentation"], height, width),
                                            decode(new["segmentation"], height, width)))  # fmt: skip
            count += 1
    print(f"{count} objects: worst box difference {worst_box:.3f} px, worst mask IoU {worst_iou:.4f}")
    assert count == len(source["annotations"]) and worst_box <= 1.0 and worst_iou >= 0.98, (worst_box, worst_iou)
    # the converted COCO file reads as an instance dataset with the same images
    assert len(coco_instances(back["ann_file"], back["image_dir"], split="val").records) == len(source["images"])


def test_coco_to_yolo_boxes_within_a_pixel(tmp_path: Path) -> None:
    ann_file, image_dir = _shapes_files()
    report = coco_to_yolo(ann_file, image_dir, str(tmp_path / "yolo"), split="val")
    back = yolo_to_coco(report["data_yaml"], str(tmp_path / "coco"), splits=["val"])["val"]
    old = json.loads(Path(ann_file).read_text())["annotations"]
    new = json.loads(Path(back["ann_file"]).read_text())["annotations"]
    assert len(old) == len(new) and "segmentation" not in new[0]
    assert max(np.abs(np.subtract(a["bbox"], b["bbox"])).max() for a, b in zip(old, new, strict=True)) <= 1.0


def _crowd_coco(tmp_path: Path) -> tuple[str, str]:
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    anns = [
        {"id": 7, "image_id": 1, "category_id": 3, "bbox": [2, 2, 10, 10], "iscrowd": 0,
         "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]},
        {"id": 8, "image_id": 1, "category_id": 3, "bbox": [20, 5, 10, 10], "iscrowd": 1,
         "segmentation": {"size": [30, 40], "counts": [605, 10, 20, 10, 555]}},
    ]  # fmt: skip
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}], "annotations": anns,
            "categories": [{"id": 3, "name": "thing"}]}  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return str(tmp_path / "ann.json"), str(tmp_path)


def test_crowd_is_refused_skipped_with_a_count_or_kept(tmp_path: Path) -> None:
    ann_file, image_dir = _crowd_coco(tmp_path)
    with pytest.raises(DataError, match=r"1 crowd annotation.*annotation id 8.*--crowd skip"):
        coco_to_yolo(ann_file, image_dir, str(tmp_path / "refused"), segments=True)
    skipped = coco_to_yolo(ann_file, image_dir, str(tmp_path / "skip"), segments=True, crowd="skip")
    assert skipped["crowd_skipped"] == 1 and skipped["objects"] == 1
    kept = coco_to_yolo(ann_file, image_dir, str(tmp_path / "keep"), segments=True, crowd="keep")
    assert kept["objects"] == 2 and kept["crowd_skipped"] == 0
    lines = (tmp_path / "keep" / "labels" / "train" / "a.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["0", "0"]


def test_masks_to_coco_per_instance_pngs_and_id_maps(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    Image.new("RGB", (40, 30)).save(images / "a.png")
    Image.new("RGB", (40, 30)).save(images / "b.jpg")
    first = np.zeros((30, 40), np.uint8)
    first[3:15, 4:20] = 255
    second = np.zeros((30, 40), np.uint8)
    second[18:28, 22:38] = 255
    (masks / "a").mkdir(parents=True)
    Image.fromarray(first).save(masks / "a" / "cat_0.png")
    Image.fromarray(second).save(masks / "a" / "1_0.png")  # a class index works too
    ids = np.zeros((30, 40), np.uint16)
    ids[first > 0] = 1001  # class 1, instance 1
    ids[second > 0] = 2  # class 0, instance 2
    Image.fromarray(ids).save(masks / "b.png")
    for fmt in ("rle", "polygon"):
        out = tmp_path / f"{fmt}.json"
        report = masks_to_coco(str(images), str(masks), ["cat", "dog"], str(out), mask_format=fmt)
        assert report["objects"] == 4 and report["images_without_masks"] == 0
        data = json.loads(out.read_text())
        by_image = {im["file_name"]: im["id"] for im in data["images"]}
        got = {(a["image_id"], a["category_id"]): decode(a["segmentation"], 30, 40) for a in data["annotations"]}
        assert np.array_equal(got[(by_image["a.png"], 1)], first > 0)
        assert np.array_equal(got[(by_image["a.png"], 2)], second > 0)
        assert np.array_equal(got[(by_image["b.jpg"], 2)], first > 0)
        assert np.array_equal(got[(by_image["b.jpg"], 1)], second > 0)
        assert coco_instances(str(out), str(images)).records[0].boxes.shape == (2, 4)


def test_bad_masks_are_named(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    (masks / "a").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(images / "a.png")
    Image.fromarray(np.ones((20, 20), np.uint8)).save(masks / "a" / "cat_0.png")
    with pytest.raises(DataError, match=r"cat_0.png' is 20x20 but its image is 40x30"):
        masks_to_coco(str(images), str(masks), ["cat"], str(tmp_path / "o.json"))
    (masks / "a" / "cat_0.png").rename(masks / "a" / "bird_0.png")
    with pytest.raises(DataError, match=r"bird_0.png.*'bird'.*names \['cat'\]"):
        masks_to_coco(str(images), str(masks), ["cat"], str(tmp_path / "o.json"))


def test_convert_command_reports_and_exits_2_on_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from visionkit.cli import main

    ann_file, image_dir = _crowd_coco(tmp_path)
    args = ["coco2yolo", "--ann-file", ann_file, "--image-dir", image_dir, "--out", str(tmp_path / "y")]
    bad = run_tool("convert", *args)  # the whole process once: exit status, no traceback
    assert bad.returncode == 2 and "crowd" in bad.stderr and "Traceback" not in bad.stderr
    assert main(["convert", *args, "--segments", "--crowd", "skip"]) == 0  # the rest in process
    assert json.loads(capsys.readouterr().out)["crowd_skipped"] == 1
    assert main(["convert", "yolo2coco", "--data-yaml", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)]) == 2
    assert "nope.yaml' does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["default", "maskrcnn", "coco", "yolo_format"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(CONFIG_ROOT / "inst" / f"{name}.yaml")
    assert cfg["task"] == "instance" and cfg["model"]["name"] in ("yolo_seg", "maskrcnn")


def test_converted_data_trains_with_the_yolo_format_config(tmp_path: Path) -> None:
    ann_file, image_dir = _shapes_files()
    data_yaml = coco_to_yolo(ann_file, image_dir, str(tmp_path / "yolo"), split="train", segments=True)["data_yaml"]
    coco_to_yolo(ann_file, image_dir, str(tmp_path / "yolo"), split="val", segments=True)
    result = visionkit.train(
        CONFIG_ROOT / "inst" / "yolo_format.yaml",
        [f"data.train.data_yaml={data_yaml}", f"data.val.data_yaml={data_yaml}", "data.image_size=64", "model.size=n",
         "data.batch_size=4", "data.num_workers=0", "trainer.epochs=1", "trainer.max_steps=2", "trainer.progress=false",
         "detection.num_samples=0"],
        work_dir=tmp_path / "run",
    )  # fmt: skip
    assert result.summary["task"] == "instance" and "val/mask_mAP" in result.summary["final"]
