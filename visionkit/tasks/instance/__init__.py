"""Instance segmentation: the `instance` task, Mask R-CNN, COCO box and mask AP, instance data."""

from visionkit.tasks.instance import datasets, metrics, models, task, yolo_seg  # noqa: F401  (registers components)
