"""The YOLO family's box coding, assignment and losses, written from the papers.

- Boxes as distributions (GFL, arXiv 2006.04388): each side's distance from the anchor point, in strides, is a
  softmax over `reg_max` bins 0..reg_max-1; its expectation decodes it; the distribution focal loss (DFL) puts
  the mass on the two bins around the target distance. `reg_max=1` is plain regression of the distance.
- Task-aligned assignment (TOOD, arXiv 2108.07755): for every object, the anchor points inside its box are
  ranked by score^alpha * IoU^beta with the object's class; the top k are its positives; a point claimed by
  several objects keeps the one it overlaps most; soft class targets are the alignment scaled so that each
  object's best positive gets that positive's IoU.
- Losses: BCE on the class logits against the soft targets, divided by the sum of the targets; complete IoU
  (`torchvision.ops.complete_box_iou_loss`) and DFL on positives, weighted by their target score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, complete_box_iou_loss


def anchor_points(shapes: list[tuple[int, int]], strides: list[int], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Cell centres of every level, in input pixels, and each point's stride: (points [A, 2], strides [A])."""
    points, scale = [], []
    for (h, w), stride in zip(shapes, strides, strict=True):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x, grid_y], -1).reshape(-1, 2))
        scale.append(torch.full((h * w,), float(stride), device=device))
    return torch.cat(points), torch.cat(scale)


def decode(distribution: torch.Tensor, points: torch.Tensor, strides: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Box logits [B, A, 4 * reg_max] -> xyxy boxes in pixels [B, A, 4] (expectation over the bins x stride)."""
    distances = expected_distance(distribution, reg_max) * strides[None, :, None]
    x, y = points[None, :, 0], points[None, :, 1]
    return torch.stack([x - distances[..., 0], y - distances[..., 1], x + distances[..., 2], y + distances[..., 3]], -1)


def expected_distance(distribution: torch.Tensor, reg_max: int) -> torch.Tensor:
    """[..., 4 * reg_max] logits -> [..., 4] distances in strides (left, top, right, bottom)."""
    if reg_max == 1:
        return distribution.float().relu()
    bins = torch.arange(reg_max, device=distribution.device, dtype=torch.float32)
    probs = distribution.float().unflatten(-1, (4, reg_max)).softmax(-1)
    return (probs * bins).sum(-1)


def encode(boxes: torch.Tensor, points: torch.Tensor, strides: torch.Tensor, reg_max: int) -> torch.Tensor:
    """xyxy boxes [N, 4] at anchor points [N, 2] -> distances in strides [N, 4], kept inside the bins' range."""
    x, y = points[:, 0], points[:, 1]
    distances = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], -1)
    top = reg_max - 1 - 0.01 if reg_max > 1 else float("inf")
    return (distances / strides[:, None]).clamp(0, top)


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DFL: [N, 4, reg_max] logits, [N, 4] target distances -> [N] losses (mean over the four sides)."""
    left = target.floor().long()
    right = left + 1
    weight_left = right.float() - target
    weight_right = 1 - weight_left
    flat = logits.flatten(0, 1)
    loss = F.cross_entropy(flat, left.flatten(), reduction="none") * weight_left.flatten()
    loss = loss + F.cross_entropy(flat, right.flatten().clamp(max=logits.shape[-1] - 1), reduction="none") * (
        weight_right.flatten()
    )
    return loss.view(-1, 4).mean(-1)


@dataclass
class Assignment:
    """What the assigner gives one image: per anchor its soft class targets, box target and positive flag."""

    scores: torch.Tensor  # [A, C]
    boxes: torch.Tensor  # [A, 4]
    positive: torch.Tensor  # [A] bool
    owner: torch.Tensor | None = None  # [A] the object index of each positive anchor (for per-object targets)


@torch.no_grad()
def assign(
    scores: torch.Tensor,
    boxes: torch.Tensor,
    points: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
) -> Assignment:
    """Task-aligned assignment for one image: scores [A, C] (sigmoid), boxes [A, 4] xyxy, points [A, 2]."""
    num_anchors, num_classes = scores.shape
    empty = Assignment(
        scores.new_zeros(num_anchors, num_classes), boxes.new_zeros(num_anchors, 4),
        torch.zeros(num_anchors, dtype=torch.bool, device=scores.device),
    )  # fmt: skip
    if len(gt_boxes) == 0:
        return empty
    inside = _centres_inside(points, gt_boxes)  # [G, A]
    iou = box_iou(gt_boxes, boxes.detach().float()).clamp(min=0) * inside  # [G, A]
    class_scores = scores.detach().float()[:, gt_labels].T  # [G, A]
    metric = class_scores.pow(alpha) * iou.pow(beta) * inside
    k = min(topk, num_anchors)
    top = metric.topk(k, dim=1).indices  # [G, k]
    chosen = torch.zeros_like(inside)
    chosen.scatter_(1, top, True)
    chosen &= inside & (metric > 0)
    # An anchor chosen by several objects keeps the one it overlaps most.
    several = chosen.sum(0) > 1
    if several.any():
        best = (iou * chosen).argmax(0)
        keep = torch.zeros_like(chosen)
        keep[best, torch.arange(num_anchors, device=scores.device)] = True
        chosen = torch.where(several[None], keep & chosen, chosen)
    positive = chosen.any(0)
    owner = chosen.float().argmax(0)  # [A] the object of each positive anchor
    metric = metric * chosen
    # Soft targets: each object's alignments scaled so its best positive gets that positive's IoU.
    scale = (iou * chosen).amax(1, keepdim=True) / metric.amax(1, keepdim=True).clamp(min=1e-9)
    strength = (metric * scale).amax(0)  # [A]
    target_scores = torch.zeros_like(empty.scores)
    rows = positive.nonzero().squeeze(1)
    target_scores[rows, gt_labels[owner[rows]]] = strength[rows]
    return Assignment(target_scores, gt_boxes[owner], positive, owner)


def _centres_inside(points: torch.Tensor, gt_boxes: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """[G, A] True where anchor point a lies strictly inside object g's box."""
    x, y = points[None, :, 0], points[None, :, 1]
    left, top = x - gt_boxes[:, None, 0], y - gt_boxes[:, None, 1]
    right, bottom = gt_boxes[:, None, 2] - x, gt_boxes[:, None, 3] - y
    return torch.stack([left, top, right, bottom], -1).amin(-1) > eps


