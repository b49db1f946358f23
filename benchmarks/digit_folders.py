"""Write scikit-learn's digits as an image-folder dataset (train|val/<class>/<n>.png), optionally imbalanced.

Used by docs/finetune.md to walk from "a folder of my images" to a tuned, exported model without any download:
    python benchmarks/digit_folders.py data/digits --size 32 --imbalance 0.1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_folders(root: Path, size: int = 32, imbalance: float = 1.0, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """Write root/{train,val}/<digit>/<n>.png (RGB, size x size); classes 5-9 keep `imbalance` of their train images."""
    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    n_val = int(len(order) * val_fraction)
    counts: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    for rank, index in enumerate(order):
        split = "val" if rank < n_val else "train"
        label = int(digits.target[index])
        if split == "train" and label >= 5 and rng.random() > imbalance:
            continue
        pixels = (digits.images[index] * 255 / 16).astype(np.uint8)
        image = Image.fromarray(pixels).resize((size, size), Image.BILINEAR).convert("RGB")
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:04d}.png")
        counts[split][str(label)] = counts[split].get(str(label), 0) + 1
    return counts


def main() -> None:
    """Command line: the output folder, image size and the kept fraction of classes 5-9."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--imbalance", type=float, default=1.0, help="fraction of train images kept for digits 5-9")
    args = p.parse_args()
    counts = write_folders(args.root, args.size, args.imbalance)
    for split, per_class in counts.items():
        print(split, dict(sorted(per_class.items(), key=lambda kv: int(kv[0]))))


if __name__ == "__main__":
    main()
