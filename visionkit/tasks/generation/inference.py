"""`predict` for generation: write N samples and a grid, or inpaint image files with masks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from visionkit.data import expand_images
from visionkit.errors import ConfigError, DataError
from visionkit.tasks.generation.datasets import IMAGE_SUFFIXES, load_image, to_model_range
from visionkit.tasks.generation.visualize import save_grid, save_images

if TYPE_CHECKING:
    from visionkit.tasks.generation.task import GenerationTask

SAMPLING_KEYS = ("sampler", "steps", "eta", "guidance")
SAMPLE_OPTIONS = ("num_samples", "seed", "batch_size", "labels", "nrow", *SAMPLING_KEYS)
INPAINT_OPTIONS = ("mask", "seed", "batch_size", "labels", "resample", *SAMPLING_KEYS)
MASK_SHAPES = ("center", "left", "right", "top", "bottom")


def _check_options(options: dict[str, Any], accepted: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"Unknown option(s) {', '.join(unknown)} for {what}; accepted: {', '.join(accepted)}.")


def _labels(model: nn.Module, value: Any, n: int) -> torch.Tensor | None:
    """Labels for conditional models: one int for all, a list cycled, or None to cycle over all classes."""
    if not getattr(model, "conditional", False):
        if value is not None:
            raise ConfigError("option labels was given but this model is unconditional.")
        return None
    k = model.num_classes
    values = list(range(k)) if value is None else (value if isinstance(value, list) else [value])
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < k for v in values):
        raise ConfigError(f"option labels must be class indices in [0, {k - 1}] (one or a list), got {value!r}.")
    return torch.tensor([values[i % len(values)] for i in range(n)])


def _sampling(options: dict[str, Any]) -> dict[str, Any]:
    return {k: options[k] for k in SAMPLING_KEYS if k in options}


def sample_files(task: GenerationTask, model: nn.Module, out_dir: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Write `num_samples` images to out_dir/samples/, a grid to out_dir/grid.png and samples.json."""
    _check_options(options, SAMPLE_OPTIONS, "sampling")
    n = int(options.get("num_samples", 64))
    batch = int(options.get("batch_size", 64))
    if n < 1 or batch < 1:
        raise ConfigError(f"num_samples and batch_size must be positive, got {n} and {batch}.")
    labels = _labels(model, options.get("labels"), n)
    generator = torch.Generator().manual_seed(int(options.get("seed", 0)))
    images = []
    for start in range(0, n, batch):
        chunk = None if labels is None else labels[start : start + batch]
        images.append(task.generate(model, min(batch, n - start), chunk, generator, **_sampling(options)).cpu())
    samples = torch.cat(images)
    paths = save_images(samples, out_dir / "samples")
    nrow = options.get("nrow")
    if nrow is None and labels is not None and n % model.num_classes == 0:
        nrow = model.num_classes
    grid = save_grid(samples, out_dir / "grid.png", int(nrow) if nrow else None)
    preds = [{"file": str(p), **({"label": int(labels[i])} if labels is not None else {})} for i, p in enumerate(paths)]
    result = {
        "predictions": preds,
        "grid": str(grid),
        "options": {**task.sampling_options(model, _sampling(options)), "seed": int(options.get("seed", 0))},
    }
    (out_dir / "samples.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def make_mask(shape: str, size: int) -> np.ndarray:
    """A float HxW mask with 1 where to fill: the centre square (half the side) or one half of the image."""
    mask = np.zeros((size, size), np.float32)
    half, quarter = size // 2, size // 4
    if shape == "center":
        mask[quarter : quarter + half, quarter : quarter + half] = 1
    elif shape == "left":
        mask[:, :half] = 1
    elif shape == "right":
        mask[:, half:] = 1
    elif shape == "top":
        mask[:half] = 1
    elif shape == "bottom":
        mask[half:] = 1
    else:
        raise ConfigError(f"option mask is {shape!r}; give a mask image path or one of {', '.join(MASK_SHAPES)}.")
    return mask


def read_mask(path: Path, size: int) -> np.ndarray:
    """A mask image (white = fill) resized like the images, as a float HxW array of 0/1."""
    return (load_image(path, 1, size)[:, :, 0] >= 128).astype(np.float32)


def find_inputs(inputs: list[Path]) -> list[Path]:
    """Image files from files and folders (recursive), leaving out `*_mask.*` files."""
    files = [f for f in expand_images(inputs) if not f.stem.endswith("_mask")]
    if not files:
        raise DataError(f"No image files found in {[str(i) for i in inputs]}.")
    return files


def inpaint_files(
    task: GenerationTask, model: nn.Module, inputs: list[Path], out_dir: Path, options: dict[str, Any]
) -> dict[str, Any]:
    """Fill the masked region of each input (resized and centre-cropped to the model's size).

    The mask is `<name>_mask.<ext>` next to an image when present, else option `mask` (an image path
    or center/left/right/top/bottom; default center). Writes inpaint/<name>.png, the masked input
    inpaint/<name>_masked.png, and inpaint_grid.png (rows: input, masked, result).
    """
    _check_options(options, INPAINT_OPTIONS, "inpainting")
    if not hasattr(model, "inpaint"):
        raise ConfigError(f"Inpainting needs a diffusion model; this checkpoint holds a {type(model).__name__}.")
    files = find_inputs(inputs)
    size, channels = model.image_size, model.channels
    spec = str(options.get("mask", "center"))
    default_mask = read_mask(Path(spec), size) if Path(spec).is_file() else make_mask(spec, size)
    images, masks = [], []
    for f in files:
        sibling = next((p for p in f.parent.glob(f"{f.stem}_mask.*") if p.suffix.lower() in IMAGE_SUFFIXES), None)
        images.append(to_model_range(load_image(f, channels, size)))
        masks.append(torch.from_numpy(read_mask(sibling, size) if sibling else default_mask)[None])
    x, m = torch.stack(images), torch.stack(masks)
    labels = _labels(model, options.get("labels"), len(files))
    generator = torch.Generator().manual_seed(int(options.get("seed", 0)))
    batch = int(options.get("batch_size", 64))
    sampling = task.sampling_options(model, _sampling(options))
    results = []
    for start in range(0, len(files), batch):
        sl = slice(start, start + batch)
        chunk = None if labels is None else labels[sl]
        results.append(
            model.inpaint(
                x[sl], m[sl], labels=chunk, generator=generator, resample=int(options.get("resample", 1)), **sampling
            )
            .float()
            .cpu()
        )
    filled = torch.cat(results)
    masked = x * (1 - m) + m * -1  # the hidden region shown black
    folder = out_dir / "inpaint"
    preds = []
    for i, f in enumerate(files):
        out = save_images(filled[i : i + 1], folder, prefix=f.stem)[0].rename(folder / f"{f.stem}.png")
        hidden = save_images(masked[i : i + 1], folder, prefix=f.stem)[0].rename(folder / f"{f.stem}_masked.png")
        preds.append({"file": str(f), "result": str(out), "masked": str(hidden), "masked_fraction": float(m[i].mean())})
    per_row = min(len(files), 8)
    blank = torch.ones((-len(files) % per_row, *x.shape[1:]))  # white cells complete the last row
    padded = [torch.cat([t, blank]) for t in (x, masked, filled)]
    tiles = [t[s : s + per_row] for s in range(0, len(padded[0]), per_row) for t in padded]
    grid = save_grid(torch.cat(tiles), out_dir / "inpaint_grid.png", per_row)
    result = {"predictions": preds, "grid": str(grid), "options": {**sampling, "mask": spec}}
    (out_dir / "inpaint.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
