"""The YOLO detector's parts against hand-worked values: assignment, box coding, letterbox, size, learning."""

from __future__ import annotations

import math

import torch

from visionkit.tasks.detection.yolo_loss import assign, decode, distribution_focal_loss, encode
from visionkit.tasks.detection.yolo_net import PAD, letterbox_batch, unletterbox, yolo


def test_task_aligned_assignment_of_two_overlapping_objects_by_hand() -> None:
    points = torch.tensor([[10.0, 10.0], [30.0, 10.0], [10.0, 30.0], [50.0, 50.0]])
    gt = torch.tensor([[0.0, 0.0, 40.0, 20.0], [0.0, 0.0, 20.0, 40.0]])  # A (class 0) and B (class 1)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 20.0], [0.0, 0.0, 40.0, 20.0], [0.0, 0.0, 20.0, 40.0], [45, 45, 55, 55]])
    scores = torch.tensor([[0.8, 0.6], [0.5, 0.1], [0.1, 0.9], [0.1, 0.1]])
    out = assign(scores, boxes, points, gt, torch.tensor([0, 1]), topk=2, alpha=1.0, beta=1.0)
    # A: p0 0.8x1, p1 0.5x1 (p2, p3 outside). B: p2 0.9x1, p0 0.6x(1/3). p0 goes to A, which it overlaps fully.
    assert out.positive.tolist() == [True, True, True, False]
    assert torch.equal(out.boxes[:3], gt[[0, 0, 1]])
    expected = torch.tensor([[1.0, 0.0], [0.625, 0.0], [0.0, 1.0], [0.0, 0.0]])  # alignment / best x best IoU
    assert torch.allclose(out.scores, expected)


def test_an_image_without_objects_has_no_positives() -> None:
    out = assign(torch.rand(5, 3), torch.rand(5, 4), torch.rand(5, 2), torch.zeros(0, 4), torch.zeros(0).long())
    assert not out.positive.any() and out.scores.abs().sum() == 0


def test_distance_coding_round_trip_and_the_focal_loss_minimum() -> None:
    reg_max, g = 16, torch.Generator().manual_seed(0)
    points = torch.rand(50, 2, generator=g) * 64 + 16
    strides = torch.full((50,), 8.0)
    boxes = torch.cat([points - torch.rand(50, 2, generator=g) * 100, points + torch.rand(50, 2, generator=g) * 100], 1)
    target = encode(boxes, points, strides, reg_max)  # distances in strides, inside [0, reg_max - 1)
    left = target.floor().long()
    probs = torch.zeros(50, 4, reg_max)
    probs.scatter_(2, left[..., None], (left + 1 - target)[..., None])
    probs.scatter_add_(2, (left + 1)[..., None], (target - left)[..., None])  # two-hot: its mean is the target
    logits = probs.clamp(min=1e-12).log()
    decoded = decode(logits.flatten(1)[None], points, strides, reg_max)[0]
    assert torch.allclose(decoded, boxes, atol=1e-3)
    best = distribution_focal_loss(logits, target)
    worse = distribution_focal_loss(logits.roll(1, dims=-1), target)
    assert (best < worse).all()


def test_letterbox_keeps_the_aspect_ratio_and_maps_boxes_back() -> None:
    image = torch.rand(3, 40, 100)
    batch, scales, offsets = letterbox_batch([image], 64)
    assert (
        batch.shape == (1, 3, 64, 64)
        and math.isclose(scales[0], 0.64, rel_tol=1e-6)
        and offsets[0].tolist() == [0.0, 19.0]
    )
    assert torch.all(batch[0, :, :19] == PAD) and torch.all(batch[0, :, 19 + 26 :] == PAD)  # grey bars, 26 rows
    box = torch.tensor([[10.0, 5.0, 50.0, 30.0]])
    squared = box * scales[0] + offsets[0].repeat(2)
    assert torch.allclose(unletterbox(squared, scales[0], offsets[0], image.shape[-2:]), box, atol=1e-5)
    assert unletterbox(torch.tensor([[-5.0, 0.0, 80.0, 64.0]]), 0.64, offsets[0], (40, 100)).tolist() == [
        [0.0, 0.0, 100.0, 40.0]
    ]  # clipped to the image


def test_the_n_size_has_about_3_2_million_parameters_at_80_classes() -> None:
    count = sum(p.numel() for p in yolo(80, image_size=640).parameters())
    assert abs(count - 3.2e6) / 3.2e6 < 0.10


def test_training_steps_fit_a_small_batch() -> None:
    torch.manual_seed(0)
    model = yolo(2, image_size=64, size="n")
    g = torch.Generator().manual_seed(1)
    images, targets = [], []
    for i in range(8):  # a 20 px square of class i % 2, drawn in channel i % 2, on a 64x48 image
        x, y = int(torch.randint(0, 40, (1,), generator=g)), int(torch.randint(0, 24, (1,), generator=g))
        image = torch.zeros(3, 48, 64)
        image[i % 2, y : y + 20, x : x + 20] = 1.0
        images.append(image)
        targets.append({"boxes": torch.tensor([[x, y, x + 20, y + 20]]).float(), "labels": torch.tensor([i % 2])})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(80):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # The loss is normalised by the soft targets, which grow as the boxes fit, so its first steps rise; then it falls.
    assert sum(losses[-10:]) < 0.7 * sum(losses[15:25])
    model.eval()
    with torch.no_grad():
        found = model(images)
    assert all(f["boxes"].shape[1] == 4 and (f["boxes"][:, 2:] <= torch.tensor([64.0, 48.0])).all() for f in found)


def test_a_timm_csp_trunk_replaces_the_own_backbone() -> None:
    torch.manual_seed(0)
    model = yolo(3, image_size=64, backbone="timm/cspnext_tiny")
    assert model.backbone.channels == [96, 192, 384]  # its stride 8, 16 and 32 stages feed the neck
    target = {"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([1])}
    losses = model([torch.rand(3, 64, 48)], [target])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    first = next(model.backbone.body.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0  # the trunk trains end to end
    with torch.no_grad():
        (found,) = model.eval()([torch.rand(3, 50, 70)])
    assert len(found["boxes"]) and float(found["boxes"][:, 2].max()) <= 70  # in the input image
