"""Class activation maps (pytorch_grad_cam) of classification, segmentation and detection checkpoints.

`explain()` walks the inputs like the predictor, reads and preprocesses each image with the task's own
hooks, computes a CAM at the model's input size, resizes it to the original image and writes an overlay
under `out/<method>/<relative input path>.png` plus one `explain.json`.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from visionkit.data.images import as_rgb, save_image
from visionkit.data.inputs import walk_inputs
from visionkit.deploy.explain_layers import FeatureMap, probe, resolve_layer
from visionkit.engine.inference import load_model
from visionkit.engine.precision import device_of
from visionkit.engine.predictor import check_options
from visionkit.errors import ConfigError, did_you_mean, require
from visionkit.tasks.classification.task import ClassificationTask
from visionkit.tasks.detection.task import DetectionTask
from visionkit.tasks.detection.visualize import draw_boxes
from visionkit.tasks.segmentation.task import SegmentationTask, logits_of, resize_to

METHODS = ("gradcam", "gradcam++", "eigencam", "scorecam")
FEATURE = "tools/explain.py"


def cam_methods() -> dict[str, type]:
    """pytorch_grad_cam's class for each method name (a missing install names the `deploy` extra)."""
    cam = require("pytorch_grad_cam", FEATURE)
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    class SignedEigenCAM(cam.EigenCAM):
        """EigenCAM with the principal component's sign chosen so the salient region is positive.

        The SVD's sign is arbitrary; unsigned, half the maps would be clipped to nothing by the ReLU.
        """

        def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth):  # noqa: ANN001, ANN201
            projections = get_2d_projection(activations)
            for p in projections:
                if abs(p.min()) > abs(p.max()):
                    p *= -1
            return projections

    return {
        "gradcam": cam.GradCAM,
        "gradcam++": cam.GradCAMPlusPlus,
        "eigencam": SignedEigenCAM,
        "scorecam": cam.ScoreCAM,
    }


def task_kind(task: Any) -> str:
    """'classification', 'segmentation' or 'detection' for the built-in tasks and their subclasses."""
    for cls, kind in (
        (ClassificationTask, "classification"),
        (SegmentationTask, "segmentation"),
        (DetectionTask, "detection"),
    ):
        if isinstance(task, cls):
            return kind
    raise ConfigError(
        f"{FEATURE} explains classification, segmentation and detection models; task '{task.name}' is none of them."
    )


def class_index(wanted: str | int | None, names: Sequence[str]) -> int | None:
    """The index of a class given by name or index (None: not given); a bad one is a ConfigError naming the classes."""
    if wanted is None:
        return None
    text = str(wanted).strip()
    if text in names:
        return list(names).index(text)
    if text.isdigit() and int(text) < len(names):
        return int(text)
    shown = ", ".join(f"{i}={n}" for i, n in enumerate(names[:40])) + (" ..." if len(names) > 40 else "")
    raise ConfigError(
        f"--class {wanted!r} is not one of the model's classes.{'' if text.isdigit() else did_you_mean(text, names)} "
        f"Give a class name or an index 0..{len(names) - 1}: {shown}."
    )


class SegmentationLogits(nn.Module):
    """A segmentation model's main logits at its input's size (models may return a dict with 'out')."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BxCxHxW logits at the size of x."""
        return resize_to(logits_of(self.model(x)), x.shape[-2:])


def _unused_target(output: Any) -> torch.Tensor:
    """Gradient-free EigenCAM never calls its target; pytorch_grad_cam needs one for detector outputs."""
    return torch.zeros(())


@dataclass
class Explanation:
    """One image's CAM (HxW in [0, 1] at the original image size), its JSON record and its overlay picture."""

    cam: np.ndarray
    record: dict[str, Any]
    picture: Any


