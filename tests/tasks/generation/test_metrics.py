"""Generation metrics: Fréchet distance against scipy, streaming statistics, classifier scores, feature nets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from visionkit import Metric
from visionkit.errors import ConfigError
from visionkit.registry import METRICS
from visionkit.tasks.generation.features import PixelFeatures, build_feature_net
from visionkit.tasks.generation.metrics import ClassifierScores, FrechetDistance, frechet_distance


def _scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula on raw samples: numpy means/covariances and scipy's matrix square root."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


class Flat(torch.nn.Module):
    """Features are the inputs themselves: (N, D, 1, 1) -> (N, D)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _as_images(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).float()[:, :, None, None]


@pytest.mark.parametrize("n,d,shift", [(200, 6, 0.0), (200, 6, 0.7), (80, 12, 2.0)])
def test_frechet_distance_matches_scipy(n: int, d: int, shift: float) -> None:
    rng = np.random.default_rng(d)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.5 + shift
    metric = FrechetDistance(Flat(), channels=d, image_size=1)
    assert isinstance(metric, Metric)
    for ca, cb in zip(np.array_split(a, 7), np.array_split(b, 7), strict=True):  # streaming, uneven batches
        metric.update({"real": _as_images(ca), "fake": _as_images(cb)})
    stats = metric.statistics()
    na, mu_a, cov_a = stats["real"]
    _, mu_b, cov_b = stats["fake"]
    a32 = a.astype(np.float32).astype(np.float64)  # the stats are fed float32 features
    b32 = b.astype(np.float32).astype(np.float64)
    assert na == n and all(getattr(metric, f"{s}_sum").dtype == torch.float64 for s in ("real", "fake"))
    assert np.allclose(mu_a, a32.mean(0)) and np.allclose(cov_a, np.cov(a32, rowvar=False))
    assert frechet_distance(mu_a, cov_a, mu_b, cov_b) == pytest.approx(_scipy_frechet(a32, b32), rel=1e-6)
    out = metric.compute()
    assert out["fd"] == pytest.approx(_scipy_frechet(a32, b32), rel=1e-6) and out["generated"] == n
    assert metric.compute() == out  # safe to call twice
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert metric.compute() == {}


def test_frechet_distance_is_registered_with_pixel_features() -> None:
    metric = METRICS.build("frechet_distance", task="generation", channels=1, image_size=16, report={"x": 1})
    images = torch.rand(4, 1, 16, 16) * 2 - 1
    metric.update({"real": images, "fake": images.flip(0), "labels": None})
    out = metric.compute()
    assert out["fd"] == pytest.approx(0.0, abs=1e-3)  # the same images in another order
    assert out["generated"] == 4 and out["generation"] == {"x": 1}
    assert metric.real_outer.shape == (256, 256)


def test_frechet_distance_of_identical_and_shifted_gaussians() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4))
    mu, cov = x.mean(0), np.cov(x, rowvar=False)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-9
    # equal covariances: the distance is the squared mean difference
    assert frechet_distance(mu, cov, mu + 3.0, cov) == pytest.approx(4 * 9.0, rel=1e-9)


def test_frechet_distance_with_rank_deficient_covariances() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 20)), rng.normal(size=(5, 20)) + 1  # fewer samples than dimensions
    got = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert got == pytest.approx(_scipy_frechet(a, b), rel=1e-5, abs=1e-6)


class FixedProbs(torch.nn.Module):
    """A stand-in classifier: the 'images' (N, K, 1, 1) are the class probabilities."""

    num_classes = 3

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flatten(1), x.flatten(1)


def test_classifier_scores_by_hand() -> None:
    scores = ClassifierScores(FixedProbs())
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])[:, :, None, None]
    scores.update({"fake": probs[:2], "labels": torch.tensor([0, 2])})
    scores.update({"fake": probs[2:], "labels": torch.tensor([0, 2])})
    out = scores.compute()
    assert out["classifier_confidence"] == pytest.approx((0.9 + 0.7 + 0.6 + 0.8) / 4)
    assert out["classes_covered"] == 3
    assert out["class_consistency"] == pytest.approx(3 / 4)  # predicted 0,1,0,2 for asked 0,2,0,2
    assert scores.counts.dtype == torch.float64
    unlabelled = ClassifierScores(FixedProbs())
    unlabelled.update({"fake": probs[:1], "labels": None})
    assert "class_consistency" not in unlabelled.compute() and unlabelled.compute()["classes_covered"] == 1
    idle = METRICS.build("classifier_scores", task="generation", classifier=None)  # no generation.classifier
    idle.update({"fake": probs, "labels": None})
    assert idle.compute() == {}


def test_pixel_features_are_capped() -> None:
    small = PixelFeatures()(torch.zeros(2, 1, 16, 16))
    big = PixelFeatures()(torch.zeros(2, 3, 64, 64))
    assert small.shape == (2, 256) and big.shape == (2, 3 * 16 * 16)


def test_timm_feature_net_loads_local_weights(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    reference = timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()
    weights = tmp_path / "resnet10t.pth"
    torch.save(reference.state_dict(), weights)
    net = build_feature_net("timm/resnet10t", str(weights), image_size=32)
    images = torch.rand(2, 1, 16, 16) * 2 - 1
    feats = net(images)
    x = torch.nn.functional.interpolate(
        images.expand(-1, 3, -1, -1), size=(32, 32), mode="bilinear", align_corners=False, antialias=True
    )
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference(((x + 1) / 2 - mean) / std)
    assert feats.shape == (2, 512) and torch.allclose(feats, expected, atol=1e-5)


def test_bad_feature_net_specs_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="feature_net"):
        build_feature_net("inception")
    with pytest.raises(ConfigError, match="timm has no model"):
        build_feature_net("timm/not_a_model_xyz")
    with pytest.raises(ConfigError, match="does not exist"):
        build_feature_net("timm/resnet10t", str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="does not exist"):
        build_feature_net(str(tmp_path / "missing.pt"))
