"""Detection peers on one machine: visionkit yolo_n, visionkit's FCOS default and, when installed, Ultralytics YOLOv8n.

The shapes data (2,000 train / 200 val images of 96 px, 4 classes) is written in the YOLO layout (images/,
labels/, data.yaml), and every detector trains on that same copy at the same image size and batch: each
visionkit recipe for its own epochs (or --epochs for all), the peer for yolo_n's.
Each trained model then predicts the 200 validation images (score threshold 0.001) and **pycocotools** scores
every prediction file against the same COCO annotation file, so the figures compare like with like (a peer's
own mAP is computed differently). Wall time is the training command's, validation passes included.

Ultralytics is AGPL-3.0: it is never a dependency of visionkit. It runs here only as a black box, in a Python
of its own given with --peer-python (a scratch virtual environment: `python -m venv /tmp/peer &&
/tmp/peer/bin/pip install ultralytics`), built from its own model YAML (yolov8n.yaml) with no pretrained weights.

    python benchmarks/det_peers.py --out det_peers.json [--peer-python /tmp/peer/bin/python]   # own epochs
    python benchmarks/det_peers.py --epochs 30 --only yolo_n,yolov8n --peer-python /tmp/peer/bin/python
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SIZE, BATCH = 96, 16
RUNS = ("fcos", "yolo_n", "yolov8n")
PEER_SCRIPT = r"""
import json, sys, time
from pathlib import Path
import torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from ultralytics import YOLO
model = YOLO("yolov8n.yaml")  # the architecture only: no pretrained weights
start = time.perf_counter()
model.train(data=args["data"], epochs=args["epochs"], imgsz=args["size"], batch=args["batch"], workers=0,
            device="cpu", pretrained=False, amp=False, plots=False, project=args["project"], name="train",
            exist_ok=True, seed=0, deterministic=True, verbose=False)
train_s = time.perf_counter() - start
rows = []
for r in model.predict(source=args["val_images"], imgsz=args["size"], conf=0.001, iou=0.7, max_det=300,
                       stream=True, verbose=False, device="cpu"):
    for box, score, label in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist()):
        rows.append({"file": Path(r.path).name, "xyxy": box, "score": score, "label": int(label)})
Path(args["out"]).write_text(json.dumps({"train_s": train_s, "detections": rows}))
"""


def write_yolo_layout(out: Path) -> tuple[Path, Path, Path]:
    """The shapes data as images/{train,val}, labels/{train,val} and data.yaml; (data.yaml, val ann, val images)."""
    from visionkit.tasks.detection.shapes import shapes_dataset

    splits = {split: shapes_dataset(split=split, image_size=SIZE) for split in ("train", "val")}
    root = out / "shapes_yolo"
    for split, dataset in splits.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for rec in dataset.records:
            shutil.copyfile(rec.path, root / "images" / split / rec.path.name)
            lines = [
                f"{label} {(b[0] + b[2]) / 2 / rec.width:.6f} {(b[1] + b[3]) / 2 / rec.height:.6f} "
                f"{(b[2] - b[0]) / rec.width:.6f} {(b[3] - b[1]) / rec.height:.6f}"
                for b, label in zip(rec.boxes.tolist(), rec.labels.tolist(), strict=True)
            ]
            (root / "labels" / split / f"{rec.path.stem}.txt").write_text("\n".join(lines) + "\n")
    names = splits["train"].class_names
    data_yaml = root / "data.yaml"
    data_yaml.write_text(
        f"path: {root}\ntrain: images/train\nval: images/val\nnames: {json.dumps(dict(enumerate(names)))}\n"
    )
    val = splits["val"]
    ann = root / "annotations_val.json"
    coco = val.coco_dict()
    for image in coco["images"]:
        image["file_name"] = Path(image["file_name"]).name
    ann.write_text(json.dumps(coco))
    return data_yaml, ann, root / "images" / "val"


def score(ann: Path, results: list[dict[str, Any]]) -> dict[str, float]:
    """pycocotools bbox mAP and mAP50 of a COCO result list against the annotation file."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        if not results:
            return {"mAP": 0.0, "mAP50": 0.0}
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"mAP": round(float(ev.stats[0]), 4), "mAP50": round(float(ev.stats[1]), 4)}


CONFIGS = {"fcos": "det/default.yaml", "yolo_n": "det/yolo_n.yaml"}


def recipe_epochs(name: str) -> int:
    """The epochs a packaged recipe trains for."""
    import visionkit

    return int(visionkit.load_config(CONFIGS[name])["trainer"]["epochs"])