class Explainer:
    """CAMs of one model, image by image; the target layer is resolved (and checked) on the first image."""

    def __init__(
        self,
        task: Any,
        model: nn.Module,
        method: str = "gradcam",
        target_class: str | int | None = None,
        target_layer: str = "auto",
        options: dict[str, Any] | None = None,
    ) -> None:
        self.cams = cam_methods()
        if method not in self.cams:
            raise ConfigError(
                f"Unknown --method '{method}'.{did_you_mean(method, METHODS)} Accepted: {', '.join(METHODS)}."
            )
        self.kind = task_kind(task)
        if self.kind == "detection" and method != "eigencam":
            raise ConfigError(
                f"Detection supports --method eigencam only (gradient-free, on the backbone/FPN features), "
                f"not '{method}'."
            )
        if self.kind == "detection" and target_class is not None:
            raise ConfigError(
                "--class does not apply to detection: EigenCAM is class-agnostic (boxes of every class are drawn)."
            )
        self.task, self.model, self.method = task, model, method
        self.names = list(task.class_names if self.kind == "segmentation" else task.facts.names)
        self.target = class_index(target_class, self.names)
        self.wanted_layer = target_layer
        self.options = check_options(task, options or {})
        self.net = SegmentationLogits(model) if self.kind == "segmentation" else model
        self.layer: str | None = None
        self.feature_map: FeatureMap | None = None
        self._cam: Any = None
        self._handles: list[Any] = []
        self._trainable: list[nn.Parameter] = []

    # -- set-up ----------------------------------------------------------------------------------
    def _setup(self, batch: torch.Tensor) -> None:
        seen = probe(self.model, lambda: self.net(batch))
        name, module, feature_map = resolve_layer(
            self.kind, self.model, self.wanted_layer, self.method, seen, len(self.names)
        )
        self.layer, self.feature_map = name, feature_map
        self._cam = self.cams[self.method](self.net, [module], reshape_transform=feature_map)
        # No weight gradients: backward then only reaches the activations (and gradient-free methods build no
        # graph); the input's gradient makes the layer's output require one even where every weight is frozen.
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        for p in self._trainable:
            p.requires_grad_(False)
        self._cam.compute_input_gradient = self.method in ("gradcam", "gradcam++")
        transform = getattr(getattr(self.model, "net", None), "transform", None)
        if self.kind == "detection" and isinstance(transform, nn.Module):
            self._handles.append(transform.register_forward_hook(self._note_padding))

    def _note_padding(self, module: nn.Module, args: Any, output: Any) -> None:
        """torchvision detectors pad the resized image to a multiple of 32: keep only the image's part of the maps."""
        images = output[0] if isinstance(output, tuple) else output
        if self.feature_map is not None and hasattr(images, "image_sizes"):
            (height, width), padded = images.image_sizes[0], images.tensors.shape[-2:]
            self.feature_map.valid = (height / padded[0], width / padded[1])

    def close(self) -> None:
        """Remove every hook this explainer put on the model and give its weights back their requires_grad."""
        if self._cam is not None:
            self._cam.activations_and_grads.release()
        for handle in self._handles:
            handle.remove()
        for p in self._trainable:
            p.requires_grad_(True)
        self._handles, self._trainable = [], []

    # -- one image -------------------------------------------------------------------------------
    def explain_image(self, image: np.ndarray) -> Explanation:
        """The CAM, record and overlay of one image as read by `task.read_input` (HWC uint8)."""
        x = self.task.preprocess(image, self.options)
        if self.kind == "detection":
            x = x[0]  # (tensor, original size)
        batch = x[None].to(device_of(self.model))
        if self._cam is None:
            self._setup(batch)
        window = getattr(getattr(self.model, "net", self.model), "input_window", None)
        if self.kind == "detection" and callable(window) and self.feature_map is not None:
            self.feature_map.window = window(*x.shape[-2:])  # a letterboxing detector: the image's part of its maps
        record, cam, boxes = getattr(self, f"_{self.kind}")(batch, image)
        rgb = as_rgb(image)
        full = resize_cam(cam, rgb.shape[:2])
        peak_y, peak_x = np.unravel_index(int(np.argmax(full)), full.shape)
        picture: Any = overlay(rgb, full)
        if boxes is not None:
            picture = draw_boxes(picture, *boxes, self.names, min_side=0)
        record = {**record, "peak": [int(peak_x), int(peak_y)], "target_layer": self.layer, "method": self.method}
        return Explanation(full, record, picture)

    def _run(self, batch: torch.Tensor, targets: list[Any]) -> np.ndarray:
        if self.method == "scorecam":  # ScoreCAM prints a progress bar per image
            with contextlib.redirect_stderr(io.StringIO()):
                return self._cam(input_tensor=batch, targets=targets)[0]
        return self._cam(input_tensor=batch, targets=targets)[0]

    def _named(self, index: int) -> dict[str, Any]:
        return {"name": self.names[index] if index < len(self.names) else str(index), "index": int(index)}

    def _classification(self, batch: torch.Tensor, image: np.ndarray) -> tuple[dict, np.ndarray, None]:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with torch.no_grad():
            probs = self.net(batch).float().softmax(1)[0]
        top = int(probs.argmax())
        index = top if self.target is None else self.target
        cam = self._run(batch, [ClassifierOutputTarget(index)])
        record = {
            "class": self._named(index),
            "score": round(float(probs[index]), 6),
            "predicted": {**self._named(top), "score": round(float(probs[top]), 6)},
        }
        return record, cam, None

    def _segmentation(self, batch: torch.Tensor, image: np.ndarray) -> tuple[dict, np.ndarray, None]:
        from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

        with torch.no_grad():
            logits = self.net(batch).float()[0]
        pred = logits.argmax(0)
        counts = torch.bincount(pred.flatten(), minlength=logits.shape[0])
        if self.target is not None:
            index = self.target
        else:  # the most frequent class other than background (index 0), else background
            foreground = counts.clone()
            foreground[0] = 0
            index = int(foreground.argmax()) if int(foreground.sum()) else 0
        mask, region = pred == index, "predicted"
        if not bool(mask.any()):  # the class is predicted nowhere: explain its logits over the whole image
            mask, region = torch.ones_like(mask), "whole image"
        score = float(logits.softmax(0)[index][mask].mean())
        cam = self._run(batch, [SemanticSegmentationTarget(index, mask.float().cpu().numpy())])
        record = {"class": self._named(index), "score": round(score, 6), "pixels": int(counts[index]), "region": region}
        return record, cam, None

    def _detection(self, batch: torch.Tensor, image: np.ndarray) -> tuple[dict, np.ndarray, tuple]:
        cam = self._run(batch, [_unused_target])
        output = {k: v.detach().cpu() for k, v in self._cam.outputs[0].items()}
        keep = output["scores"] >= float(self.options["score_threshold"])
        sx, sy = image.shape[1] / batch.shape[-1], image.shape[0] / batch.shape[-2]
        boxes = (output["boxes"][keep].float() * torch.tensor([sx, sy, sx, sy])).numpy()
        labels, scores = [int(v) for v in output["labels"][keep]], output["scores"][keep].float().tolist()
        detections = [
            {
                **self._named(label),
                "score": round(score, 4),
                "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)],
            }
            for label, score, (x1, y1, x2, y2) in zip(labels, scores, boxes.tolist(), strict=True)
        ]
        best = detections[0] if detections else None  # torchvision returns detections by decreasing score
        record = {
            "class": {"name": best["name"], "index": best["index"]} if best else None,
            "score": best["score"] if best else None,
            "detections": detections,
        }
        return record, cam, (boxes, labels, scores)


