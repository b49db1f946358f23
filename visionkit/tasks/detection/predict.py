"""Detection prediction helpers: COCO ids from an annotation file and the task-wide result files."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from visionkit.errors import DataError
from visionkit.tasks.detection.coco import read_coco_json

OPTIONS = {"score_threshold": 0.3, "ann_file": None, "draw": True}


class AnnotationIds:
    """Image and category ids from a COCO annotation file: images by path, categories by class name."""

    def __init__(self, ann_file: str, class_names: Sequence[str]) -> None:
        self.ann_file = ann_file
        data = read_coco_json(ann_file, "predict option ann_file")
        by_name: dict[str, list[int]] = {}
        for c in data["categories"]:
            by_name.setdefault(str(c.get("name", c["id"])), []).append(int(c["id"]))
        names = list(class_names)
        if sorted(by_name) != sorted(names) or any(len(ids) > 1 for ids in by_name.values()):
            listed = [str(c.get("name", c["id"])) for c in sorted(data["categories"], key=lambda c: int(c["id"]))]
            raise DataError(
                f"ann_file '{ann_file}' has categories {listed} but the model predicts the classes {names}; "
                "categories are matched by name, so the two lists must hold the same names."
            )
        self.category_ids = [by_name[n][0] for n in names]  # label i -> the file's id of class name i
        self.suffixes: dict[tuple[str, ...], list[int]] = {}
        for im in data["images"]:
            parts = tuple(p for p in PurePosixPath(str(im["file_name"]).replace("\\", "/")).parts if p not in ("", "."))
            for k in range(1, len(parts) + 1):
                self.suffixes.setdefault(parts[-k:], []).append(int(im["id"]))

    def image_ids(self, inputs: Sequence[str]) -> list[int]:
        """The id of each input: the annotation image whose file_name is the longest tail of its path."""
        ids, owner = [], {}
        for raw in inputs:
            parts = Path(os.path.abspath(raw)).parts
            found: list[int] = []
            for k in range(len(parts), 0, -1):
                found = sorted(set(self.suffixes.get(tuple(parts[-k:]), [])))
                if found:
                    break
            if not found:
                raise DataError(f"ann_file '{self.ann_file}' has no image matching '{raw}' (by path or file name).")
            if len(found) > 1:
                raise DataError(
                    f"ann_file '{self.ann_file}': input '{raw}' matches {len(found)} images ({found[:5]}) by its "
                    "file name; give the images' folder so their paths match the file_name entries."
                )
            if found[0] in owner:
                raise DataError(
                    f"ann_file '{self.ann_file}': inputs '{owner[found[0]]}' and '{raw}' both match image id "
                    f"{found[0]}; predict them separately or use paths that match the file_name entries."
                )
            owner[found[0]] = raw
            ids.append(found[0])
        return ids


def write_results(
    records: Sequence[dict[str, Any]],
    detections: Sequence[list[tuple[int, float, list[float]]]],
    image_ids: Sequence[int],
    category_ids: Sequence[int],
    class_names: Sequence[str],
    out_dir: Path,
) -> dict[str, Any]:
    """results.json (every detection, COCO results) and images.json (images and categories); return a summary."""
    results, images = [], []
    for record, found, image_id in zip(records, detections, image_ids, strict=True):
        images.append(
            {"id": image_id, "file_name": record["input"], "width": record["width"], "height": record["height"]}
        )
        results += [  # an instance model's detections carry a 4th item: the mask as COCO RLE
            {"image_id": image_id, "category_id": int(category_ids[d[0]]), "bbox": d[2], "score": d[1]}
            | ({"segmentation": d[3]} if len(d) > 3 else {})
            for d in found
        ]
    (out_dir / "results.json").write_text(json.dumps(results))
    categories = [{"id": int(c), "name": n} for c, n in zip(category_ids, class_names, strict=True)]
    (out_dir / "images.json").write_text(json.dumps({"images": images, "categories": categories}, indent=1))
    return {
        "results_file": str(out_dir / "results.json"),
        "images_file": str(out_dir / "images.json"),
        "num_images": len(images),
        "num_detections": len(results),
        "image_ids": {r["input"]: i for r, i in zip(records, image_ids, strict=True)},
    }
