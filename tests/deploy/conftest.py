"""Deploy tests run their tiny models on one torch thread (the shared `one_thread` fixture); the serve tests share
tiny trained runs of the segmentation, instance and generation tasks (a few updates each, in process)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import visionkit
from tests.tasks.generation.test_end_to_end import TINY_GEN
from tests.tasks.instance.test_task import TINY as TINY_INST
from tests.tasks.segmentation.test_end_to_end import TINY as TINY_SEG


@pytest.fixture(autouse=True)
def _single_thread(one_thread: None) -> None:
    """Every test in tests/deploy uses one intra-op thread."""


def _train(tmp_path_factory: pytest.TempPathFactory, name: str, task: str, overrides: list[str]) -> Path:
    run = tmp_path_factory.mktemp(f"serve-{name}") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        visionkit.train(None, overrides, task=task, work_dir=run)
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.fixture(scope="session")
def seg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seg default (U-Net) with a tiny encoder, two updates on 32 px synthetic scenes."""
    return _train(tmp_path_factory, "seg", "seg", TINY_SEG)


@pytest.fixture(scope="session")
def inst_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The instance default (yolo_seg n, 8 prototypes), two updates on 48 px shapes read at 64."""
    data = [o for o in TINY_INST if o.startswith(("data.", "detection.")) and not o.startswith("data.image_size")]
    model = "model={_delete_: true, name: yolo_seg, size: n, num_protos: 8}"
    return _train(
        tmp_path_factory,
        "inst",
        "inst",
        [*data, model, "data.image_size=64", "trainer.max_steps=2", "trainer.progress=false"],
    )


@pytest.fixture(scope="session")
def gen_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class-conditional DDPM on 8 px digits, three updates, two sampling steps."""
    return _train(tmp_path_factory, "gen", "gen", TINY_GEN)