def yolo_losses(
    cls_logits: torch.Tensor,
    box_logits: torch.Tensor,
    points: torch.Tensor,
    strides: torch.Tensor,
    targets: list[dict[str, torch.Tensor]],
    reg_max: int,
    gains: dict[str, float],
    assigner: dict[str, float],
    assignments: list[Assignment] | None = None,
) -> dict[str, torch.Tensor]:
    """The three losses of a batch: cls_logits [B, A, C], box_logits [B, A, 4 * reg_max], targets in pixels.
    A list given as `assignments` receives each image's assignment (a mask head trains on the same anchors)."""
    boxes = decode(box_logits, points, strides, reg_max)
    scores = cls_logits.detach().sigmoid()
    assigned = [
        assign(scores[i], boxes[i], points, t["boxes"].float(), t["labels"].long(), **assigner)
        for i, t in enumerate(targets)
    ]
    if assignments is not None:
        assignments.extend(assigned)
    target_scores = torch.stack([a.scores for a in assigned])
    target_boxes = torch.stack([a.boxes for a in assigned])
    positive = torch.stack([a.positive for a in assigned])
    total = target_scores.sum().clamp(min=1.0)
    loss_cls = F.binary_cross_entropy_with_logits(cls_logits.float(), target_scores, reduction="sum") / total
    weight = target_scores.sum(-1)[positive]
    if positive.any():
        loss_box = (complete_box_iou_loss(boxes[positive], target_boxes[positive], reduction="none") * weight).sum()
        anchors = positive.nonzero()[:, 1]
        if reg_max > 1:
            goal = encode(target_boxes[positive], points[anchors], strides[anchors], reg_max)
            logits = box_logits[positive].float().unflatten(-1, (4, reg_max))
            loss_dfl = (distribution_focal_loss(logits, goal) * weight).sum()
        else:
            loss_dfl = box_logits.sum() * 0.0
        loss_box, loss_dfl = loss_box / total, loss_dfl / total
    else:  # no object in the batch: only the class loss pushes every score down
        loss_box = loss_dfl = box_logits.sum() * 0.0
    return {
        "loss_box": loss_box * gains["box"],
        "loss_cls": loss_cls * gains["cls"],
        "loss_dfl": loss_dfl * gains["dfl"],
    }
