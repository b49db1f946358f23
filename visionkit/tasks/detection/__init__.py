"""Object detection: torchvision detectors, COCO/YOLO/VOC/shapes data, pycocotools evaluation."""

from visionkit.tasks.detection import coco, metrics, models, shapes, task, voc, yolo, yolo_net  # noqa: F401 - registers
from visionkit.tasks.detection.evaluation import evaluate_results_file

__all__ = ["evaluate_results_file"]
