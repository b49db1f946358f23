"""Fréchet distance between feature statistics, and classifier-based scores of generated images."""

from __future__ import annotations

import numpy as np
import torch

from visionkit.engine.distributed import all_reduce_sum
from visionkit.registry import METRICS


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


@METRICS.register("frechet_distance", task="generation")
class FeatureStats:
    """Running sum, sum of outer products and count of feature vectors (float64), reducible across ranks."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of features (N, D)."""
        f = features.detach().to("cpu", torch.float64).flatten(1)
        if self.total is None:
            self.total = torch.zeros(f.shape[1], dtype=torch.float64)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
        self.total += f.sum(0)
        self.outer += f.T @ f
        self.count += f.shape[0]

    def reduce(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(count, mean, unbiased covariance) over all ranks."""
        if self.total is None:
            raise ValueError("no features were added")
        packed = torch.cat([torch.tensor([float(self.count)], dtype=torch.float64), self.total, self.outer.flatten()])
        packed = all_reduce_sum(packed)
        n = int(packed[0])
        d = self.total.shape[0]
        total, outer = packed[1 : 1 + d].numpy(), packed[1 + d :].numpy().reshape(d, d)
        mean = total / n
        cov = (outer - n * np.outer(mean, mean)) / max(n - 1, 1)
        return n, mean, cov


@METRICS.register("classifier_scores", task="generation")
class ClassifierScores:
    """Mean top-1 confidence, per-class prediction counts and (for conditional samples) label agreement."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.confidence = torch.zeros((), dtype=torch.float64)
        self.agree = torch.zeros((), dtype=torch.float64)
        self.labelled = torch.zeros((), dtype=torch.float64)
        self.counts = torch.zeros(num_classes, dtype=torch.float64)

    def update(self, probs: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Add classifier probabilities (N, K) of generated images and the labels they were asked for."""
        probs = probs.detach().float().cpu()
        conf, pred = probs.max(dim=1)
        self.confidence += conf.double().sum()
        self.counts += torch.bincount(pred, minlength=self.num_classes)[: self.num_classes].double()
        if labels is not None:
            labels = labels.cpu()
            self.agree += (pred == labels).double().sum()
            self.labelled += len(labels)

    def compute(self) -> dict[str, float]:
        """Mean confidence, classes predicted at least once, and class consistency (when labels were given)."""
        packed = all_reduce_sum(torch.cat([self.confidence[None], self.agree[None], self.labelled[None], self.counts]))
        conf, agree, labelled, counts = packed[0], packed[1], packed[2], packed[3:]
        n = max(float(counts.sum()), 1.0)
        out = {"classifier_confidence": float(conf) / n, "classes_covered": float((counts > 0).sum())}
        if labelled > 0:
            out["class_consistency"] = float(agree / labelled)
        return out