def run_visionkit(name: str, epochs: int, data_yaml: Path, ann: Path, val_images: Path, out: Path) -> dict[str, Any]:
    """Train one visionkit recipe on the YOLO-layout copy for `epochs`, predict the val images, score them."""
    import visionkit

    spec = f"{{_delete_: true, name: yolo, data_yaml: {data_yaml}}}"
    run = out / f"{name}_e{epochs}"
    shutil.rmtree(run, ignore_errors=True)
    args = ["--config", CONFIGS[name], f"data.train={spec}", f"data.val={spec}", f"trainer.epochs={epochs}"]
    args += ["trainer.progress=false", "--work-dir", str(run)]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), *args], capture_output=True, text=True)
    train_s = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{name}: training failed:\n{proc.stderr[-3000:]}")
    cfg = visionkit.load_config(run / "config.yaml")
    where = out / f"{name}_e{epochs}_predict"
    found = visionkit.predict(run, [val_images], where, progress=False, draw=False, ann_file=str(ann))
    results = json.loads(Path(found["results_file"]).read_text())
    return {
        "run": name,
        "epochs": epochs,
        "train_s": round(train_s, 1),
        "threads": cfg["trainer"]["num_threads"] or os.cpu_count(),
        **score(ann, results),
    }


def run_peer(python: str, epochs: int, data_yaml: Path, ann: Path, val_images: Path, out: Path, threads: int) -> dict:
    """Ultralytics YOLOv8n from its model YAML in its own Python; its predictions scored like ours."""
    result = out / f"yolov8n_e{epochs}.json"
    args = {
        "data": str(data_yaml), "epochs": epochs, "size": SIZE, "batch": BATCH, "threads": threads,
        "project": str(out / f"yolov8n_e{epochs}"), "val_images": str(val_images), "out": str(result),
    }  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "YOLO_OFFLINE": "1"}
    proc = subprocess.run([python, "-c", PEER_SCRIPT, json.dumps(args)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"yolov8n: the peer failed:\n{proc.stderr[-3000:]}")
    data = json.loads(result.read_text())
    coco = json.loads(ann.read_text())
    ids = {image["file_name"]: image["id"] for image in coco["images"]}
    categories = [c["id"] for c in coco["categories"]]
    rows = [
        {
            "image_id": ids[d["file"]],
            "category_id": categories[d["label"]],
            "bbox": [d["xyxy"][0], d["xyxy"][1], d["xyxy"][2] - d["xyxy"][0], d["xyxy"][3] - d["xyxy"][1]],
            "score": d["score"],
        }
        for d in data["detections"]
    ]
    return {
        "run": "yolov8n",
        "epochs": epochs,
        "train_s": round(data["train_s"], 1),
        "threads": threads,
        **score(ann, rows),
    }


def main() -> None:
    """Run the chosen detectors in turn and print (and save) their table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs", type=int, default=None, help="for every run (default: each recipe's own; the peer: yolo_n's)"
    )
    parser.add_argument("--only", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    parser.add_argument("--peer-python", default=None, help="a Python with ultralytics installed (never ours)")
    parser.add_argument("--peer-threads", type=int, default=1, help="torch threads for the peer (ours: 1)")
    parser.add_argument("--work", default="det_peers", help="folder for the data copy and the runs")
    parser.add_argument("--out", default="det_peers.json")
    args = parser.parse_args()
    chosen = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = sorted(set(chosen) - set(RUNS))
    if unknown:
        parser.error(f"--only: unknown run(s) {unknown}; choose from {', '.join(RUNS)}")
    work = Path(args.work).resolve()
    data_yaml, ann, val_images = write_yolo_layout(work)
    rows = []
    for name in chosen:
        if name == "yolov8n":
            if not args.peer_python:
                print(
                    "yolov8n: skipped. To compare with Ultralytics YOLOv8n, install it in a scratch environment "
                    "(python -m venv /tmp/peer && /tmp/peer/bin/pip install ultralytics) and pass "
                    "--peer-python /tmp/peer/bin/python. It is AGPL-3.0 and never a visionkit dependency."
                )
                continue
            epochs = args.epochs or recipe_epochs("yolo_n")
            row = run_peer(args.peer_python, epochs, data_yaml, ann, val_images, work, args.peer_threads)
        else:
            row = run_visionkit(name, args.epochs or recipe_epochs(name), data_yaml, ann, val_images, work)
        print(json.dumps(row), flush=True)
        rows.append(row)
    record = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "rows": rows}
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"{'run':10} {'epochs':>6} {'mAP':>7} {'mAP50':>7} {'train s':>8} {'threads':>7}")
    for r in rows:
        print(
            f"{r['run']:10} {r['epochs']:>6} {r['mAP']:>7.4f} {r['mAP50']:>7.4f} {r['train_s']:>8.1f} {r['threads']:>7}"
        )


if __name__ == "__main__":
    main()
