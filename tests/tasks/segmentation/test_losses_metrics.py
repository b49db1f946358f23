"""Loss and metric values against torch, torchmetrics and hand calculations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassJaccardIndex

from visionkit import load_config
from visionkit.errors import ConfigError
from visionkit.tasks.segmentation.metrics import SegmentationMetrics

from .conftest import build_loss, build_metric
from .dist_worker import reduce_worker


def _batch(seed: int = 0, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 5, 6, generator=gen)
    target = torch.randint(0, classes, (2, 5, 6), generator=gen)
    target[0, 0, :3] = 255
    target[1, 4, 4] = 255
    return logits, target


def test_cross_entropy_matches_torch_with_weights_and_ignore() -> None:
    logits, target = _batch()
    weights = [0.5, 1.0, 2.0, 3.0]
    loss = build_loss({"name": "ce", "class_weights": weights}, num_classes=4, ignore_index=255)
    expected = F.cross_entropy(logits, target, weight=torch.tensor(weights), ignore_index=255)
    assert torch.allclose(loss(logits, target), expected, atol=1e-6)
    plain = build_loss("ce", num_classes=4, ignore_index=255)
    assert torch.allclose(plain(logits, target), F.cross_entropy(logits, target, ignore_index=255), atol=1e-6)


def test_losses_are_zero_not_nan_when_every_pixel_is_ignored() -> None:
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    for name in ("ce", "focal", "ce_dice"):
        value = build_loss(name, num_classes=3, ignore_index=255)(logits, target)
        assert torch.isfinite(value), name
        value.backward()
    assert build_loss("ce", num_classes=3, ignore_index=255)(logits, target).item() == 0.0


def test_dice_matches_a_hand_calculation() -> None:
    logits = torch.tensor([[[[2.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [3.0, 0.0]]]])  # 1x2x2x2
    target = torch.tensor([[[0, 1], [255, 0]]])
    probs = np.exp(logits[0].numpy()) / np.exp(logits[0].numpy()).sum(0)
    valid = np.array([[1, 1], [0, 1]], bool)
    onehot = np.stack([(target[0].numpy() == c) & valid for c in range(2)]).astype(float)
    dices = []
    for c in range(2):
        p = probs[c][valid]
        t = onehot[c][valid]
        dices.append((2 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0))
    loss = build_loss({"name": "dice", "smooth": 1.0}, num_classes=2, ignore_index=255)(logits, target)
    assert loss.item() == pytest.approx(1 - np.mean(dices), abs=1e-6)
    no_bg = build_loss({"name": "dice", "include_background": False}, num_classes=2, ignore_index=255)
    assert no_bg(logits, target).item() == pytest.approx(1 - dices[1], abs=1e-6)


def test_ce_dice_is_the_weighted_sum() -> None:
    logits, target = _batch(1)
    both = build_loss({"name": "ce_dice", "ce_weight": 0.7, "dice_weight": 2.0}, num_classes=4, ignore_index=255)
    ce = F.cross_entropy(logits, target, ignore_index=255)
    dice = build_loss("dice", num_classes=4, ignore_index=255)(logits, target)
    assert both(logits, target).item() == pytest.approx(0.7 * ce.item() + 2.0 * dice.item(), abs=1e-6)


def test_focal_loss_matches_hand_calculation_and_reduces_to_ce() -> None:
    logits, target = _batch(2)
    focal0 = build_loss({"name": "focal", "gamma": 0.0}, num_classes=4, ignore_index=255)
    assert focal0(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target, ignore_index=255).item(), abs=1e-6
    )
    alpha = [1.0, 0.5, 0.25, 2.0]
    focal = build_loss({"name": "focal", "gamma": 2.0, "class_weights": alpha}, num_classes=4, ignore_index=255)
    probs = logits.softmax(1).numpy()
    t = target.numpy()
    terms = [
        -alpha[t[b, y, x]] * (1 - probs[b, t[b, y, x], y, x]) ** 2 * math.log(probs[b, t[b, y, x], y, x])
        for b in range(2)
        for y in range(5)
        for x in range(6)
        if t[b, y, x] != 255
    ]
    assert focal(logits, target).item() == pytest.approx(float(np.mean(terms)), rel=1e-5)


def test_class_weights_of_the_wrong_length_fail_at_config_load(tmp_path) -> None:
    cfg = {
        "task": "seg",
        "data": {"train": {"name": "seg_folder", "root": str(tmp_path)}},
        "loss": {"name": "ce", "class_weights": [1.0, 2.0]},
    }
    with pytest.raises(ConfigError, match=r"class_weights has 2 entries .* data.num_classes is 4"):
        load_config(cfg)


# -- metrics ---------------------------------------------------------------------------------------
def test_metrics_accumulate_like_torchmetrics_over_batches() -> None:
    n, ignore = 5, 255
    ours = build_metric("miou", num_classes=n, ignore_index=ignore)
    iou_ref = MulticlassJaccardIndex(n, average=None, ignore_index=ignore)
    acc_ref = MulticlassAccuracy(n, average="micro", ignore_index=ignore)
    mean_acc_ref = MulticlassAccuracy(n, average="macro", ignore_index=ignore)
    cm_ref = MulticlassConfusionMatrix(n, ignore_index=ignore)
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        target = torch.randint(0, n, (3, 7, 9), generator=gen)
        pred = torch.where(
            torch.rand(target.shape, generator=gen) < 0.6, target, torch.randint(0, n, target.shape, generator=gen)
        )
        target[torch.rand(target.shape, generator=gen) < 0.1] = ignore
        ours.update({"pred": pred, "target": target})
        for ref in (iou_ref, acc_ref, mean_acc_ref, cm_ref):
            ref.update(pred, target)
    scores = ours.compute()
    assert torch.equal(ours.matrix, cm_ref.compute())
    per_class = torch.tensor([row["iou"] for row in scores["per_class_iou"]], dtype=torch.float32)
    assert torch.allclose(per_class, iou_ref.compute(), atol=1e-6)
    scalars = torch.tensor([scores[f"IoU/class_{i}"] for i in range(n)], dtype=torch.float32)
    assert torch.allclose(scalars, iou_ref.compute(), atol=1e-6)
    assert ours.compute() == scores  # compute() is safe to call twice
    assert scores["mIoU"] == pytest.approx(iou_ref.compute().mean().item(), abs=1e-6)
    assert scores["pixel_acc"] == pytest.approx(acc_ref.compute().item(), abs=1e-6)
    assert scores["mean_acc"] == pytest.approx(mean_acc_ref.compute().item(), abs=1e-6)


def test_metrics_hand_example_with_an_absent_class() -> None:
    target = torch.tensor([[0, 0, 1, 1], [0, 255, 1, 2]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 2, 2]])
    metric = SegmentationMetrics(4, ignore_index=255, class_names=["bg", "a", "b", "c"])
    metric.update({"pred": pred, "target": target})
    scores = metric.compute()
    # bg: tp 2, fp 0, fn 1 -> 2/3; a: tp 2, fp 1, fn 1 -> 2/4; b: tp 1, fp 1, fn 0 -> 1/2; c absent -> NaN
    ious = [row["iou"] for row in scores["per_class_iou"]]
    assert ious[:3] == pytest.approx([2 / 3, 0.5, 0.5]) and ious[3] is None  # null in the table
    assert [scores[f"IoU/{c}"] for c in ("bg", "a", "b")] == pytest.approx([2 / 3, 0.5, 0.5])
    assert math.isnan(scores["IoU/c"])  # NaN as a scalar
    assert [row["class"] for row in scores["per_class_iou"]] == ["bg", "a", "b", "c"]
    assert scores["mIoU"] == pytest.approx((2 / 3 + 0.5 + 0.5) / 3)
    assert scores["pixel_acc"] == pytest.approx(5 / 7)
    assert [row["pixels"] for row in scores["per_class_iou"]] == [3, 3, 1, 0]
    assert scores["mean_acc"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)  # c has no pixels: left out
    json.dumps(scores["per_class_iou"], allow_nan=False)


def test_metrics_are_reduced_across_ranks(tmp_path) -> None:
    gen = torch.Generator().manual_seed(5)
    targets = [torch.randint(0, 3, (2, 6, 6), generator=gen) for _ in range(2)]
    preds = [torch.randint(0, 3, (2, 6, 6), generator=gen) for _ in range(2)]
    targets[1][0] = 255
    torch.multiprocessing.start_processes(
        reduce_worker,
        args=(2, str(tmp_path / "init"), preds, targets, str(tmp_path / "out.pt")),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    reduced = torch.load(tmp_path / "out.pt")
    assert reduced["again"] == reduced["first"]  # a second compute() gives the same reduced numbers
    assert torch.equal(reduced["matrix"], reduced["matrix_again"])  # the local state is restored after syncing
    whole = SegmentationMetrics(3, ignore_index=255)
    whole.update({"pred": torch.cat(preds), "target": torch.cat(targets)})
    expected = whole.compute()
    assert reduced["mIoU"] == pytest.approx(expected["mIoU"]) and reduced["pixel_acc"] == pytest.approx(
        expected["pixel_acc"]
    )
    single = SegmentationMetrics(3, ignore_index=255)
    single.update({"pred": preds[0], "target": targets[0]})
    assert single.compute()["mIoU"] != pytest.approx(expected["mIoU"])  # the reduction mattered
