"""Mosaic and mixup: the boxes match the objects drawn in the mosaic image; closing is exact across a resume."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import visionkit
from tests.tasks.detection.test_end_to_end import TINY_DET
from visionkit.engine.checkpoint import load_checkpoint
from visionkit.errors import ConfigError
from visionkit.tasks.detection.datasets import DetectionDataset, ImageRecord
from visionkit.tasks.detection.mosaic import MosaicDataset, MosaicOptions

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]


def _dataset(root: Path) -> DetectionDataset:
    """Six non-square black images, each with solid rectangles of its own colour (label = colour index)."""
    rng = np.random.default_rng(3)
    records = []
    for k, colour in enumerate(COLOURS):
        width, height = int(rng.integers(50, 90)), int(rng.integers(40, 80))
        pixels = np.zeros((height, width, 3), np.uint8)
        boxes = []
        for _ in range(2):
            w, h = int(rng.integers(8, 20)), int(rng.integers(8, 20))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            if any(x < b[2] + 2 and b[0] < x + w + 2 and y < b[3] + 2 and b[1] < y + h + 2 for b in boxes):
                continue  # keep a colour's rectangles apart, so each is one blob
            pixels[y : y + h, x : x + w] = colour
            boxes.append([x, y, x + w, y + h])
        Image.fromarray(pixels).save(root / f"{k}.png")
        records.append(
            ImageRecord(k, root / f"{k}.png", width, height, np.array(boxes, np.float32), np.full(len(boxes), k))
        )
    return DetectionDataset(records, [str(k) for k in range(6)], list(range(1, 7)), transforms=[])


def _blobs(image: np.ndarray, colour: tuple[int, int, int]) -> list[list[float]]:
    """Bounding boxes (xyxy) of the connected regions drawn mostly in `colour`."""
    near = np.abs(image.astype(int) - colour).max(-1) < 100
    regions, _ = ndimage.label(near)
    return [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(regions)]


@pytest.mark.parametrize("degrees", [0.0, 10.0])
def test_mosaic_boxes_enclose_exactly_the_objects_in_the_image(tmp_path: Path, degrees: float) -> None:
    opts = MosaicOptions(p=1.0, scale=(0.6, 1.2), degrees=degrees, min_visibility=0.0)
    mosaic = MosaicDataset(_dataset(tmp_path), 64, opts, epochs=10)
    checked = 0
    for seed in range(12):
        random.seed(seed)
        np.random.seed(seed)
        image, target = mosaic[seed % 6]
        assert image.shape == (3, 64, 64)
        pixels = (image * 255).round().byte().permute(1, 2, 0).numpy()
        for label, colour in enumerate(COLOURS):  # every object seen has its box, every box its object
            drawn = _blobs(pixels, colour)
            boxes = target["boxes"][target["labels"] == label].tolist()
            for found in (b for b in drawn if b[2] - b[0] >= 4 and b[3] - b[1] >= 4):
                assert any(np.allclose(found, box, atol=1.6) for box in boxes), f"seed {seed}: {found} has no box"
                checked += 1
            for box in (b for b in boxes if b[2] - b[0] >= 4 and b[3] - b[1] >= 4):
                assert any(np.allclose(found, box, atol=1.6) for found in drawn), f"seed {seed}: {box} drawn nowhere"
    assert checked > 20  # most objects land in the mosaic (12 mosaics, up to 8 objects each)


def test_mixup_keeps_both_box_sets_and_blends_the_images(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    plain = MosaicDataset(dataset, 64, MosaicOptions(p=1.0), epochs=10)
    mixed = MosaicDataset(dataset, 64, MosaicOptions(p=1.0, mixup=1.0), epochs=10)
    random.seed(0)
    np.random.seed(0)
    first, first_target = plain[0]
    _, second_boxes, _, _ = plain.mosaic(random.randrange(6))  # what mixup draws next from these seeds
    random.seed(0)
    np.random.seed(0)
    image, target = mixed[0]
    assert len(target["boxes"]) == len(first_target["boxes"]) + len(second_boxes)
    assert torch.allclose(target["boxes"][: len(first_target["boxes"])], first_target["boxes"])
    assert not torch.equal(image, first)  # blended


def test_close_epochs_turn_mosaic_off_for_the_last_epochs(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    mosaic = MosaicDataset(dataset, 64, MosaicOptions(p=1.0, close_epochs=2), epochs=5)
    assert [mosaic.active(e) for e in range(5)] == [True, True, True, False, False]
    mosaic.set_epoch(4)
    image, target = mosaic[1]
    plain_image, plain_target = dataset[1]
    assert torch.equal(image, plain_image) and torch.equal(target["boxes"], plain_target["boxes"])


@pytest.mark.parametrize(
    ("override", "key"),
    [("data.mosaic.p=1.5", "data.mosaic.p"), ("data.mosaic.scale=[2, 1]", "data.mosaic.scale"),
     ("data.mosaic.close_epochs=-1", "data.mosaic.close_epochs"), ("data.mosaic.mixp=0.5", "data.mosaic.mixp")],
)  # fmt: skip
def test_bad_mosaic_keys_are_named(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        visionkit.load_config(None, ["task=det", override])


YOLO_TINY = [
    *(o for o in TINY_DET if not o.startswith(("data.image_size=", "trainer.epochs="))),
    "task=det",
    "model={_delete_: true, name: yolo, size: n}",
    "data.image_size=64",  # a multiple of 32; the 48 px shapes are letterboxed up to it
    "trainer.val_every=5",
]
MOSAIC = ["data.mosaic.p=1.0", "data.mosaic.mixup=0.5", "trainer.epochs=3"]
CLOSING = [*YOLO_TINY, *MOSAIC, "data.mosaic.close_epochs=1"]


def test_resume_across_the_close_mosaic_epoch_is_bit_equal(tmp_path: Path) -> None:
    full = visionkit.train(None, CLOSING, work_dir=tmp_path / "full")
    steps = full.summary["steps"]  # 2 batches per epoch: mosaic in epochs 0-1, plain images in epoch 2
    visionkit.train(None, [*CLOSING, "trainer.max_steps=3"], work_dir=tmp_path / "half")
    resumed = visionkit.train(None, [f"trainer.max_steps={steps}"], resume=tmp_path / "half")
    assert resumed.summary["steps"] == steps == 6
    a = load_checkpoint(full.run_dir / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "half" / "checkpoints" / "last.pt")["model"]
    for key, value in a.items():
        assert torch.equal(value, b[key]), f"model.{key} differs after a resume across the close_mosaic epoch"
    never_closed = visionkit.train(None, [*YOLO_TINY, *MOSAIC, "data.mosaic.close_epochs=0"], work_dir=tmp_path / "c")
    c = load_checkpoint(never_closed.run_dir / "checkpoints" / "last.pt")["model"]
    assert not all(torch.equal(value, c[key]) for key, value in a.items())  # the last epoch did train without mosaic


def test_cached_images_are_read_once_and_equal_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = _dataset(tmp_path)
    reads: list[int] = []
    original = DetectionDataset._read_image
    monkeypatch.setattr(DetectionDataset, "_read_image", lambda self, i: reads.append(i) or original(self, i))
    fresh = [dataset.load_image(i) for i in range(6)]
    assert dataset.cache_images(10**9)
    first = [dataset.load_image(i) for i in range(6)]
    first[0][:] = 0  # a transform writing into its input does not change the cache
    again = [dataset.load_image(i) for i in range(6)]
    assert all(np.array_equal(a, b) for a, b in zip(fresh, again, strict=True)) and reads == [*range(6), *range(6)]
    with pytest.warns(UserWarning, match="cache_images skipped"):
        assert not _dataset(tmp_path).cache_images(1000)