def resize_cam(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize an HxW CAM to (height, width), kept in [0, 1]."""
    if tuple(cam.shape) == tuple(size):
        return cam.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()


def readable(picture: Any, min_side: int) -> Image.Image:
    """A picture scaled up (nearest neighbour) so its shorter side is at least `min_side` pixels."""
    im = picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture, np.uint8))
    scale = min_side / max(1, min(im.size)) if min_side else 1.0
    return im.resize((round(im.width * scale), round(im.height * scale)), Image.NEAREST) if scale > 1 else im


def overlay(rgb: np.ndarray, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """The CAM as a jet heat map blended over an HxWx3 uint8 image."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(rgb.astype(np.float32) / 255.0, cam, use_rgb=True, image_weight=image_weight)


def explain(
    checkpoint: str | Path,
    inputs: Sequence[str | Path] | str | Path,
    out: str | Path,
    method: str = "gradcam",
    target_class: str | int | None = None,
    target_layer: str = "auto",
    device: str | None = None,
    min_side: int = 512,
) -> dict[str, Any]:
    """Write CAM overlays of a checkpoint on image files, folders or globs, and explain.json; return its content.
    Overlays are scaled up so their shorter side is at least `min_side` pixels (0: the image's own size); the
    record's coordinates stay in the image's pixels."""
    require("pytorch_grad_cam", FEATURE)
    if method not in METHODS:
        raise ConfigError(
            f"Unknown --method '{method}'.{did_you_mean(method, METHODS)} Accepted: {', '.join(METHODS)}."
        )
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"The output folder '{out_dir}' is a file; pass a folder for --out.")
    files = walk_inputs([str(i) for i in ([inputs] if isinstance(inputs, (str, Path)) else inputs)], out_dir)
    task, model, _ = load_model(checkpoint, device=device)
    explainer = Explainer(task, model, method, target_class, target_layer)
    records = []
    try:
        for path, rel in files:
            image = task.read_input(path, explainer.options)
            if image is None:  # the task skips this file
                continue
            result = explainer.explain_image(image)
            name = Path(method) / rel.with_name(rel.name + ".png")
            save_image(readable(result.picture, min_side), out_dir / name)
            records.append({"input": str(path), "overlay": name.as_posix(), **result.record})
    finally:
        explainer.close()
    summary = {
        "task": task.name,
        "method": method,
        "target_layer": explainer.layer,
        "checkpoint": str(checkpoint),
        "data": task.facts.to_dict(),
        "explanations": records,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "explain.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return {**summary, "json": str(path)}
