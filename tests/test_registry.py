"""Registry: registration, lookup, errors with close matches, origins, checked builder options."""

from __future__ import annotations

import pytest

from visionkit.errors import ConfigError
from visionkit.registry import MODELS, TASKS, Registry


def test_register_as_decorator_and_call_and_build() -> None:
    reg = Registry("widget")

    @reg.register("adder")
    def adder(a: int, b: int = 2) -> int:
        return a + b

    reg.register("doubler", lambda x: 2 * x)
    assert reg.get("adder") is adder
    assert reg.build({"name": "adder", "a": 1}) == 3
    assert reg.build("doubler", x=4) == 8
    assert reg.names() == ["adder", "doubler"]


def test_unknown_name_suggests_close_matches() -> None:
    reg = Registry("widget")
    reg.register("resnet18", lambda: 1)
    with pytest.raises(ConfigError, match=r"Unknown widget 'resnt18'.*Did you mean 'resnet18'"):
        reg.get("resnt18")


def test_duplicate_names_error_with_both_origins_unless_override() -> None:
    reg = Registry("widget")
    reg.register("thing", lambda: 1)

    def other() -> int:
        return 2

    with pytest.raises(ConfigError, match=r"already registered by .*test_registry.*tried to register it again"):
        reg.register("thing", other)
    reg.register("thing", other, override=True)
    assert reg.get("thing") is other


def test_same_name_for_different_tasks_is_chosen_by_task() -> None:
    reg = Registry("loss")
    reg.register("ce", lambda: "cls", task="classification")
    reg.register("ce", lambda: "seg", task="segmentation")
    assert reg.build("ce", task="cls") == "cls"
    assert reg.build("ce", task="seg") == "seg"
    assert reg.names(task="classification") == ["ce"]
    with pytest.raises(ConfigError, match="several tasks"):
        reg.get("ce")


def test_builder_options_checked_with_hints() -> None:
    reg = Registry("widget")

    @reg.register("net")
    def net(width: int, depth: int = 2) -> tuple[int, int]:
        return width, depth

    with pytest.raises(ConfigError, match=r"no option 'widht'.*Did you mean 'width'"):
        reg.build({"name": "net", "widht": 3})
    with pytest.raises(ConfigError, match="needs option"):
        reg.build({"name": "net"})
    # Defaults offered by a caller that the builder does not take are dropped, user keys are not.
    assert reg.build({"name": "net", "width": 1}, num_classes=10) == (1, 2)


def test_task_aliases_and_builtin_origin() -> None:
    assert TASKS.canonical("cls") == "classification"
    assert TASKS.canonical("seg") == "segmentation"
    assert MODELS.entry("small_cnn", task="cls").origin == "built-in"
    assert "small_cnn" in MODELS.names(task="classification")


def test_timm_namespace_builds_any_timm_model() -> None:
    model = MODELS.build({"name": "timm/resnet18"}, task="classification", num_classes=3, in_chans=1)
    import torch

    assert model.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 3)
    with pytest.raises(ConfigError, match="timm has no model 'resnet181'"):
        MODELS.build({"name": "timm/resnet181"}, task="classification", num_classes=3)


def test_register_rejects_unknown_keywords_naming_them() -> None:
    reg = Registry("model")
    with pytest.raises(ConfigError, match=r"unknown keyword 'tasks'.*Did you mean 'task'.*task=.*metadata="):
        reg.register("x", lambda: 1, tasks="classification")
    with pytest.raises(ConfigError, match=r"unknown keyword 'family'"):
        reg.register("y", family="gan")  # decorator form: caught before anything is decorated
    with pytest.raises(ConfigError, match=r"metadata= must be a mapping"):
        reg.register("z", lambda: 1, metadata=["gan"])  # type: ignore[arg-type]
    assert reg.names() == []


def test_metadata_is_stored_per_entry_and_read_by_task() -> None:
    reg = Registry("model")
    reg.register("net", lambda: "g", task="generation", metadata={"family": "gan"}, aliases=["n"])
    reg.register("net", lambda: "c", task="classification", metadata={"normalize": "imagenet"})
    reg.register("plain", lambda: 1)
    assert reg.entry("net", "generation").metadata == {"family": "gan"}
    assert reg.metadata("n", "gen") == {"family": "gan"}
    assert reg.metadata("net", "classification") == {"normalize": "imagenet"}
    assert reg.metadata("plain") == {}
    reg.metadata("net", "generation")["family"] = "diffusion"  # a copy: the registry is unchanged
    assert reg.metadata("net", "generation") == {"family": "gan"}


def test_one_builder_registered_for_two_tasks_serves_both() -> None:
    from visionkit import plugins

    saved = plugins.snapshot()
    try:

        def net(num_classes: int = 2) -> str:
            return "net"

        MODELS.register("vk_two_task_net", net, task="classification")
        MODELS.register("vk_two_task_net", net, task="segmentation")
        assert MODELS.get("vk_two_task_net", "classification") is net
        assert MODELS.get("vk_two_task_net", "segmentation") is net
        MODELS.register("vk_two_task_net", net, task="segmentation")  # the same registration again: still one
        tasks = [e.tasks for e in MODELS.entries() if e.name == "vk_two_task_net"]
        assert tasks == [("classification",), ("segmentation",)]
    finally:
        plugins.restore(saved)
