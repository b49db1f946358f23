"""COCO, YOLO and VOC loaders on files made in the test: boxes, labels, crowd/difficult, augmentation, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.tasks.detection.helpers import coco_dict, write_coco, write_image, write_voc, write_yolo
from visionkit.errors import DataError
from visionkit.registry import DATASETS
from visionkit.tasks.detection.coco import coco_dataset
from visionkit.tasks.detection.voc import VOC_CLASSES, voc_dataset
from visionkit.tasks.detection.yolo import yolo_dataset


def by_id(ds, image_id):
    return next(i for i, r in enumerate(ds.records) if r.image_id == image_id)


# -- COCO -------------------------------------------------------------------------------------------
def test_coco_loads_boxes_labels_and_maps_category_ids(tmp_path) -> None:
    ann, images = write_coco(tmp_path)
    ds = DATASETS.build(
        {"name": "coco", "ann_file": str(ann), "image_dir": str(images)}, task="detection", split="train"
    )
    assert len(ds) == 3
    assert ds.class_names == ["cat", "dog", "bird"] and ds.category_ids == [3, 7, 11]
    image, target = ds[by_id(ds, 10)]
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, 48, 64) and 0 <= image.min() <= image.max() <= 1
    assert target["boxes"].tolist() == [[4, 6, 24, 22], [30, 10, 54, 40], [40, 2, 50, 8]]  # xywh -> xyxy
    assert target["labels"].tolist() == [1, 0, 0]  # category 7 -> label 1, category 3 -> label 0
    assert int(target["image_id"]) == 10 and target["orig_size"].tolist() == [48, 64]


def test_coco_crowd_is_not_trained_on_but_kept_for_evaluation(tmp_path) -> None:
    ann, images = write_coco(tmp_path)
    ds = coco_dataset(str(ann), str(images))
    _, target = ds[by_id(ds, 20)]
    assert target["boxes"].tolist() == [[2, 2, 32, 42]] and target["labels"].tolist() == [2]
    rec = ds.records[by_id(ds, 20)]
    assert rec.ignore_boxes.tolist() == [[0, 44, 40, 56]]
    crowd = [a for a in ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[20])) if a["iscrowd"]]
    assert len(crowd) == 1  # the evaluation ground truth is the file itself, crowd included


def test_image_without_boxes_gives_empty_targets(tmp_path) -> None:
    ann, images = write_coco(tmp_path)
    ds = coco_dataset(str(ann), str(images), transforms=[{"name": "HorizontalFlip", "p": 1.0}])
    _, target = ds[by_id(ds, 30)]
    assert tuple(target["boxes"].shape) == (0, 4) and target["boxes"].dtype == torch.float32
    assert tuple(target["labels"].shape) == (0,) and target["labels"].dtype == torch.int64


def test_flip_moves_boxes_with_the_image(tmp_path) -> None:
    ann, images = write_coco(tmp_path)
    plain = coco_dataset(str(ann), str(images))
    flipped = coco_dataset(str(ann), str(images), transforms=[{"name": "HorizontalFlip", "p": 1.0}])
    i = by_id(plain, 10)
    img0, t0 = plain[i]
    img1, t1 = flipped[i]
    assert torch.equal(img1, img0.flip(-1))
    expected = t0["boxes"].clone()
    expected[:, [0, 2]] = 64 - t0["boxes"][:, [2, 0]]
    assert torch.allclose(t1["boxes"], expected) and t1["labels"].tolist() == t0["labels"].tolist()


@pytest.mark.parametrize(
    ("min_visibility", "kept"), [(0.3, [[4, 6, 24, 22]]), (0.1, [[4, 6, 24, 22], [30, 10, 34, 40]])]
)
def test_crop_drops_boxes_below_min_visibility(tmp_path, min_visibility, kept) -> None:
    ann, images = write_coco(tmp_path)
    crop = [{"name": "Crop", "x_min": 0, "y_min": 0, "x_max": 34, "y_max": 48}]
    ds = coco_dataset(str(ann), str(images), transforms=crop, min_visibility=min_visibility)
    image, target = ds[by_id(ds, 10)]
    # box 2 keeps 4 of its 24 px width (1/6 visible); box 3 lies outside the crop entirely
    assert tuple(image.shape) == (3, 48, 34)
    assert target["boxes"].tolist() == kept and len(target["labels"]) == len(kept)


def test_box_outside_image_is_clipped_with_a_warning_or_rejected(tmp_path) -> None:
    data = coco_dict()
    data["annotations"][0]["bbox"] = [50, 40, 30, 20]  # past the right and bottom edges of the 64x48 image
    ann, images = write_coco(tmp_path, data)
    with pytest.warns(UserWarning, match="1 box\\(es\\) clipped"):
        ds = coco_dataset(str(ann), str(images))
    assert ds.records[by_id(ds, 10)].boxes[0].tolist() == [50, 40, 64, 48]
    with pytest.raises(DataError, match=r"annotation id 1 .* outside the 64x48 image"):
        coco_dataset(str(ann), str(images), invalid_boxes="error")


def test_zero_area_box_is_dropped_with_a_warning_or_rejected(tmp_path) -> None:
    data = coco_dict()
    data["annotations"][1]["bbox"] = [5, 5, 0, 10]
    ann, images = write_coco(tmp_path, data)
    with pytest.warns(UserWarning, match="1 box\\(es\\) with no area"):
        ds = coco_dataset(str(ann), str(images))
    assert len(ds.records[by_id(ds, 10)].boxes) == 2
    with pytest.raises(DataError, match="annotation id 2 .* zero area"):
        coco_dataset(str(ann), str(images), invalid_boxes="error")


def test_box_entirely_outside_is_dropped(tmp_path) -> None:
    data = coco_dict()
    data["annotations"][0]["bbox"] = [100, 100, 10, 10]
    ann, images = write_coco(tmp_path, data)
    with pytest.warns(UserWarning, match="no area inside the image dropped"):
        ds = coco_dataset(str(ann), str(images))
    assert ds.records[by_id(ds, 10)].labels.tolist() == [0, 0]


def test_unknown_category_id_is_an_error(tmp_path) -> None:
    data = coco_dict()
    data["annotations"][2]["category_id"] = 99
    ann, images = write_coco(tmp_path, data)
    with pytest.raises(DataError, match=r"annotation id 3 .* category_id 99.*known ids: \[3, 7, 11\]"):
        coco_dataset(str(ann), str(images))


def test_missing_image_file_is_an_error(tmp_path) -> None:
    ann, images = write_coco(tmp_path, skip_images=("b.png",))
    with pytest.raises(DataError, match=r"1 of 3 image file\(s\) are missing.*b\.png"):
        coco_dataset(str(ann), str(images))


@pytest.mark.parametrize("drop_key", [False, True])
def test_empty_annotation_list_is_an_error(tmp_path, drop_key) -> None:
    data = coco_dict()
    if drop_key:
        del data["annotations"]
    else:
        data["annotations"] = []
    ann, images = write_coco(tmp_path, data)
    with pytest.raises(DataError, match="annotation list is empty"):
        coco_dataset(str(ann), str(images))


def test_bad_annotation_files(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        coco_dataset(str(tmp_path / "nope.json"), str(tmp_path))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        coco_dataset(str(tmp_path / "bad.json"), str(tmp_path))
    (tmp_path / "nocat.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match="no 'categories'"):
        coco_dataset(str(tmp_path / "nocat.json"), str(tmp_path))


def test_annotated_size_must_match_the_image(tmp_path) -> None:
    data = coco_dict()
    ann, images = write_coco(tmp_path, data)
    write_image(images / "a.png", 50, 48)  # replace with an image of another width
    ds = coco_dataset(str(ann), str(images))
    with pytest.raises(DataError, match="is 50x48 but its annotation says 64x48"):
        ds[by_id(ds, 10)]


# -- YOLO -------------------------------------------------------------------------------------------
def test_yolo_reads_normalised_boxes_polygons_and_background_images(tmp_path) -> None:
    labels = {"train/a": "0 0.5 0.5 0.5 0.5\n2 0.25 0.25 0.25 0.5\n\n", "train/c": "1 0.1 0.1 0.5 0.1 0.3 0.6\n"}
    data_yaml = write_yolo(tmp_path, labels, {"train/a": (64, 32), "train/b": (32, 32), "train/c": (64, 32)})
    ds = yolo_dataset(str(data_yaml), split="train")
    assert ds.class_names == ["red", "green", "blue"] and len(ds) == 3
    _, ta = ds[0]
    assert ta["boxes"].tolist() == [[16, 8, 48, 24], [8, 0, 24, 16]] and ta["labels"].tolist() == [0, 2]
    _, tb = ds[1]
    assert tuple(tb["boxes"].shape) == (0, 4)  # no label file: a background image
    _, tc = ds[2]
    assert np.allclose(tc["boxes"].tolist(), [[6.4, 3.2, 32, 19.2]], atol=1e-4) and tc["labels"].tolist() == [1]


def test_yolo_names_mapping_and_errors(tmp_path) -> None:
    data_yaml = write_yolo(tmp_path, {"train/a": "1 0.5 0.5 0.2 0.2\n"}, {"train/a": (32, 32)}, names={0: "x", 1: "y"})
    assert yolo_dataset(str(data_yaml)).class_names == ["x", "y"]
    (tmp_path / "labels" / "train" / "a.txt").write_text("5 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match="line 1: class index 5 is not one of the data YAML's 2 classes"):
        yolo_dataset(str(data_yaml))
    (tmp_path / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2\n")
    with pytest.raises(DataError, match="line 1: expected 'class cx cy w h'"):
        yolo_dataset(str(data_yaml))
    (tmp_path / "labels" / "train" / "a.txt").write_text("")
    with pytest.raises(DataError, match="annotation list is empty"):
        yolo_dataset(str(data_yaml))
    with pytest.raises(DataError, match="no 'val' entry|neither a folder"):
        yolo_dataset(str(data_yaml), split="val")


def test_yolo_box_outside_and_missing_image(tmp_path) -> None:
    data_yaml = write_yolo(tmp_path, {"train/a": "0 0.9 0.5 0.4 0.4\n"}, {"train/a": (100, 100)})
    with pytest.warns(UserWarning, match="clipped"):
        ds = yolo_dataset(str(data_yaml))
    assert np.allclose(ds.records[0].boxes.tolist(), [[70, 30, 100, 70]])
    with pytest.raises(DataError, match="outside"):
        yolo_dataset(str(data_yaml), invalid_boxes="error")
    listing = tmp_path / "train.txt"
    listing.write_text("images/train/a.png\nimages/train/gone.png\n")
    (tmp_path / "data.yaml").write_text(json.dumps({"train": "train.txt", "names": ["a"]}))
    with pytest.raises(DataError, match=r"1 of 2 image file\(s\) are missing.*gone\.png"):
        yolo_dataset(str(data_yaml))


# -- VOC --------------------------------------------------------------------------------------------
def test_voc_boxes_difficult_and_classes(tmp_path) -> None:
    root = write_voc(
        tmp_path,
        {
            "img1": (64, 48, [("dog", [5, 6, 20, 30], 0), ("cat", [30, 10, 60, 40], 1)]),
            "img2": (32, 32, []),
        },
    )
    ds = voc_dataset(str(root), split="train", class_names=["cat", "dog"])
    assert len(ds) == 2 and ds.class_names == ["cat", "dog"]
    _, t = ds[0]
    assert t["boxes"].tolist() == [[4, 5, 20, 30]] and t["labels"].tolist() == [1]  # 1-based VOC pixels -> 0-based
    assert ds.records[0].ignore_boxes.tolist() == [[29, 9, 60, 40]]  # difficult: ignored in eval, not trained
    gt = ds.coco
    assert sorted(a["iscrowd"] for a in gt.dataset["annotations"]) == [0, 1]
    both = voc_dataset(str(root), class_names=["cat", "dog"], use_difficult=True)
    assert both[0][1]["labels"].tolist() == [1, 0]
    assert voc_dataset(str(root), class_names=None).class_names == list(VOC_CLASSES)  # the default list


def test_voc_errors(tmp_path) -> None:
    root = write_voc(tmp_path, {"img1": (64, 48, [("zebra", [5, 6, 20, 30], 0)])})
    with pytest.raises(DataError, match="class 'zebra' is not in the class list"):
        voc_dataset(str(root))
    with pytest.raises(DataError, match="ImageSets/Main/val.txt"):
        voc_dataset(str(root), split="val")
    root2 = write_voc(tmp_path / "b", {"img1": (64, 48, [("dog", [5, 6, 20, 30], 0)])})
    (root2 / "JPEGImages" / "img1.png").unlink()
    with pytest.raises(DataError, match="missing"):
        voc_dataset(str(root2))


def test_voc_zero_area_and_size_from_image(tmp_path) -> None:
    root = write_voc(tmp_path, {"img1": (40, 30, [("dog", [10, 10, 9, 20], 0), ("cat", [1, 1, 10, 10], 0)])})
    xml = root / "Annotations" / "img1.xml"
    xml.write_text(xml.read_text().replace("<size><width>40</width><height>30</height><depth>3</depth></size>", ""))
    with pytest.warns(UserWarning, match="1 box\\(es\\) with no area"):
        ds = voc_dataset(str(root))
    rec = ds.records[0]
    assert (rec.width, rec.height) == (40, 30)  # read from the image header
    assert rec.boxes.tolist() == [[0, 0, 10, 10]] and rec.labels.tolist() == [VOC_CLASSES.index("cat")]


def test_yolo_label_files_without_an_image_are_counted_and_non_finite_classes_refused(tmp_path) -> None:
    from visionkit.data import DataWarning

    labels = {"train/a": "0 0.5 0.5 0.2 0.2\n", "train/gone": "1 0.5 0.5 0.2 0.2\n"}
    data_yaml = write_yolo(tmp_path, labels, {"train/a": (32, 32)})
    with pytest.warns(DataWarning, match=r"1 label file\(s\) have no image and are not used, e.g. '.*gone.txt'"):
        assert len(yolo_dataset(str(data_yaml))) == 1
    for bad in ("nan", "inf"):
        (tmp_path / "labels" / "train" / "a.txt").write_text(f"{bad} 0.5 0.5 0.2 0.2\n")
        with pytest.raises(DataError, match=f"class index {bad} is not one of"):
            yolo_dataset(str(data_yaml))
