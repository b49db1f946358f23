"""`visionkit convert`: move detection and instance datasets between COCO JSON, YOLO txt and instance PNGs."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from visionkit.cli.common import prog_name, run_command

FORMATS = {
    "coco2yolo": "COCO instances JSON + image folder -> YOLO layout (images/, labels/, data.yaml)",
    "yolo2coco": "YOLO data YAML -> COCO instances JSON per split (images stay where they are)",
    "masks2coco": "instance masks (a folder of <class>_<k>.png per image, or an id map <stem>.png) -> COCO JSON",
}


def convert_main(argv: Sequence[str] | None = None) -> int:
    """`tools/convert.py`: convert a dataset between COCO JSON, YOLO txt labels and instance mask PNGs."""
    p = argparse.ArgumentParser(
        prog=prog_name("convert"),
        description="Convert detection / instance segmentation datasets between formats.",
        epilog="\n".join(f"{k}: {v}" for k, v in FORMATS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="conversion", required=True, metavar="{" + ",".join(FORMATS) + "}")
    a = sub.add_parser("coco2yolo", help=FORMATS["coco2yolo"])
    a.add_argument("--ann-file", required=True, help="COCO instances JSON")
    a.add_argument("--image-dir", required=True, help="folder the JSON's file_name entries are relative to")
    a.add_argument("--out", required=True, help="YOLO dataset folder (created; data.yaml gains the split)")
    a.add_argument("--split", default="train", help="split name in data.yaml and under images/ (default train)")
    a.add_argument("--segments", action="store_true", help="write polygons (instance masks) instead of boxes")
    a.add_argument(
        "--crowd", default="refuse", choices=["refuse", "skip", "keep"],
        help="iscrowd annotations: refuse (default), skip (counted), keep as ordinary objects",
    )  # fmt: skip
    b = sub.add_parser("yolo2coco", help=FORMATS["yolo2coco"])
    b.add_argument("--data-yaml", required=True, help="the YOLO data YAML (path, train, val, names)")
    b.add_argument("--out", required=True, help="folder for instances_<split>.json")
    b.add_argument("--split", action="append", help="split to convert (repeatable; default train and val)")
    b.add_argument("--segments", action="store_true", help="labels are polygons: write them as segmentations")
    c = sub.add_parser("masks2coco", help=FORMATS["masks2coco"])
    c.add_argument("--image-dir", required=True, help="folder of images (searched recursively)")
    c.add_argument("--mask-dir", required=True, help="folder mirroring --image-dir with each image's masks")
    c.add_argument("--names", required=True, help="class names, comma-separated, in class-index order")
    c.add_argument("--out", required=True, help="COCO JSON file to write")
    c.add_argument("--mask-format", default="rle", choices=["rle", "polygon"], help="segmentation form (rle)")
    c.add_argument("--id-divisor", type=int, default=1000, help="id maps: class = id // this (default 1000)")
    args = p.parse_args(argv)

    def go() -> None:
        from visionkit.tasks.instance import convert

        if args.conversion == "coco2yolo":
            report = convert.coco_to_yolo(
                args.ann_file, args.image_dir, args.out, args.split, args.segments, args.crowd
            )
        elif args.conversion == "yolo2coco":
            report = convert.yolo_to_coco(args.data_yaml, args.out, args.split or ["train", "val"], args.segments)
        else:
            names = [n.strip() for n in args.names.split(",") if n.strip()]
            report = convert.masks_to_coco(
                args.image_dir, args.mask_dir, names, args.out, args.mask_format, args.id_divisor
            )
        print(json.dumps(report, indent=2))

    return run_command(go)
