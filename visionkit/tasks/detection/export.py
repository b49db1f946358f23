"""Detection export: one image in, post-processed detections out (boxes, scores, labels), and its parity check.

torchvision detectors resize, normalise, decode boxes, run NMS and scale boxes back inside `forward`; the
exported graph keeps all of it, so the exported file takes the same [0, 1] image the task's `preprocess`
makes and returns final detections. Tracing unrolls the per-image post-processing, so an export takes one
image per call; the caller loops over a batch (DetectionExportedModel does).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import box_iou

from visionkit.engine.export_spec import CheckRow, ExportOptions, ExportSpec, TensorInfo, image_of
from visionkit.errors import ConfigError

BOX_TOL = 1e-3  # pixels, after matching detections
SCORE_TOL = 1e-4
LABEL_PENALTY = 10.0  # in tolerance units: a same-label partner is preferred among near-equal candidates
OUTPUT_NAMES = ("boxes", "scores", "labels")


class SingleImageDetector(nn.Module):
    """`image [1, 3, H, W]` in 0..1 -> (boxes [N, 4] xyxy input pixels, scores [N], labels [N] 0..C-1)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The detector's eval-mode output for the one image of the batch."""
        out = self.detect(image)
        return out["boxes"].float(), out["scores"].float(), out["labels"].long()

    def detect(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The detector's output dict for `image [1, 3, H, W]` (the traced resize patched in while tracing)."""
        transform = getattr(getattr(self.detector, "net", self.detector), "transform", None)
        patch = (
            torch.jit.is_tracing()
            and isinstance(transform, GeneralizedRCNNTransform)
            and transform.fixed_size is None
            and type(transform).resize is GeneralizedRCNNTransform.resize
        )
        if patch:
            transform.resize = partial(_traced_resize, transform)  # an instance attribute, for this trace only
        try:
            return self.detector([image[0]])[0]
        finally:
            if patch:
                del transform.resize


def _traced_resize(
    transform: GeneralizedRCNNTransform, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """GeneralizedRCNNTransform.resize (eval) for the tracer, sizing the output in float64 as eager PyTorch does.

    The traced torchvision resize computes `floor(side * scale)` in float32, so e.g. a 33x47 image meant to
    become 44x64 becomes 44x63 in the graph (47 * float32(64 / 47) = 63.999996) and every detection moves.
    """
    sides = torch._shape_as_tensor(image)[-2:].to(torch.float64)
    limits = torch.tensor([transform.min_size[-1], transform.max_size], dtype=torch.float64)
    scale = (limits / torch.stack([sides.min(), sides.max()])).min()  # tensor / tensor: a Python scalar goes float32
    size = (sides * scale).floor().long()
    resized = nn.functional.interpolate(image[None], size=[size[0], size[1]], mode="bilinear", align_corners=False)
    return resized[0], target


def _post_processing(model: nn.Module) -> dict[str, Any]:
    """score_thresh / nms_thresh / detections_per_img and the resize rule of a torchvision detector, where found."""
    net = getattr(model, "net", model)
    holder = getattr(net, "roi_heads", net)  # Faster R-CNN keeps them on its box head
    notes = {k: getattr(holder, k) for k in ("score_thresh", "nms_thresh", "detections_per_img") if hasattr(holder, k)}
    transform = getattr(net, "transform", None)
    if transform is not None:
        fixed = getattr(transform, "fixed_size", None)
        notes["resize"] = (
            {"fixed_size": list(fixed)}
            if fixed
            else {"min_size": list(transform.min_size), "max_size": transform.max_size}
        )
    return notes


def detection_export_spec(task: Any, model: nn.Module, options: ExportOptions) -> ExportSpec:
    """The export signature of a detector: one [1, 3, H, W] image in, final detections out."""
    if options.dynamic_batch:
        raise ConfigError(
            "Detection exports take one image per call: tracing unrolls torchvision's per-image post-processing "
            "(resize back, NMS) for the traced batch. Drop --dynamic-batch and loop over images in the caller "
            "(visionkit's predict on an exported detector does)."
        )
    if options.softmax:
        raise ConfigError(
            "--softmax applies to classification and segmentation exports; detection exports already return "
            "post-processed scores."
        )
    size = int(options.image_size or task.cfg["data"]["image_size"])
    module = SingleImageDetector(model).eval()
    example = (torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)),)

    def make_inputs(samples: Sequence[Any] | None, limit: int) -> list[tuple[torch.Tensor, ...]]:
        if samples is not None:
            return [(image_of(s).float()[None],) for s in list(samples)[:limit]]
        g = torch.Generator().manual_seed(1)
        shapes = [(size, size)] * max(limit - 1, 1)
        if limit > 1:  # one of another size: the height/width axes are dynamic
            shapes.append((max(size * 3 // 4, 32), size + 16))
        return [(torch.rand(1, 3, h, w, generator=g),) for h, w in shapes]

    notes = {
        **_post_processing(model),
        "input": "one RGB image [1, 3, H, W] float32 in 0..1 after data.val_transforms; the model normalises "
        "and resizes inside",
        "boxes": "xyxy, in the input image's pixels",
        "labels": "0..num_classes-1, indexes of data.class_names",
        "batch": "one image per call",
    }
    return ExportSpec(
        module=module,
        inputs=[TensorInfo("image", [1, 3, "height", "width"], "float32", "RGB image in 0..1")],
        outputs=[
            TensorInfo("boxes", ["detections", 4], "float32", "x1, y1, x2, y2 in input-image pixels"),
            TensorInfo("scores", ["detections"], "float32", "confidence in 0..1, highest first"),
            TensorInfo("labels", ["detections"], "int64", "class index 0..C-1"),
        ],
        example=example,
        make_inputs=make_inputs,
        compare=partial(
            compare_detections,
            score_thresh=notes.get("score_thresh"),
            nms_thresh=notes.get("nms_thresh"),
            max_detections=notes.get("detections_per_img"),
        ),
        atol=BOX_TOL,
        notes=notes,
    )


def match_detections(ref: tuple[torch.Tensor, ...], got: tuple[torch.Tensor, ...]) -> list[tuple[int, int]]:
    """Pair detections greedily by box and score distance (in tolerance units); ties in score may reorder."""
    (rb, rs, rl), (gb, gs, gl) = ref, got
    if not len(rs) or not len(gs):
        return []
    cost = torch.maximum(
        (rb[:, None, :] - gb[None, :, :]).abs().amax(-1) / BOX_TOL, (rs[:, None] - gs[None, :]).abs() / SCORE_TOL
    )
    cost = cost + (rl[:, None] != gl[None, :]).double() * LABEL_PENALTY
    pairs: list[tuple[int, int]] = []
    used_ref, used_got = set(), set()
    for flat in cost.flatten().argsort(stable=True).tolist():
        i, j = divmod(flat, cost.shape[1])
        if i not in used_ref and j not in used_got:
            pairs.append((i, j))
            used_ref.add(i)
            used_got.add(j)
            if len(pairs) == min(cost.shape):
                break
    return pairs


def as_detections(outputs: Sequence[Any], names: Sequence[str]) -> tuple[torch.Tensor, ...]:
    """(boxes, scores, labels) as float64/int64 CPU tensors, found by output name."""
    by_name = dict(zip(names, outputs, strict=True))
    boxes, scores, labels = (torch.as_tensor(by_name[n]).detach().cpu() for n in OUTPUT_NAMES)
    return boxes.double().reshape(-1, 4), scores.double().reshape(-1), labels.long().reshape(-1)


def _boundary(scores: torch.Tensor, k: int, floor: float | None) -> bool:
    """True when detection k's score sits at a cut-off: the list's lowest score or the score threshold."""
    score = float(scores[k])
    return abs(score - float(scores.min())) <= SCORE_TOL or (floor is not None and abs(score - floor) <= SCORE_TOL)


def _swap(
    ref: tuple[torch.Tensor, ...], got: tuple[torch.Tensor, ...], i: int, j: int, capped: bool, cuts: dict[str, Any]
) -> str | None:
    """Why a disagreeing pair is a tie that fell the other way ('cut-off' or 'NMS'), or None for a difference.

    Near-equal scores (within SCORE_TOL) may order differently in the export: at the end of a list capped at
    detections_per_img another detection can make the cut, and of two such same-class boxes overlapping
    beyond nms_thresh NMS can keep the other one.
    """
    if capped and _boundary(ref[1], i, cuts["score_thresh"]) and _boundary(got[1], j, cuts["score_thresh"]):
        return "cut-off"
    nms = cuts["nms_thresh"]
    if nms is not None and int(ref[2][i]) == int(got[2][j]) and abs(float(ref[1][i] - got[1][j])) <= SCORE_TOL:
        if float(box_iou(ref[0][i : i + 1], got[0][j : j + 1])) > nms:
            return "NMS"
    return None


def compare_detections(
    reference: Sequence[Any],
    exported: Sequence[Any],
    names: Sequence[str],
    score_thresh: float | None = None,
    nms_thresh: float | None = None,
    max_detections: int | None = None,
) -> list[CheckRow]:
    """One image's detections, PyTorch vs export: same count, equal labels, boxes and scores close after matching.

    Ties that fall the other way are reported in the detail and not counted as differences: detections with
    near-equal scores swapped at the end of a list capped at `max_detections`, or kept over each other by NMS
    (same class, IoU above `nms_thresh`), and a detection one side lacks whose score is `score_thresh`.
    """
    ref, got = as_detections(reference, names), as_detections(exported, names)
    n_ref, n_got = len(ref[1]), len(got[1])
    pairs = match_detections(ref, got)
    notes = []
    lonely_ref = [i for i in range(n_ref) if i not in {i for i, _ in pairs}]
    lonely_got = [j for j in range(n_got) if j not in {j for _, j in pairs}]
    at_thresh = [
        score_thresh is not None and abs(float(side[1][k]) - score_thresh) <= SCORE_TOL
        for side, lonely in ((ref, lonely_ref), (got, lonely_got))
        for k in lonely
    ]
    counts_ok = n_ref == n_got or all(at_thresh)
    if n_ref != n_got:
        found = [(round(float(ref[1][i]), 4), int(ref[2][i])) for i in lonely_ref]
        found_got = [(round(float(got[1][j]), 4), int(got[2][j])) for j in lonely_got]
        notes.append(
            f"image has {n_ref} detections in PyTorch, {n_got} in the export "
            f"(unmatched (score, label): PyTorch {found[:3]}, export {found_got[:3]}"
            + (f", all at score_thresh {score_thresh})" if counts_ok else ")")
        )
    capped = n_ref == n_got and (max_detections is None or n_ref == max_detections)
    cuts = {"score_thresh": score_thresh, "nms_thresh": nms_thresh}
    kept, swapped = [], {"cut-off": 0, "NMS": 0}
    for i, j in pairs:
        same = int(ref[2][i]) == int(got[2][j]) and float((ref[0][i] - got[0][j]).abs().max()) <= BOX_TOL
        why = None if same else _swap(ref, got, i, j, capped, cuts)
        if why is None:
            kept.append((i, j))
        else:
            swapped[why] += 1
    notes += [f"{n} near-tied detection(s) swapped by {why}" for why, n in swapped.items() if n]
    idx_r = torch.tensor([i for i, _ in kept], dtype=torch.long)
    idx_g = torch.tensor([j for _, j in kept], dtype=torch.long)
    box_diff = (ref[0][idx_r] - got[0][idx_g]).abs().amax(-1) if kept else torch.zeros(0, dtype=torch.float64)
    score_diff = (ref[1][idx_r] - got[1][idx_g]).abs()
    label_diff = (ref[2][idx_r] - got[2][idx_g]).abs()
    prefix = "; ".join(notes) + ("; " if notes else "")
    rows = []
    for name, diff, tol, unit in (
        ("boxes", box_diff, BOX_TOL, " px"),
        ("scores", score_diff, SCORE_TOL, ""),
        ("labels", label_diff.double(), 0.0, ""),
    ):
        worst = float(diff.max()) if len(diff) else 0.0
        if not kept:
            detail = "no detections in either" if not n_ref and not n_got else "no matched detections"
        elif name == "labels":
            detail = f"{int((label_diff > 0).sum())} of {len(kept)} matched detections have another label"
        else:
            i = int(idx_r[int(diff.argmax())])
            what = f"detection {i} (label {int(ref[2][i])}, score {float(ref[1][i]):.4f})"
            detail = f"worst: {what} off by {worst:.3g}{unit}"
        rows.append(CheckRow(name, worst, tol, counts_ok and worst <= tol, prefix + detail))
    return rows


class DetectionExportedModel(nn.Module):
    """The eager Detector's stand-in at predict time: images one by one through an exported session."""

    def __init__(self, session: Any, sidecar: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.session = session
        outputs = (sidecar or {}).get("outputs") or [{"name": n} for n in OUTPUT_NAMES]
        self.output_names = [o["name"] for o in outputs]

    def forward(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """One dict (boxes, scores, labels, and masks where exported) per [3, H, W] image, as the eager model gives."""
        results = []
        for image in images:
            out = dict(zip(self.output_names, self.session.run(image[None].float().cpu()), strict=True))
            results.append({k: torch.as_tensor(v) for k, v in out.items()})
        return results
