"""The YOLO prototype-mask model: box-cropped, area-normalised mask loss; it learns a mask; its outputs map
back through the letterbox; the instance task trains it end to end."""

from __future__ import annotations

import pytest
import torch

import visionkit
from tests.tasks.instance.test_task import TINY, check_export_and_onnx_predict
from visionkit.tasks.detection.yolo_loss import Assignment
from visionkit.tasks.instance.yolo_seg import box_crop, mask_loss, yolo_seg


def test_mask_loss_counts_only_pixels_inside_the_box_per_unit_area() -> None:
    protos = torch.zeros(1, 1, 8, 8)
    protos[0, 0, :, 4:] = 10.0  # a prototype that is "on" in the right half
    masks = [torch.zeros(1, 32, 32)]  # letterbox pixels; prototypes at stride 4
    masks[0][0, :, 16:] = 1.0
    positive = torch.tensor([True])
    box = torch.tensor([[8.0, 0.0, 24.0, 32.0]])  # 4 cells wide at stride 4: two off, two on
    good = Assignment(torch.zeros(1, 1), box, positive, torch.tensor([0]))
    loss_good = mask_loss(torch.tensor([[[1.0]]]), protos, [good], masks, 4)
    loss_bad = mask_loss(torch.tensor([[[-1.0]]]), protos, [good], masks, 4)
    assert loss_good < loss_bad
    assert box_crop(box / 4, 8, 8).sum() == 4 * 8
    outside = protos.clone()
    outside[0, 0, :, :2] = -50.0  # wrong far outside the box: not counted
    assert torch.isclose(mask_loss(torch.tensor([[[1.0]]]), outside, [good], masks, 4), loss_good)


def test_it_learns_a_mask_and_maps_it_back_to_the_image() -> None:
    torch.manual_seed(0)
    model = yolo_seg(2, image_size=64, num_protos=8)
    image = torch.full((3, 48, 64), 0.2)
    image[:, 10:30, 20:44] = 0.9
    mask = torch.zeros(1, 48, 64)
    mask[0, 10:30, 20:44] = 1.0
    target = {"boxes": torch.tensor([[20.0, 10.0, 44.0, 30.0]]), "labels": torch.tensor([1]), "masks": mask}
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    first = None
    for _ in range(60):
        losses = model([image], [target])
        first = first if first is not None else float(losses["loss_mask"].detach())
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert float(losses["loss_mask"].detach()) < 0.5 * first
    model.eval()
    with torch.no_grad():
        (found,) = model([image])
    assert found["masks"].shape[1:] == (1, 48, 64) and len(found["masks"]) == len(found["boxes"])
    # The geometry on its own: a prototype lit on letterbox rows 16-36 / columns 20-44 (stride-4 cells 4-8 and
    # 5-10) comes back on image rows 8-28 / columns 20-44 (the letterbox's grey bar is 8 rows high).
    protos = torch.full((1, 16, 16), -20.0)
    protos[0, 4:9, 5:11] = 20.0
    box = torch.tensor([[20.0, 16.0, 44.0, 36.0]])  # letterbox pixels
    back = model._masks(torch.ones(1, 1), protos, box, torch.tensor(1.0), torch.tensor([0.0, 8.0]), image)[0, 0] > 0.5
    expected = torch.zeros(48, 64, dtype=torch.bool)
    expected[8:28, 20:44] = True
    inter, union = (back & expected).sum(), (back | expected).sum()
    assert inter / union > 0.9


def test_the_instance_task_trains_it(tmp_path) -> None:
    model = "model={_delete_: true, name: yolo_seg, size: n, num_protos: 8}"
    overrides = [o for o in TINY if not o.startswith(("model.", "data.image_size"))] + [model, "data.image_size=64"]
    result = visionkit.train(None, overrides, task="inst", work_dir=tmp_path / "run")
    assert "val/mask_mAP" in result.summary["final"] and "val/box_mAP" in result.summary["final"]
    check_export_and_onnx_predict(tmp_path / "run", tmp_path)


def test_a_mistyped_option_is_named_with_the_accepted_ones() -> None:
    from visionkit.errors import ConfigError

    with pytest.raises(ConfigError, match="no option 'mask_strid'.*Did you mean 'mask_stride'"):
        yolo_seg(2, image_size=64, mask_strid=2)
