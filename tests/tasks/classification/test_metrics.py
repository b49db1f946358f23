"""Classification metrics against torchmetrics, and the loss against a hand calculation."""

from __future__ import annotations

import math

import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from visionkit.registry import LOSSES
from visionkit.tasks.classification.metrics import ClassificationMetrics


def test_topk_per_class_and_confusion_match_torchmetrics() -> None:
    gen = torch.Generator().manual_seed(0)
    metrics = ClassificationMetrics(num_classes=7)
    top1, top5 = MulticlassAccuracy(7, top_k=1, average="micro"), MulticlassAccuracy(7, top_k=5, average="micro")
    per_class, confusion = MulticlassAccuracy(7, average="none"), MulticlassConfusionMatrix(7)
    for _ in range(4):  # accumulated over several batches
        logits, target = torch.randn(33, 7, generator=gen), torch.randint(0, 7, (33,), generator=gen)
        metrics.update(logits, target)
        for m in (top1, top5, per_class, confusion):
            m.update(logits, target)
    out = metrics.compute()
    assert math.isclose(out["val/top1"], float(top1.compute()), abs_tol=1e-6)
    assert math.isclose(out["val/top5"], float(top5.compute()), abs_tol=1e-6)
    assert torch.allclose(torch.tensor(metrics.per_class_accuracy()), per_class.compute(), atol=1e-6)
    assert torch.equal(metrics.confusion, confusion.compute())


def test_top5_with_fewer_classes_counts_every_sample() -> None:
    metrics = ClassificationMetrics(num_classes=3)
    metrics.update(torch.tensor([[0.1, 0.2, 0.7], [0.9, 0.05, 0.05]]), torch.tensor([0, 0]))
    assert metrics.compute() == {"val/top1": 0.5, "val/top5": 1.0}


def test_label_smoothing_cross_entropy_by_hand() -> None:
    loss = LOSSES.build({"name": "cross_entropy", "label_smoothing": 0.1}, task="classification")
    logits, target = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    logp = torch.log_softmax(logits, 1)[0]
    expected = -(0.9 * logp[0] + 0.1 / 3 * logp.sum())
    assert torch.isclose(loss(logits, target), expected, atol=1e-6)
