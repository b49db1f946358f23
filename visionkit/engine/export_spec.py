"""What a task declares to be exported: the module, its named inputs and outputs, and how to check it.

The task declares the signature (`Task.export_spec`); `visionkit.deploy` exports it and checks parity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class ExportOptions:
    """What the user asked for on the export command line."""

    image_size: int | None = None  # input height/width to trace with (and the fixed size where the task fixes it)
    dynamic_batch: bool = False  # False: the batch dimension is fixed to the example's (1)
    softmax: bool = False  # classification/segmentation: export probabilities instead of logits


@dataclass
class TensorInfo:
    """One named input or output of an exported model; a str in `shape` is a dynamic axis."""

    name: str
    shape: list[int | str]
    dtype: str = "float32"
    meaning: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form, for the sidecar."""
        return dataclasses.asdict(self)


@dataclass
class CheckRow:
    """The parity check's verdict on one output."""

    output: str
    max_abs_diff: float
    tolerance: float
    passed: bool
    detail: str = ""  # where the worst difference is, or why it failed (e.g. different detection counts)


@dataclass
class ExportSpec:
    """A task's export signature: the module to trace and everything the sidecar and the check need.

    `module(*example)` returns a tensor or a tuple of tensors, one per entry of `outputs`, in order.
    `make_inputs(samples, limit)` turns up to `limit` validation samples (items of the task's validation
    dataset), or random data when `samples` is None, into input tuples for the parity check.
    `compare(reference, exported, names)` judges one input tuple's outputs; None means the dense check
    (every output within `atol`).
    """

    module: nn.Module
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    example: tuple[torch.Tensor, ...]
    make_inputs: Callable[[Sequence[Any] | None, int], list[tuple[torch.Tensor, ...]]]
    compare: Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor], Sequence[str]], list[CheckRow]] | None = None
    atol: float = 1e-4
    reads_data: bool = True  # False: the check always uses random inputs (e.g. a generator takes noise)
    notes: dict[str, Any] = field(default_factory=dict)  # extra facts for the sidecar (e.g. score threshold)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """{tensor name: {axis: axis name}} for every str entry of the input and output shapes."""
        axes: dict[str, dict[int, str]] = {}
        for info in [*self.inputs, *self.outputs]:
            named = {i: d for i, d in enumerate(info.shape) if isinstance(d, str)}
            if named:
                axes[info.name] = named
        return axes


def image_of(sample: Any) -> torch.Tensor:
    """The image tensor of a dataset sample: the sample itself, its first element, or its 'image' key."""
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(sample, dict) and "image" in sample:
        return sample["image"]
    if isinstance(sample, (list, tuple)) and sample and isinstance(sample[0], torch.Tensor):
        return sample[0]
    raise TypeError(f"Cannot find the image in a dataset sample of type {type(sample).__name__}.")


def image_spec(
    module: nn.Module,
    options: ExportOptions,
    *,
    channels: int,
    size: int,
    output: TensorInfo,
    dynamic_size: bool = False,
    spatial_output: bool = False,
    input_name: str = "images",
    input_meaning: str = "",
    notes: dict[str, Any] | None = None,
) -> ExportSpec:
    """The spec of an image-in, tensor-out model: NCHW float32 in, one output `[batch, *output.shape(, H, W)]`.

    The batch axis is fixed to 1 unless `options.dynamic_batch`; height and width are fixed to `size` unless
    `dynamic_size`. Validation images feed the check (resized to `size` when it is fixed).
    """
    batch: int | str = "batch" if options.dynamic_batch else 1
    side: list[int | str] = ["height", "width"] if dynamic_size else [size, size]
    example = torch.rand(
        2 if options.dynamic_batch else 1, channels, size, size, generator=torch.Generator().manual_seed(0)
    )

    def make_inputs(samples: Sequence[Any] | None, limit: int) -> list[tuple[torch.Tensor, ...]]:
        if samples is None:
            g = torch.Generator().manual_seed(1)
            sizes = [size, size + 8] if dynamic_size else [size]
            shapes = [(3 if options.dynamic_batch else 1, channels, s, s) for s in sizes]
            return [(torch.randn(*shape, generator=g),) for shape in shapes for _ in range(2)]
        images = [image_of(s).float() for s in samples[:limit]]
        if not dynamic_size:
            images = [_resized(x, size) for x in images]
        elif len({tuple(x.shape) for x in images}) == 1:  # exercise the dynamic height and width too
            height, width = images[0].shape[-2:]
            images.append(torch.nn.functional.interpolate(images[0][None], size=(height + 8, width + 24))[0])
        if not options.dynamic_batch:
            return [(x[None],) for x in images]
        groups: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for x in images:
            groups.setdefault(tuple(x.shape), []).append(x)
        return [(torch.stack(group),) for group in groups.values()]

    return ExportSpec(
        module=module,
        inputs=[TensorInfo(input_name, [batch, channels, *side], "float32", input_meaning)],
        outputs=[
            TensorInfo(
                output.name, [batch, *output.shape, *(side if spatial_output else [])], output.dtype, output.meaning
            )
        ],
        example=(example,),
        make_inputs=make_inputs,
        notes=notes or {},
    )


def _resized(image: torch.Tensor, size: int) -> torch.Tensor:
    """A CHW image at size x size (bilinear), unchanged when it already is."""
    if tuple(image.shape[-2:]) == (size, size):
        return image
    return torch.nn.functional.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
