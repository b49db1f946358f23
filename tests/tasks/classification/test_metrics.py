"""Classification metrics against torchmetrics and hand counts, and the loss against a hand calculation."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from visionkit import Metric
from visionkit.engine.metrics import Evaluator
from visionkit.errors import ConfigError
from visionkit.registry import LOSSES, METRICS
from visionkit.tasks.classification.task import ClassificationTask


def build(num_classes: int, names: list[str] | None = None) -> Evaluator:
    """The task's default `metrics:` list, built as the trainer builds it."""
    offered = {"num_classes": num_classes, "class_names": names or [f"c{i}" for i in range(num_classes)]}
    specs = ClassificationTask.defaults["metrics"]
    metrics = [METRICS.build(s, task="classification", **offered) for s in specs]
    assert all(isinstance(m, Metric) for m in metrics)
    return Evaluator(metrics)


def test_topk_per_class_and_confusion_match_torchmetrics() -> None:
    gen = torch.Generator().manual_seed(0)
    evaluator = build(7)
    top1, top5 = MulticlassAccuracy(7, top_k=1, average="micro"), MulticlassAccuracy(7, top_k=5, average="micro")
    per_class, confusion = MulticlassAccuracy(7, average="none"), MulticlassConfusionMatrix(7)
    hand = torch.zeros(7, 7, dtype=torch.long)
    for _ in range(4):  # accumulated over several batches
        logits, target = torch.randn(33, 7, generator=gen), torch.randint(0, 7, (33,), generator=gen)
        evaluator.update({"logits": logits, "target": target}, len(target))
        for m in (top1, top5, per_class, confusion):
            m.update(logits, target)
        for t, p in zip(target.tolist(), logits.argmax(1).tolist()):
            hand[t, p] += 1
    scalars, extras = evaluator.compute()
    assert set(scalars) == {"val/top1", "val/top5"}  # no `loss` in the outputs: no val/loss
    assert math.isclose(scalars["val/top1"], float(top1.compute()), abs_tol=1e-6)
    assert math.isclose(scalars["val/top5"], float(top5.compute()), abs_tol=1e-6)
    assert math.isclose(scalars["val/top1"], int(hand.diag().sum()) / 132, abs_tol=1e-6)
    accuracy = extras["per_class_accuracy"]
    assert list(accuracy) == [f"c{i}" for i in range(7)]
    assert torch.allclose(torch.tensor(list(accuracy.values())), per_class.compute(), atol=1e-6)
    assert extras["confusion_matrix"] == confusion.compute().tolist() == hand.tolist()
    assert evaluator.compute() == (scalars, extras)  # compute() is safe to call twice


def test_top5_with_fewer_classes_counts_every_sample() -> None:
    evaluator = build(3)
    logits = torch.tensor([[0.1, 0.2, 0.7], [0.9, 0.05, 0.05]])
    evaluator.update({"logits": logits, "target": torch.tensor([0, 0]), "loss": torch.tensor(0.5)}, 2)
    scalars, _ = evaluator.compute()
    assert scalars == {"val/top1": 0.5, "val/top5": 1.0, "val/loss": 0.5}


def test_per_class_accuracy_is_none_for_a_class_without_samples() -> None:
    evaluator = build(3, ["cat", "dog", "owl"])
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 2.0, 0.0]])
    evaluator.update({"logits": logits, "target": torch.tensor([0, 0, 1])}, 3)  # no owl among the targets
    _, extras = evaluator.compute()
    assert extras["per_class_accuracy"] == {"cat": 0.5, "dog": 1.0, "owl": None}
    assert extras["confusion_matrix"] == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]


def test_reset_starts_a_fresh_pass() -> None:
    evaluator = build(3)
    evaluator.update({"logits": torch.eye(3), "target": torch.tensor([1, 2, 0])}, 3)
    assert evaluator.compute()[0]["val/top1"] == 0.0
    evaluator.reset()
    evaluator.update({"logits": torch.eye(3), "target": torch.tensor([0, 1, 2])}, 3)
    scalars, extras = evaluator.compute()
    assert scalars["val/top1"] == 1.0 and extras["confusion_matrix"] == torch.eye(3, dtype=torch.long).tolist()


def test_metric_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="topk"):
        METRICS.build({"name": "accuracy", "topk": [0]}, task="classification", num_classes=3)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        METRICS.build("confusion_matrix", task="classification", num_classes=1)


def test_label_smoothing_cross_entropy_by_hand() -> None:
    loss = LOSSES.build({"name": "cross_entropy", "label_smoothing": 0.1}, task="classification")
    logits, target = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    logp = torch.log_softmax(logits, 1)[0]
    expected = -(0.9 * logp[0] + 0.1 / 3 * logp.sum())
    assert torch.isclose(loss(logits, target), expected, atol=1e-6)
