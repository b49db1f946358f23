"""Data that used to train silently wrong or crash in torch.stack: empty classes and mixed image shapes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import default_collate

from tests.conftest import run_tool
from visionkit.api import evaluate
from visionkit.data import DataWarning
from visionkit.data.images import image_header, read_image
from visionkit.errors import DataError
from visionkit.registry import DATASETS


def build(name: str, **kwargs):  # noqa: ANN003, ANN201
    return DATASETS.build({"name": name, **kwargs}, task="classification")


def _png(path: Path, value: int, size: tuple[int, int] = (12, 12), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value, value)).save(path)
    return path


def _folder(root: Path, classes: dict[str, int], per_class: int = 3) -> Path:
    for name, value in classes.items():
        for i in range(per_class):
            _png(root / name / f"{i}.png", value)
    return root


def _no_warning(**kwargs) -> object:  # noqa: ANN003
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        return build("image_folder", **kwargs)


def test_image_header_gives_the_shape_read_image_returns(tmp_path: Path) -> None:
    """Header-only shapes agree with decoding the file, for every mode read_image handles."""
    arrays = {
        "RGB": np.zeros((5, 7, 3), np.uint8),
        "RGBA": np.zeros((5, 7, 4), np.uint8),
        "L": np.zeros((5, 7), np.uint8),
        "LA": np.zeros((5, 7, 2), np.uint8),
        "I;16": np.zeros((5, 7), np.uint16),
        "F": np.zeros((5, 7), np.float32),
    }
    paths = [tmp_path / f"{m.replace(';', '')}.{'tif' if m == 'F' else 'png'}" for m in arrays]
    for path, array in zip(paths, arrays.values()):
        Image.fromarray(array).save(path)
    Image.new("P", (7, 5)).save(tmp_path / "P.png")
    Image.new("1", (7, 5)).save(tmp_path / "1.png")
    paths += [tmp_path / "P.png", tmp_path / "1.png"]
    for path in paths:
        for channels in (None, 1, 3):
            assert image_header(path, channels) == read_image(path, channels).shape, (path.name, channels)
    with pytest.raises(DataError, match="could not be read as an image"):
        (tmp_path / "bad.png").write_bytes(b"not a png")
        image_header(tmp_path / "bad.png")


def test_empty_class_folder_warns_naming_the_class_per_split(tmp_path: Path) -> None:
    root = _folder(tmp_path / "train", {"cat": 10, "dog": 200})
    (root / "eel").mkdir()
    with pytest.warns(DataWarning, match=r"NO training images for 1 of 3 classes: 'eel' \(folder '.*eel' holds"):
        train = build("image_folder", root=str(root), split="train")
    assert train.classes == ["cat", "dog", "eel"] and len(train) == 6
    with pytest.warns(DataWarning, match=r"data.val: no images for 1 of 3 classes: 'eel'.*null in per_class"):
        build("image_folder", root=str(root), split="val")
    # A class named in `classes` without a folder at all is named too.
    with pytest.warns(DataWarning, match=r"'fox' \(folder '.*fox' does not exist\)"):
        build("image_folder", root=str(root), split="train", classes=["cat", "dog", "eel", "fox"])
    (root / "eel" / "notes.txt").write_text("not an image")  # still no image: still warned
    with pytest.warns(DataWarning, match="'eel'"):
        build("image_folder", root=str(root), split="train")
    _png(root / "eel" / "0.png", 90)
    assert len(_no_warning(root=str(root), split="train")) == 7  # every class has images: silent


def test_csv_class_without_rows_warns(tmp_path: Path) -> None:
    for name, value in (("a", 0), ("b", 255)):
        _png(tmp_path / "img" / f"{name}.png", value)
    (tmp_path / "list.csv").write_text("img/a.png,0\nimg/b.png,2\n")
    with pytest.warns(DataWarning, match=r"classes: '1' \(no row of '.*list.csv'\)"):
        ds = build("csv", file=str(tmp_path / "list.csv"), split="train")
    assert ds.classes == ["0", "1", "2"] and ds.labels == [0, 2]
    (tmp_path / "empty.csv").write_text("path,label\n")
    with pytest.raises(DataError, match="lists no images"):
        build("csv", file=str(tmp_path / "empty.csv"))


def test_mixed_channels_or_sizes_are_a_data_error_naming_two_files(tmp_path: Path) -> None:
    """The check fires exactly where default_collate (torch.stack) would fail, and not where it would not."""
    grey = _folder(tmp_path / "grey", {"cat": 10, "dog": 200})
    _png(grey / "dog" / "z_grey.png", 50, mode="L")
    ds = build("image_folder", root=str(grey))
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        default_collate([ds[i] for i in range(len(ds))])
    with pytest.raises(
        DataError,
        match=r"different channel counts.*'.*0.png' \(12x12 px, 3 channels\) and "
        r"'.*z_grey.png' \(12x12 px, grey, 1 channel\).*data.channels=3 \(or 1\)",
    ):
        ds.facts()
    # data.image_size resizes but does not convert: still an error; channels=3 converts: passes and stacks.
    with pytest.raises(DataError, match="channel counts"):
        build("image_folder", root=str(grey), image_size=8).facts()
    fixed = build("image_folder", root=str(grey), channels=3)
    assert fixed.facts().channels == 3 and default_collate([fixed[i] for i in range(len(fixed))])[0].shape[1] == 3

    sizes = _folder(tmp_path / "sizes", {"cat": 10, "dog": 200})
    _png(sizes / "cat" / "wide.png", 50, size=(16, 12))
    ds = build("image_folder", root=str(sizes), split="val")
    with pytest.raises(RuntimeError, match="stack expects"):
        default_collate([ds[i] for i in range(len(ds))])
    with pytest.raises(
        DataError,
        match=r"data.val: images of different sizes.*'.*wide.png' \(16x12 px, "
        r"3 channels\). Set data.image_size: N to resize",
    ):
        ds.facts()
    # A resize, or a pipeline that crops to one size, makes the batch stackable: no error.
    for kwargs in ({"image_size": 8}, {"transforms": [{"name": "CenterCrop", "height": 10, "width": 10}]}):
        ok = build("image_folder", root=str(sizes), split="val", **kwargs)
        ok.facts()
        assert default_collate([ok[i] for i in range(len(ok))])[0].shape[0] == len(ok)

    both = _folder(tmp_path / "both", {"cat": 10, "dog": 200})
    _png(both / "dog" / "odd.png", 50, size=(9, 9), mode="L")
    with pytest.raises(DataError, match=r"different sizes and channel counts.*image_size: N.*and set data.channels=3"):
        build("image_folder", root=str(both)).facts()


def test_mixed_csv_images_are_checked_too(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", 0)
    _png(tmp_path / "b.png", 255, size=(8, 8))
    (tmp_path / "list.csv").write_text("a.png,x\nb.png,y\n")
    with pytest.raises(DataError, match=r"'.*a.png' \(12x12 px.*'.*b.png' \(8x8 px"):
        build("csv", file=str(tmp_path / "list.csv")).facts()


def _train_args(root: Path, run: Path) -> list[str]:
    return [
        "--task", "cls", "--work-dir", str(run),
        f"data.train={{_delete_: true, name: image_folder, root: {root / 'train'}}}",
        f"data.val={{_delete_: true, name: image_folder, root: {root / 'val'}}}",
        "model.width=8", "model.depth=2", "data.batch_size=16", "data.num_workers=0",
        "trainer.epochs=1", "data.train_transforms=[]",
    ]  # fmt: skip


def test_tools_train_mixed_images_exit_2_without_traceback(tmp_path: Path) -> None:
    for split in ("train", "val"):
        _folder(tmp_path / split, {"cat": 10, "dog": 200})
    _png(tmp_path / "train" / "dog" / "wide.png", 50, size=(16, 12))
    proc = run_tool("train", *_train_args(tmp_path, tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "stack expects" not in proc.stderr
    assert "error: data.train: images of different sizes" in proc.stderr
    assert "wide.png' (16x12 px" in proc.stderr and "data.image_size: N" in proc.stderr


def test_tools_train_with_an_empty_class_warns_and_reports_no_accuracy_for_it(tmp_path: Path) -> None:
    for split in ("train", "val"):
        _folder(tmp_path / split, {"cat": 10, "dog": 200})
        (tmp_path / split / "eel").mkdir()
    run = tmp_path / "run"
    proc = run_tool("train", *_train_args(tmp_path, run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning: data.train: NO training images for 1 of 3 classes: 'eel'" in proc.stderr
    assert "DataWarning" not in proc.stderr and "datasets.py" not in proc.stderr  # no source path and line
    assert "data.val: no images for 1 of 3 classes: 'eel'" in proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    per_class = summary["per_class_accuracy"]
    assert per_class["eel"] is None  # no validation sample: no accuracy, not 0.0
    assert all(isinstance(per_class[c], float) for c in ("cat", "dog"))
    assert summary["confusion_matrix"][2] == [0, 0, 0]
    assert "val/top1" in proc.stdout and (run / "curves.png").is_file() and (run / "confusion_matrix.png").is_file()
    with pytest.warns(DataWarning, match="data.val: no images for 1 of 3 classes: 'eel'"):
        metrics = evaluate(run / "checkpoints" / "best.pt")
    assert metrics["per_class_accuracy"]["eel"] is None and metrics["per_class_accuracy"]["cat"] == 1.0


def test_image_folder_skips_hidden_folders_and_appledouble_files(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", {"cat": 10, "dog": 200})
    _png(root / "._dog" / "0.png", 50)  # a dot-folder of images used to become a class without a word
    (root / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # used to stop the run
    with pytest.warns(DataWarning, match=r"skipped 3 hidden .*\._dog'"):
        ds = build("image_folder", root=str(root))
    assert ds.classes == ["cat", "dog"] and len(ds) == 6
    assert all(not p.name.startswith(".") for p in ds.load.files)
