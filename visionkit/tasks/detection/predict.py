"""Detection on image files: COCO results JSON, an image index JSON and pictures with drawn boxes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from visionkit.data import expand_images
from visionkit.data.transforms import build_pipeline
from visionkit.errors import ConfigError, DataError
from visionkit.tasks.detection.coco import read_coco_json
from visionkit.tasks.detection.evaluation import to_coco_results
from visionkit.tasks.detection.visualize import draw_boxes

if TYPE_CHECKING:
    from visionkit.tasks.detection.task import DetectionTask

OPTIONS = {"score_threshold": 0.3, "ann_file": None, "draw": True}


def _ids_from_annotations(ann_file: str, files: list[Path], num_classes: int) -> tuple[dict[str, int], list[int]]:
    """Image ids by file name and category ids (sorted, one per class) from a COCO annotation file."""
    data = read_coco_json(ann_file, "predict option ann_file")
    by_name = {Path(im["file_name"]).name: int(im["id"]) for im in data["images"]}
    missing = [f.name for f in files if f.name not in by_name]
    if missing:
        raise DataError(f"ann_file '{ann_file}' has no image named {missing[:3]} ({len(missing)} input(s) unmatched).")
    cats = sorted(int(c["id"]) for c in data["categories"])
    if len(cats) != num_classes:
        raise DataError(f"ann_file '{ann_file}' defines {len(cats)} categories but the model predicts {num_classes}.")
    return by_name, cats


def predict_images(
    task: DetectionTask, model: nn.Module, inputs: list[Path], out_dir: Path, options: dict[str, Any]
) -> dict[str, Any]:
    """Run the detector on each file; write results.json, images.json and images/<name>.png; return a summary."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"Unknown predict option(s) {unknown}; detection accepts {', '.join(OPTIONS)}.")
    opts = {**OPTIONS, **options}
    files = expand_images(inputs)
    names = task.class_names
    category_ids = task.category_ids
    image_ids = {f.name: i + 1 for i, f in enumerate(files)}
    if opts["ann_file"]:
        image_ids, category_ids = _ids_from_annotations(str(opts["ann_file"]), files, len(names))
    transform = build_pipeline(task.cfg["data"]["val_transforms"], key="data.val_transforms")
    device = next(model.parameters()).device
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "images").mkdir(exist_ok=True)
    results: list[dict[str, Any]] = []
    images, per_image = [], []
    thresh = float(opts["score_threshold"])
    for path in files:
        try:
            with Image.open(path) as im:
                pixels = np.array(im.convert("RGB"))
        except OSError as exc:
            raise DataError(f"Cannot read image '{path}': {exc}") from exc
        height, width = pixels.shape[:2]
        transformed = transform(image=pixels)["image"]
        tensor = torch.as_tensor(np.ascontiguousarray(transformed)).permute(2, 0, 1)
        tensor = tensor.float().div(255) if tensor.dtype == torch.uint8 else tensor.float()
        with torch.no_grad():
            output = model([tensor.to(device)])[0]
        scale = (width / tensor.shape[-1], height / tensor.shape[-2])
        image_id = image_ids[path.name]
        found = to_coco_results(output, image_id, category_ids, scale)
        results += found
        images.append({"id": image_id, "file_name": str(path), "width": width, "height": height})
        shown = [r for r in found if r["score"] >= thresh]
        labels = [category_ids.index(r["category_id"]) for r in shown]
        per_image.append(
            {
                "file": str(path),
                "image_id": image_id,
                "detections": [
                    {
                        "class": names[lab],
                        "category_id": r["category_id"],
                        "score": round(r["score"], 4),
                        "bbox": [round(v, 2) for v in r["bbox"]],
                    }
                    for r, lab in zip(shown, labels, strict=True)
                ],
            }
        )
        if opts["draw"]:
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in shown)]
            drawn = draw_boxes(pixels, boxes, labels, [r["score"] for r in shown], names, min_side=0)
            drawn.save(out_dir / "images" / f"{path.stem}.png")
    (out_dir / "results.json").write_text(json.dumps(results))
    categories = [{"id": c, "name": n} for c, n in zip(category_ids, names, strict=True)]
    (out_dir / "images.json").write_text(json.dumps({"images": images, "categories": categories}, indent=1))
    return {
        "results_file": str(out_dir / "results.json"),
        "images_file": str(out_dir / "images.json"),
        "num_images": len(files),
        "num_detections": len(results),
        "score_threshold": thresh,
        "predictions": per_image,
    }
