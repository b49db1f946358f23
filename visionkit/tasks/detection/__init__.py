"""Object detection: torchvision detectors, COCO/YOLO/VOC/shapes data, pycocotools evaluation."""

from visionkit.tasks.detection import coco, metrics, models, shapes, task, voc, yolo  # noqa: F401 - importing registers
from visionkit.tasks.detection.evaluation import evaluate_results_file

__all__ = ["evaluate_results_file"]
