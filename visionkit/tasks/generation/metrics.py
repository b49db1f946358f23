"""Generation metrics: Fréchet distance between real and generated features, classifier-based scores.

Both are `visionkit.engine.metrics.Metric`s: `update` takes a validation step's outputs
(`{"real": images, "fake": images, "labels": labels or None}`, images in [-1, 1]) and every state is a
float64 sum (count, feature sum, sum of outer products, ...), so the core reduces them over ranks.
The feature network and the classifier are built from the `generation:` options the task offers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visionkit.engine.contracts import Metric
from visionkit.registry import METRICS
from visionkit.tasks.generation.features import CheckpointClassifier, build_feature_net


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) for two Gaussians (Heusel et al., 2017).

    tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of A S2 A with
    A = S1^(1/2): that matrix is symmetric PSD and similar to S1 S2, so no complex sqrtm is needed.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


def gaussian(count: torch.Tensor, total: torch.Tensor, outer: torch.Tensor) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, unbiased covariance) from a feature count, sum and sum of outer products."""
    n = int(count)
    mean = total.detach().cpu().double().numpy() / max(n, 1)
    cov = (outer.detach().cpu().double().numpy() - n * np.outer(mean, mean)) / max(n - 1, 1)
    return n, mean, cov


def frechet_of_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between two feature sets (N, D) held in memory (for scripts)."""
    stats = []
    for f in (real, fake):
        f = f.detach().to("cpu", torch.float64).flatten(1)
        stats.append(gaussian(torch.tensor(f.shape[0]), f.sum(0), f.T @ f))
    return frechet_distance(stats[0][1], stats[0][2], stats[1][1], stats[1][2])


def _load_classifier(classifier: str | nn.Module | None) -> nn.Module | None:
    if classifier is None or isinstance(classifier, nn.Module):
        return classifier
    return CheckpointClassifier(Path(classifier)).eval()


@METRICS.register("frechet_distance", task="generation")
class FrechetDistance(Metric):
    """`fd`: Fréchet distance between the features of real and generated images; `generated`: their count.

    Statistics are float64 sums over every validation batch and rank. `feature_net` is `pixels`,
    `timm/<arch>` (with `feature_weights`, `feature_size`) or a classification checkpoint (or a module).
    """

    inputs = ("real", "fake")

    def __init__(
        self,
        feature_net: str | nn.Module | None = "pixels",
        feature_weights: str | None = None,
        feature_size: int | None = None,
        channels: int | None = None,
        image_size: int | None = None,
        report: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(feature_net, nn.Module):
            self.net = feature_net
        else:
            self.net = build_feature_net(feature_net, feature_weights, "cpu", feature_size)
        self.report = dict(report or {})
        with torch.no_grad():  # the feature size sizes the states, so they are known on every rank
            probe = torch.zeros(1, int(channels or 3), int(image_size or 32), int(image_size or 32))
            dim = int(self.net(probe).flatten(1).shape[1])
        for side in ("real", "fake"):
            self.add_state(f"{side}_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_sum", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")

    def _add(self, side: str, images: torch.Tensor) -> None:
        with torch.autocast(images.device.type, enabled=False):
            f = self.net(images.float()).detach().flatten(1).to(torch.float64)
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + f.shape[0])
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + f.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + f.T @ f)

    def update(self, outputs: Mapping[str, Any]) -> None:
        """Add the features of one batch of real and generated images."""
        self._add("real", outputs["real"])
        self._add("fake", outputs["fake"])

    def statistics(self) -> dict[str, tuple[int, np.ndarray, np.ndarray]]:
        """(count, mean, covariance) of the real and of the generated features added on this rank."""
        return {s: gaussian(*(getattr(self, f"{s}_{k}") for k in ("count", "sum", "outer"))) for s in ("real", "fake")}

    def compute(self) -> dict[str, Any]:
        """`fd`, `generated`, and how they were measured (`generation`, for summary.json)."""
        stats = self.statistics()
        if stats["real"][0] == 0 or stats["fake"][0] == 0:
            return {}
        (_, mu_r, cov_r), (n, mu_f, cov_f) = stats["real"], stats["fake"]
        out: dict[str, Any] = {"fd": frechet_distance(mu_r, cov_r, mu_f, cov_f), "generated": n}
        if self.report:
            out["generation"] = dict(self.report)
        return out


@METRICS.register("classifier_scores", task="generation")
class ClassifierScores(Metric):
    """Scores of generated images by a classification checkpoint (`generation.classifier`; none: no scores).

    `classifier_confidence` (mean top-1 probability), `classes_covered` (classes predicted at least once)
    and, for class-conditional samples, `class_consistency` (prediction equals the requested label).
    """

    inputs = ("fake", "labels")

    def __init__(self, classifier: str | nn.Module | None = None) -> None:
        super().__init__()
        self.classifier = _load_classifier(classifier)
        k = int(self.classifier.num_classes) if self.classifier is not None else 0
        self.num_classes = k
        self.add_state("confidence", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("agree", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("labelled", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, outputs: Mapping[str, Any]) -> None:
        """Classify one batch of generated images; compare with the labels they were asked for."""
        if self.classifier is None:
            return
        fakes, labels = outputs["fake"], outputs.get("labels")
        with torch.autocast(fakes.device.type, enabled=False):
            probs, _ = self.classifier(fakes.float())
        conf, pred = probs.detach().float().max(dim=1)
        self.confidence += conf.double().sum()
        self.counts += torch.bincount(pred, minlength=self.num_classes)[: self.num_classes].double()
        if labels is not None:
            self.agree += (pred == labels.to(pred.device)).double().sum()
            self.labelled += len(labels)

    def compute(self) -> dict[str, Any]:
        """Mean confidence, classes covered and (when labels were given) class consistency."""
        if self.classifier is None:
            return {}
        n = max(float(self.counts.sum()), 1.0)
        out = {"classifier_confidence": float(self.confidence) / n, "classes_covered": float((self.counts > 0).sum())}
        if self.labelled > 0:
            out["class_consistency"] = float(self.agree / self.labelled)
        return out
