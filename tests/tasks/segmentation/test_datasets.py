"""Folder, palette, COCO-JSON and synthetic shapes datasets on files written by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from visionkit.data.transforms import build_pipeline
from visionkit.errors import DataError
from visionkit.tasks.segmentation import shapes
from visionkit.tasks.segmentation.task import pad_collate

from .conftest import build_dataset, write_folder_dataset


def test_folder_dataset_reads_index_masks_and_flips_jointly(tmp_path: Path) -> None:
    masks = write_folder_dataset(tmp_path, count=4, size=(32, 40), num_classes=3)
    ds = build_dataset({"name": "seg_folder", "root": str(tmp_path)}, num_classes=3)
    assert len(ds) == 4
    sample = ds[1]
    assert sample["image"].shape == (3, 32, 40) and sample["image"].dtype == torch.float32
    assert torch.equal(sample["mask"], torch.from_numpy(masks[1]).long())
    flipped = build_dataset(
        {"name": "seg_folder", "root": str(tmp_path)},
        num_classes=3,
        transforms=build_pipeline([{"name": "HorizontalFlip", "p": 1.0}]),
    )
    out = flipped[1]
    assert torch.equal(out["mask"], torch.from_numpy(masks[1][:, ::-1].copy()).long())
    assert torch.allclose(out["image"], sample["image"].flip(-1))


def test_folder_dataset_reads_palette_pngs(tmp_path: Path) -> None:
    masks = write_folder_dataset(tmp_path, count=2, num_classes=4, mode="P")
    assert Image.open(tmp_path / "masks" / "img00.png").mode == "P"
    ds = build_dataset({"name": "seg_folder", "root": str(tmp_path)}, num_classes=4)
    assert torch.equal(ds[0]["mask"], torch.from_numpy(masks[0]).long())


def test_folder_dataset_maps_rgb_colour_masks_through_palette(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, :] = (255, 0, 0)
    rgb[1, :] = (0, 255, 0)
    rgb[3, 3] = (255, 255, 255)
    Image.fromarray(rgb).save(tmp_path / "masks" / "a.png")
    spec = {
        "name": "seg_folder",
        "root": str(tmp_path),
        "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
        "ignore_color": [255, 255, 255],
    }
    mask = build_dataset(spec, num_classes=3)[0]["mask"].numpy()
    expected = np.zeros((4, 4), np.int64)
    expected[0], expected[1], expected[3, 3] = 1, 2, 255
    assert np.array_equal(mask, expected)
    spec.pop("ignore_color")
    with pytest.raises(DataError, match=r"colour\(s\) \[\(255, 255, 255\)\].*not in the dataset's palette"):
        build_dataset(spec, num_classes=3)[0]
    with pytest.raises(DataError, match="RGB colour image"):
        build_dataset({"name": "seg_folder", "root": str(tmp_path)}, num_classes=3)[0]


def test_folder_dataset_missing_mask_is_reported_up_front(tmp_path: Path) -> None:
    write_folder_dataset(tmp_path, count=3)
    (tmp_path / "masks" / "img01.png").unlink()
    with pytest.raises(DataError, match=r"1 of 3 images .* no mask file.*img01\.png"):
        build_dataset({"name": "seg_folder", "root": str(tmp_path)}, num_classes=3)
    with pytest.raises(DataError, match="image_dir .* does not exist"):
        build_dataset({"name": "seg_folder", "root": str(tmp_path / "nowhere")}, num_classes=3)


def test_folder_dataset_mask_size_mismatch(tmp_path: Path) -> None:
    write_folder_dataset(tmp_path, count=2, size=(32, 40))
    Image.fromarray(np.zeros((32, 39), np.uint8)).save(tmp_path / "masks" / "img00.png")
    ds = build_dataset({"name": "seg_folder", "root": str(tmp_path)}, num_classes=3)
    ds[1]  # the other sample is fine
    with pytest.raises(DataError, match=r"img00\.png.*39x32.*40x32.*same size"):
        ds[0]


def test_folder_dataset_class_index_out_of_range(tmp_path: Path) -> None:
    write_folder_dataset(tmp_path, count=1)
    bad = np.zeros((32, 40), np.uint8)
    bad[0, 0], bad[1, 1] = 7, 255  # 7 is out of range; 255 is the ignore index and allowed
    Image.fromarray(bad).save(tmp_path / "masks" / "img00.png")
    ds = build_dataset({"name": "seg_folder", "root": str(tmp_path)}, num_classes=3, ignore_index=255)
    with pytest.raises(DataError, match=r"img00\.png.*\[7\] outside 0\.\.2"):
        ds[0]
    ds = build_dataset({"name": "seg_folder", "root": str(tmp_path)}, num_classes=8, ignore_index=255)
    assert ds[0]["mask"][1, 1] == 255


def test_pad_collate_pads_masks_with_ignore_index() -> None:
    small = {"image": torch.ones(3, 4, 5), "mask": torch.zeros(4, 5, dtype=torch.long), "index": 0}
    large = {"image": torch.ones(3, 6, 3), "mask": torch.ones(6, 3, dtype=torch.long), "index": 1}
    batch = pad_collate([small, large], ignore_index=255)
    assert batch["image"].shape == (2, 3, 6, 5) and batch["mask"].shape == (2, 6, 5)
    assert (batch["mask"][0, 4:] == 255).all() and (batch["mask"][1, :, 3:] == 255).all()
    assert (batch["image"][0, :, 4:] == 0).all() and batch["mask"][0, :4, :5].sum() == 0
    assert batch["index"].tolist() == [0, 1]


# -- COCO ------------------------------------------------------------------------------------------
def _coco_files(root: Path, anns: list[dict], size: tuple[int, int] = (24, 32)) -> tuple[Path, Path]:
    height, width = size
    (root / "img").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 80, np.uint8)).save(root / "img" / "a.png")
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(root / "img" / "b.png")
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": height, "width": width},
            {"id": 2, "file_name": "b.png", "height": height, "width": width},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": anns,
    }
    path = root / "ann.json"
    path.write_text(json.dumps(data))
    return path, root / "img"


def _rect(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _annotations() -> list[dict]:
    block = np.zeros((24, 32), np.uint8, order="F")
    block[2:10, 20:30] = 1
    rle = mask_utils.encode(block)
    rle["counts"] = rle["counts"].decode("ascii")
    uncompressed = np.zeros((24, 32), np.uint8)
    uncompressed[15:20, 22:26] = 1
    counts, value, run = [], 0, 0
    for pixel in uncompressed.flatten(order="F"):  # column-major run lengths starting with zeros
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    return [
        {"id": 10, "image_id": 1, "category_id": 3, "segmentation": _rect(2, 2, 18, 18), "iscrowd": 0},  # big dog
        {"id": 11, "image_id": 1, "category_id": 7, "segmentation": _rect(6, 6, 12, 12), "iscrowd": 0},  # cat on it
        {"id": 12, "image_id": 1, "category_id": 7, "segmentation": rle, "iscrowd": 0},
        {"id": 13, "image_id": 1, "category_id": 3, "segmentation": {"counts": counts, "size": [24, 32]}, "iscrowd": 1},
    ]


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")  # the reference COCO API on numpy 2
def test_coco_dataset_renders_polygons_and_rle_with_deterministic_overlaps(tmp_path: Path) -> None:
    anns = _annotations()
    ann_file, images = _coco_files(tmp_path / "one", anns)
    ds = build_dataset({"name": "coco", "annotations": str(ann_file), "images": str(images)}, num_classes=3)
    assert ds.class_names == ["background", "dog", "cat"]  # categories in id order: dog (3) -> 1, cat (7) -> 2
    coco = COCO(str(ann_file))
    expected = np.zeros((24, 32), np.int64)
    expected[coco.annToMask(coco.anns[13]) > 0] = 255  # crowd -> ignore, painted first
    expected[coco.annToMask(coco.anns[10]) > 0] = 1  # largest first ...
    expected[coco.annToMask(coco.anns[12]) > 0] = 2
    expected[coco.annToMask(coco.anns[11]) > 0] = 2  # ... smallest on top
    mask = ds[0]["mask"].numpy()
    assert np.array_equal(mask, expected)
    assert (mask == 255).sum() == 20 and mask[8, 8] == 2 and mask[4, 4] == 1
    assert ds[1]["mask"].sum() == 0  # an image without annotations is all background
    # the order of annotations in the file does not change the result
    ann_file2, images2 = _coco_files(tmp_path / "two", list(reversed(anns)))
    ds2 = build_dataset({"name": "coco", "annotations": str(ann_file2), "images": str(images2)}, num_classes=3)
    assert np.array_equal(ds2[0]["mask"].numpy(), mask)
    crowd_as_class = build_dataset(
        {"name": "coco", "annotations": str(ann_file), "images": str(images), "crowd": "class"}, num_classes=3
    )
    assert (crowd_as_class[0]["mask"] == 255).sum() == 0


def test_coco_dataset_category_subset(tmp_path: Path) -> None:
    ann_file, images = _coco_files(tmp_path, _annotations())
    ds = build_dataset(
        {"name": "coco", "annotations": str(ann_file), "images": str(images), "categories": ["cat"]}, num_classes=2
    )
    mask = ds[0]["mask"].numpy()
    assert ds.class_names == ["background", "cat"] and mask[4, 4] == 0 and mask[8, 8] == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("num_classes", r"gives 3 classes .* data.num_classes is 5"),
        ("image_size", r"is 32x24 .* says 33x24"),
        ("missing_image", r"1 image file\(s\) .* do not exist"),
        ("unknown_category", r"category_id 99, which is not in 'categories'"),
        ("bad_polygon", r"cannot be decoded: each polygon"),
        ("unknown_subset", r"categories \['bird'\] are not in"),
    ],
)
def test_coco_dataset_malformed_inputs(tmp_path: Path, change: str, message: str) -> None:
    anns = _annotations()
    if change == "unknown_category":
        anns[0]["category_id"] = 99
    if change == "bad_polygon":
        anns[1]["segmentation"] = [[1, 2, 3]]
    ann_file, images = _coco_files(tmp_path, anns)
    data = json.loads(ann_file.read_text())
    if change == "image_size":
        data["images"][0]["width"] = 33
    if change == "missing_image":
        data["images"][1]["file_name"] = "gone.png"
    ann_file.write_text(json.dumps(data))
    spec = {"name": "coco", "annotations": str(ann_file), "images": str(images)}
    if change == "unknown_subset":
        spec["categories"] = ["bird"]
    with pytest.raises(DataError, match=message):
        ds = build_dataset(spec, num_classes=5 if change == "num_classes" else 3)
        ds[0]


# -- synthetic shapes ------------------------------------------------------------------------------
def test_shapes_generated_once_and_read_by_folder_loader(seg_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = build_dataset({"name": "shapes", "num_images": 6, "image_size": 32}, split="train")
    folder = Path(ds.root)
    assert folder.is_relative_to(seg_cache) and len(ds) == 6
    assert type(ds).__name__ == "FolderSegmentationDataset"
    assert sorted(p.name for p in (folder / "masks").iterdir()) == [f"{i:05d}.png" for i in range(6)]
    values = set()
    for i in range(6):
        sample = ds[i]
        assert sample["image"].shape == (3, 32, 32)
        values |= set(sample["mask"].unique().tolist())
    assert values <= {0, 1, 2, 3} and len(values) >= 3
    assert ds.class_names == ["background", "circle", "square", "triangle"]

    def fail(*args: object) -> None:
        raise AssertionError("the cached split was generated again")

    monkeypatch.setattr(shapes, "generate_shapes", fail)
    again = build_dataset({"name": "shapes", "num_images": 6, "image_size": 32}, split="train")
    assert torch.equal(again[3]["mask"], ds[3]["mask"])
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name]  # no temporary folder left


def test_shapes_are_deterministic_and_splits_differ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = shapes.shapes_folder("train", 3, 32, seed=0)
    monkeypatch.setenv("VISIONKIT_CACHE", str(tmp_path / "other"))
    b = shapes.shapes_folder("train", 3, 32, seed=0)
    v = shapes.shapes_folder("val", 3, 32, seed=0)
    assert a != b
    for name in ("images/00001.png", "masks/00002.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "images/00000.png").read_bytes() != (v / "images/00000.png").read_bytes()


def test_shapes_rejects_wrong_class_count(seg_cache: Path) -> None:
    with pytest.raises(DataError, match="data.num_classes=4"):
        build_dataset({"name": "shapes", "num_images": 2}, num_classes=3)
