"""Classification datasets: digits, ImageFolder, CIFAR-10 batches, MNIST IDX and CSV lists."""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from visionkit.data import IMAGE_SUFFIXES, skip_hidden
from visionkit.data.checks import check_same_shape, warn_empty_classes
from visionkit.data.facts import DataFacts
from visionkit.data.images import read_image, to_tensor
from visionkit.data.safe_pickle import load_pickle
from visionkit.data.transforms import build_pipeline
from visionkit.errors import ConfigError, DataError
from visionkit.registry import DATASETS

TASK = "classification"


class ClassificationDataset(Dataset):
    """Images (HWC uint8) with integer labels; applies an albumentations pipeline, returns (CHW float, label)."""

    def __init__(
        self,
        load: Callable[[int], np.ndarray],
        labels: Sequence[int],
        classes: Sequence[str],
        transforms: list | None = None,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        image_size: int | None = None,
        key: str = "data.train_transforms",
    ) -> None:
        self.load, self.labels, self.classes = load, list(labels), list(classes)
        self.split = key.removeprefix("data.").removesuffix("_transforms")
        specs = list(transforms or [])
        if image_size:
            specs.append({"name": "Resize", "height": image_size, "width": image_size})
        self.transform = build_pipeline(specs, key=key) if specs else None
        self.image_side = image_size
        self.mean, self.std = [float(m) for m in mean], [float(v) for v in std]
        # Normalised here with tensors made once (to_tensor(image, mean, std) would rebuild them per sample).
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> np.ndarray:
        """The raw HWC uint8 image at `index`, before any transform."""
        return self.load(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.load(index)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return to_tensor(image).sub_(self._mean).div_(self._std), self.labels[index]

    @property
    def channels(self) -> int:
        """Number of image channels (after any conversion to data.channels)."""
        return int(self.load(0).shape[2]) if len(self) else getattr(self.load, "channels", None) or 3

    @property
    def image_size(self) -> int:
        """Side of the (possibly resized) images the model sees."""
        return int(self[0][0].shape[-1]) if len(self) else 0

    def facts(self) -> DataFacts:
        """Class names, channels and the image side the model sees (the resize target, else the data's)."""
        if not len(self):
            return DataFacts(class_names=self.classes)
        if isinstance(self.load, FileImages):  # arrays in memory have one shape by construction
            check_same_shape(self.load.files, self.load.channels, self.transform, bool(self.image_side), self.split)
        for key, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise ConfigError(
                    f"data.{key} has {len(values)} numbers but the images have {self.channels} channel(s); give "
                    f"one number, or one per channel (e.g. data.{key}: {[values[0]] * self.channels})."
                )
        size = self.image_side or self.image_size
        return DataFacts(class_names=self.classes, channels=self.channels, image_size=size)


def check_channels(channels: object, split: str) -> int | None:
    """`channels` when it is null, 1 or 3; a ConfigError naming data.channels and the accepted values otherwise."""
    if channels is None or (isinstance(channels, int) and not isinstance(channels, bool) and channels in (1, 3)):
        return channels
    raise ConfigError(
        f"data.channels (or data.{split}.channels) is {channels!r}; accepted values: null (the images as stored), "
        "1 (grey: RGB is converted by ITU-R 601 luma) or 3 (RGB: grey is repeated, an alpha channel dropped)."
    )


def convert_channels(image: np.ndarray, channels: int | None) -> np.ndarray:
    """An HWC uint8 image with `channels` channels: grey repeated to 3, RGB(A) to grey as PIL's "L", alpha dropped."""
    have = image.shape[2]
    if channels is None or channels == have:
        return image
    if channels == 3:
        return np.repeat(image[:, :, :1], 3, axis=2) if have < 3 else image[:, :, :3]
    if have < 3:  # grey with alpha
        return image[:, :, :1]
    # ITU-R 601-2 luma in PIL's fixed point (L = R*299/1000 + G*587/1000 + B*114/1000, rounded).
    rgb = image[:, :, :3].astype(np.uint32)
    luma = (rgb[:, :, 0] * 19595 + rgb[:, :, 1] * 38470 + rgb[:, :, 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)[:, :, None]


class ArrayImages:
    """Picklable image source over an in-memory NHWC uint8 array (optionally through an index and a channel count)."""

    def __init__(self, array: np.ndarray, index: Sequence[int] | None = None, channels: int | None = None) -> None:
        self.array, self.index, self.channels = array, index, channels

    def __call__(self, i: int) -> np.ndarray:
        return convert_channels(self.array[self.index[i] if self.index is not None else i], self.channels)


class FileImages:
    """Picklable image source reading files on demand."""

    def __init__(self, files: Sequence[Path], channels: int | None = None) -> None:
        self.files, self.channels = list(files), channels

    def __call__(self, i: int) -> np.ndarray:
        return read_image(self.files[i], self.channels)


def _split(n: int, labels: np.ndarray, split: str, val_fraction: float, seed: int) -> np.ndarray:
    """Indices of a deterministic stratified train/val split."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        val.extend(idx[: max(1, round(len(idx) * val_fraction))])
    mask = np.zeros(n, dtype=bool)
    mask[val] = True
    return np.flatnonzero(mask if split == "val" else ~mask)


@DATASETS.register("digits", task=TASK)
def digits(
    split: str = "train",
    val_fraction: float = 0.2,
    split_seed: int = 0,
    transforms: list | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.5,),
) -> ClassificationDataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits, split deterministically (stratified)."""
    channels = check_channels(channels, split)
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.clip(data.images * (255.0 / 16.0), 0, 255).astype(np.uint8)[:, :, :, None]
    labels = data.target.astype(np.int64)
    keep = _split(len(labels), labels, split, val_fraction, split_seed)
    return ClassificationDataset(
        ArrayImages(images, keep, channels),
        labels[keep].tolist(),
        [str(d) for d in range(10)],
        transforms,
        mean,
        std,
        image_size,
        key=f"data.{split}_transforms",
    )


@DATASETS.register("image_folder", task=TASK)
def image_folder(
    root: str,
    split: str = "train",
    transforms: list | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    classes: list[str] | None = None,
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.5,),
) -> ClassificationDataset:
    """ImageFolder layout: `root/<class name>/<image>`; class order is sorted names unless `classes` is given."""
    channels = check_channels(channels, split)
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"data.{split}.root '{root}' is not a folder; expected root/<class>/<image files>.")
    folders = sorted(p for p in base.iterdir() if p.is_dir())
    candidates = [f for d in folders for f in sorted(d.glob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
    visible = set(skip_hidden([*folders, *candidates], base, f"data.{split}"))  # one note for all of them
    found = [p.name for p in folders if p in visible]
    names = list(classes) if classes else found
    missing = [c for c in found if c not in names]
    if missing:
        raise DataError(
            f"Folders {missing} under '{root}' are not in data.{split}.classes {names}; add them or remove the folders."
        )
    files, labels = [], []
    for label, name in enumerate(names):
        for f in (p for p in candidates if p.parent == base / name and p in visible):
            files.append(f)
            labels.append(label)
    if not files:
        raise DataError(f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under '{root}/<class>/'.")
    places = [f"folder '{base / n}' {'holds no images' if (base / n).is_dir() else 'does not exist'}" for n in names]
    warn_empty_classes(names, labels, split, places)
    return ClassificationDataset(
        FileImages(files, channels), labels, names, transforms, mean, std, image_size, key=f"data.{split}_transforms"
    )


@DATASETS.register("csv", task=TASK)
def csv_list(
    file: str,
    split: str = "train",
    transforms: list | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    classes: list[str] | None = None,
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.5,),
) -> ClassificationDataset:
    """A CSV of `path,label` rows (header optional; paths relative to the CSV; labels names or integers)."""
    channels = check_channels(channels, split)
    path = Path(file)
    if not path.is_file():
        raise DataError(f"data.{split}.file '{file}' does not exist; expected a CSV of path,label rows.")
    rows = [r for r in csv.reader(path.read_text().splitlines()) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() in ("path", "file", "filename", "image"):
        rows = rows[1:]
    if not rows:
        raise DataError(f"data.{split}.file '{file}' lists no images; expected rows of path,label.")
    bad = [i + 1 for i, r in enumerate(rows) if len(r) < 2]
    if bad:
        raise DataError(f"'{file}' rows {bad[:5]} do not have two columns path,label.")
    raw = [r[1].strip() for r in rows]
    if classes:
        names = list(classes)
    elif all(v.isdigit() for v in raw):
        names = [str(i) for i in range(max(int(v) for v in raw) + 1)]
    else:
        names = sorted(set(raw))
    lookup = {n: i for i, n in enumerate(names)}
    labels = []
    for line, value in enumerate(raw, 1):
        if value in lookup:
            labels.append(lookup[value])
        elif value.isdigit() and int(value) < len(names):
            labels.append(int(value))
        else:
            raise DataError(f"'{file}' row {line}: label '{value}' is not one of the classes {names}.")
    files = [(path.parent / r[0].strip()) for r in rows]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"'{file}' lists {len(missing)} missing image file(s), e.g. '{missing[0]}'.")
    warn_empty_classes(names, labels, split, [f"no row of '{file}'"] * len(names))
    return ClassificationDataset(
        FileImages(files, channels), labels, names, transforms, mean, std, image_size, key=f"data.{split}_transforms"
    )


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@DATASETS.register("cifar10", task=TASK)
def cifar10(
    root: str,
    split: str = "train",
    transforms: list | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.5,),
) -> ClassificationDataset:
    """CIFAR-10 'python version' batches in a local folder (data_batch_1..5 for train, test_batch for val)."""
    channels = check_channels(channels, split)
    base = Path(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    present = [base / n for n in names if (base / n).is_file()]
    if not present:
        raise DataError(
            f"data.{split}.root '{root}' has no CIFAR-10 batches ({', '.join(names)}); extract "
            "cifar-10-python.tar.gz there (visionkit does not download it)."
        )
    images, labels = [], []
    for f in present:
        batch = load_pickle(f, f"CIFAR-10 batch file (data.{split}.root)")
        if not isinstance(batch, dict):
            raise DataError(f"CIFAR-10 batch file '{f}' does not hold a dict with 'data' and 'labels'.")
        data = batch.get(b"data", batch.get("data"))
        images.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(batch.get(b"labels", batch.get("labels")))
    array = np.concatenate(images)
    classes = CIFAR10_CLASSES
    meta = base / "batches.meta"
    if meta.is_file():
        info = load_pickle(meta, f"CIFAR-10 meta file (data.{split}.root)")
        classes = [c.decode() if isinstance(c, bytes) else c for c in info.get(b"label_names", classes)]
    return ClassificationDataset(
        ArrayImages(array, channels=channels),
        labels,
        classes,
        transforms,
        mean,
        std,
        image_size,
        key=f"data.{split}_transforms",
    )


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"'{path}' is not an unsigned-byte IDX file (bad magic number).")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"'{path}' is truncated: header says {dims}, found {data.size} values.")
    return data.reshape(dims)


@DATASETS.register("mnist", task=TASK)
def mnist(
    root: str,
    split: str = "train",
    transforms: list | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.5,),
) -> ClassificationDataset:
    """MNIST-style IDX files in a local folder (train-/t10k-images-idx3-ubyte and -labels-idx1-ubyte, .gz or not)."""
    channels = check_channels(channels, split)
    base = Path(root)
    prefix = "train" if split == "train" else "t10k"

    def find(kind: str) -> Path:
        for name in (f"{prefix}-{kind}", f"{prefix}-{kind}.gz"):
            if (base / name).is_file():
                return base / name
        raise DataError(f"data.{split}.root '{root}' has no {prefix}-{kind}[.gz] (MNIST IDX files; no download).")

    images = read_idx(find("images-idx3-ubyte"))[:, :, :, None]
    labels = read_idx(find("labels-idx1-ubyte")).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"MNIST files in '{root}' disagree: {len(images)} images but {len(labels)} labels.")
    return ClassificationDataset(
        ArrayImages(images, channels=channels),
        labels.tolist(),
        [str(d) for d in range(10)],
        transforms,
        mean,
        std,
        image_size,
        key=f"data.{split}_transforms",
    )
