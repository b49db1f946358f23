"""Registry scopes: aliases belong to their entry's tasks, and task names in lookups are checked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from visionkit.errors import ConfigError
from visionkit.registry import LOSSES, MODELS, Registry
from visionkit.tasks.segmentation.losses import CrossEntropyLoss


@pytest.fixture
def scratch_losses(monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    """The real LOSSES registry, with its tables swapped for copies that are thrown away afterwards."""
    LOSSES.names()  # load the built-in tasks and plugins before copying
    saved = LOSSES.snapshot()
    yield LOSSES
    LOSSES.restore(saved)


def plugin_ce(label_smoothing: float = 0.0) -> str:
    return "plugin ce"


def test_plugin_alias_for_classification_leaves_segmentation_alias_working(scratch_losses: Registry) -> None:
    scratch_losses.register("plugin_cross_entropy", plugin_ce, task="classification", aliases=["ce"])
    assert scratch_losses.get("ce", "segmentation") is CrossEntropyLoss
    assert scratch_losses.get("ce", "seg") is CrossEntropyLoss
    assert scratch_losses.entry("ce", ["segmentation"]).name == "cross_entropy"
    assert scratch_losses.get("ce", "classification") is plugin_ce
    assert scratch_losses.get("ce", "cls") is plugin_ce
    with pytest.raises(ConfigError, match="several tasks"):
        scratch_losses.get("ce")


def test_builtin_ce_alias_is_back_after_the_fixture() -> None:
    assert LOSSES.get("ce", "segmentation") is CrossEntropyLoss
    with pytest.raises(ConfigError, match=r"Unknown loss 'ce' for task 'classification'"):
        LOSSES.get("ce", "classification")


def test_same_alias_for_disjoint_tasks_and_removal_keeps_the_other() -> None:
    reg = Registry("loss")
    reg.register("seg_ce", lambda: "seg", task="segmentation", aliases=["ce"])
    reg.register("cls_ce", lambda: "cls", task="classification", aliases=["ce"])
    assert reg.build("ce", task="segmentation") == "seg"
    assert reg.build("ce", task="classification") == "cls"
    # Replacing the classification entry (and so removing it) leaves segmentation's alias alone.
    reg.register("cls_ce", lambda: "cls2", task="classification", override=True)
    assert reg.build("ce", task="segmentation") == "seg"
    with pytest.raises(ConfigError, match=r"Unknown loss 'ce' for task 'classification'.*Did you mean 'cls_ce'"):
        reg.get("ce", "classification")
    assert reg.build("cls_ce", task="classification") == "cls2"


def test_alias_clash_for_overlapping_tasks_names_the_owner_unless_override() -> None:
    reg = Registry("loss")
    reg.register("seg_ce", lambda: "seg", task=["segmentation", "detection"], aliases=["ce"])
    with pytest.raises(ConfigError, match=r"loss alias 'ce' is already registered by .*test_registry_scopes"):
        reg.register("det_ce", lambda: "det", task="detection", aliases=["ce"])
    with pytest.raises(ConfigError, match=r"alias 'ce' is already registered"):
        reg.register("any_ce", lambda: "any", aliases=["ce"])  # no task: serves every task
    with pytest.raises(ConfigError, match=r"name 'ce' is already registered"):
        reg.register("ce", lambda: "det", task="detection")
    assert reg.names() == ["seg_ce"]
    reg.register("det_ce", lambda: "det", task="detection", aliases=["ce"], override=True)
    assert reg.build("ce", task="detection") == "det"
    assert reg.names() == ["det_ce"]  # the clashing entry was replaced as a whole


def test_a_name_and_an_alias_for_disjoint_tasks_coexist() -> None:
    reg = Registry("loss")
    reg.register("ce", lambda: "cls", task="classification")
    reg.register("cross_entropy", lambda: "seg", task="segmentation", aliases=["ce"])
    assert reg.build("ce", task="classification") == "cls"
    assert reg.build("ce", task="segmentation") == "seg"
    assert "ce" in reg


def test_unknown_task_in_lookups_suggests_known_tasks() -> None:
    pattern = r"Unknown task 'clasification'.*Did you mean 'classification'.*Known tasks: classification"
    with pytest.raises(ConfigError, match=pattern):
        MODELS.names("clasification")
    with pytest.raises(ConfigError, match=pattern):
        MODELS.entry("small_cnn", "clasification")
    with pytest.raises(ConfigError, match=pattern):
        MODELS.get("small_cnn", ["clasification"])
    with pytest.raises(ConfigError, match=pattern):
        MODELS.get("small_cnn", ["classification", "clasification"])
    with pytest.raises(ConfigError, match=pattern):
        MODELS.build("small_cnn", task="clasification", num_classes=2)
    with pytest.raises(ConfigError, match=r"Unknown task 'segmentaton'.*Did you mean 'segmentation'"):
        LOSSES.metadata("ce", "segmentaton")


def test_task_aliases_still_work_in_lookups() -> None:
    assert MODELS.names("cls") == MODELS.names("classification")
    assert "small_cnn" in MODELS.names("cls")
    assert MODELS.entry("small_cnn", ["cls"]).name == "small_cnn"
    assert LOSSES.get("ce", ["gen", "seg"]) is CrossEntropyLoss
