"""Classification datasets on files made in the test, including malformed input."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionkit.errors import DataError
from visionkit.registry import DATASETS


def build(name: str, **kwargs):  # noqa: ANN003, ANN201
    return DATASETS.build({"name": name, **kwargs}, task="classification")


def _png(path: Path, value: int, size: int = 12, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value if mode == "L" else (value, value, value)).save(path)


def test_digits_split_is_disjoint_stratified_and_real() -> None:
    train, val = build("digits", split="train"), build("digits", split="val")
    assert len(train) + len(val) == 1797 and abs(len(val) - 360) <= 10
    assert sorted(set(val.labels)) == list(range(10))
    x, y = train[0]
    assert x.shape == (1, 8, 8) and x.min() >= -1 and x.max() <= 1 and isinstance(y, int)


def test_image_folder(tmp_path: Path) -> None:
    for cls, value in (("cat", 10), ("dog", 200)):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png", value)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = build("image_folder", root=str(tmp_path), image_size=8)
    assert ds.classes == ["cat", "dog"] and len(ds) == 6
    x, y = ds[5]
    assert x.shape == (3, 8, 8) and y == 1 and float(x.mean()) > 0.5
    with pytest.raises(DataError, match="is not a folder"):
        build("image_folder", root=str(tmp_path / "missing"))


def test_csv_list_with_names_and_errors(tmp_path: Path) -> None:
    _png(tmp_path / "img" / "a.png", 0, mode="L")
    _png(tmp_path / "img" / "b.png", 255, mode="L")
    (tmp_path / "list.csv").write_text("path,label\nimg/a.png,zero\nimg/b.png,one\n")
    ds = build("csv", file=str(tmp_path / "list.csv"))
    assert ds.classes == ["one", "zero"] and ds.labels == [1, 0]
    (tmp_path / "bad.csv").write_text("img/a.png,zero\nimg/missing.png,one\n")
    with pytest.raises(DataError, match="missing image file"):
        build("csv", file=str(tmp_path / "bad.csv"))
    (tmp_path / "bad2.csv").write_text("img/a.png,three\n")
    with pytest.raises(DataError, match="label 'three' is not one of the classes"):
        build("csv", file=str(tmp_path / "bad2.csv"), classes=["zero", "one"])


def test_cifar10_python_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (4, 3072), dtype=np.uint8)
    data[0, :1024] = 255  # first image: red channel full
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": data, b"labels": [3, 1, 4, 1]}, fh)
    ds = build("cifar10", root=str(tmp_path), split="val")
    assert len(ds) == 4 and ds.labels == [3, 1, 4, 1] and ds.classes[3] == "cat"
    assert (ds.image(0)[:, :, 0] == 255).all()  # channel order is HWC after the reshape
    with pytest.raises(DataError, match="no CIFAR-10 batches"):
        build("cifar10", root=str(tmp_path), split="train")


def _idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx(tmp_path: Path, compress: bool) -> None:
    images = np.zeros((5, 28, 28), np.uint8)
    images[2, 10:18, 10:18] = 255
    _idx(tmp_path / "t10k-images-idx3-ubyte", images, compress)
    _idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([7, 2, 1, 0, 4]), compress)
    ds = build("mnist", root=str(tmp_path), split="val")
    assert len(ds) == 5 and ds.labels[0] == 7 and ds.image(2).sum() == 64 * 255
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x09\x03garbage")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"")
    with pytest.raises(DataError, match="bad magic number"):
        build("mnist", root=str(tmp_path), split="train")


class _RunsCode:
    """A crafted pickle: loading it would call os.system to create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_cifar_pickle_never_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": _RunsCode(marker), b"labels": [0]}, fh)
    with pytest.raises(DataError, match=r"test_batch.*not a plain data pickle.*posix.system|system"):
        build("cifar10", root=str(tmp_path), split="val")
    assert not marker.exists()
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [2]}, fh, protocol=5)  # numpy arrays load
    assert build("cifar10", root=str(tmp_path), split="val").labels == [2]
