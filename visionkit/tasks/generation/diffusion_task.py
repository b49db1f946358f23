"""Generation with a diffusion model: the denoising loss, sampler settings, and inpainting of input images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from visionkit.data import IMAGE_SUFFIXES
from visionkit.engine.contracts import StepContext
from visionkit.errors import ConfigError
from visionkit.tasks.generation.datasets import resize_square, to_model_range
from visionkit.tasks.generation.diffusion import SAMPLERS
from visionkit.tasks.generation.export import diffusion_spec
from visionkit.tasks.generation.inference import class_labels, inpaint_grid, mask_option, read_mask
from visionkit.tasks.generation.task import GenerationTask
from visionkit.tasks.generation.visualize import to_picture

SAMPLING_KEYS = ("sampler", "steps", "eta", "guidance")


class DiffusionTask(GenerationTask):
    """DDPM-style training (the model returns its noise-prediction loss); sampling and RePaint inpainting.

    Prediction without inputs samples (see `GenerationTask.sample`); with image inputs it inpaints each
    image, resized and centre-cropped to the model's size, where the `mask` option is 1.
    """

    family = "diffusion"
    sampling_keys = SAMPLING_KEYS
    predict_options: ClassVar[dict[str, Any]] = {
        **GenerationTask.predict_options,
        "sampler": None,  # null: generation.sampler (and steps, eta, guidance likewise)
        "steps": None,
        "eta": None,
        "guidance": None,
        "mask": "center",  # inpainting: a mask image (white = fill) or center | left | right | top | bottom
        "resample": 1,  # inpainting: RePaint repetitions of each step
    }

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self._inpaint: dict[str, Any] | None = None  # the running prediction's state (see `_run_state`)
        self._mask: tuple[Any, Any] = (None, None)  # (mask option and size, the mask)

    def validate(self) -> None:
        """Also check the sampler settings; a diffusion model computes its own loss."""
        super().validate()
        g = self.cfg["generation"]
        if g["sampler"] not in SAMPLERS:
            raise ConfigError(f"generation.sampler is {g['sampler']!r}; accepted: {', '.join(SAMPLERS)}.")
        if isinstance(g["guidance"], bool) or not isinstance(g["guidance"], (int, float)) or g["guidance"] < 0:
            raise ConfigError(f"generation.guidance must be a number >= 0 (1 = no guidance), got {g['guidance']!r}.")
        if self.cfg.get("loss") is not None:
            raise ConfigError("The diffusion model computes its own loss; remove 'loss' from the config (loss=null).")

    def measurement(self) -> dict[str, Any]:
        """Also the sampling settings validation used."""
        g = self.cfg["generation"]
        return {**super().measurement(), **{k: g[k] for k in ("eval_steps", "sampler", "guidance")}}

    def training_step(self, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor]:
        """The denoising loss of one batch."""
        images, labels = batch
        return {"loss": ctx.model(images, labels)}

    def sampling_options(self, overrides: dict[str, Any] | None = None, evaluation: bool = False) -> dict[str, Any]:
        """Sampler, steps (eval_steps for validation), eta and guidance from the config and `overrides`."""
        g, o = self.cfg["generation"], dict(overrides or {})
        steps = g["eval_steps"] if evaluation else g["steps"]
        opts = {
            "sampler": o.get("sampler", g["sampler"]),
            "steps": int(o.get("steps", steps)),
            "eta": float(o.get("eta", g["eta"])),
            "guidance": float(o.get("guidance", g["guidance"])),
        }
        if opts["sampler"] not in SAMPLERS:
            raise ConfigError(f"sampler is {opts['sampler']!r}; accepted: {', '.join(SAMPLERS)}.")
        if opts["sampler"] == "ddpm":
            opts["eta"] = 1.0  # ancestral sampling: the posterior variance, whatever generation.eta says
        return opts

    # -- inpainting through the core predictor ---------------------------------------------------
    def _run_state(self, model: nn.Module, options: dict[str, Any]) -> dict[str, Any]:
        """Per-prediction state (one noise generator, the label index, the mask), kept for its options dict."""
        state = self._inpaint
        if state is None or state["options"] is not options:
            overrides = {k: options[k] for k in SAMPLING_KEYS if options.get(k) is not None}
            if not hasattr(model, "inpaint"):
                raise ConfigError(f"Inpainting needs a diffusion model; this checkpoint holds {type(model).__name__}.")
            state = self._inpaint = {
                "options": options,
                "sampling": self.sampling_options(overrides),
                "generator": torch.Generator().manual_seed(int(options["seed"])),
                "done": 0,
            }
        return state

    def _size(self) -> int:
        return int(self.facts.image_size or self.cfg["data"]["image_size"])

    def read_input(self, path: Path, options: dict[str, Any]) -> Any:
        """An image and its `<name>_mask.<ext>` file when one lies beside it; mask files themselves are skipped."""
        if path.stem.endswith("_mask"):
            return None
        candidates = (path.with_name(f"{path.stem}_mask{suffix}") for suffix in (path.suffix, *IMAGE_SUFFIXES))
        sibling = next((p for p in candidates if p.is_file()), None)
        return super().read_input(path, options), sibling

    def from_frame(self, image: np.ndarray, options: dict[str, Any]) -> Any:
        """A decoded image has no mask file beside it: the `mask` option applies."""
        return image, None

    def preprocess(self, image: Any, options: dict[str, Any]) -> torch.Tensor:
        """The image resized and centre-cropped to the model's size, in [-1, 1], with the mask as last channel.

        The mask is the image's own `<name>_mask` file when present, else the `mask` option.
        """
        pixels, sibling = image
        size = self._size()
        if sibling is not None:
            mask = torch.from_numpy(read_mask(sibling, size))
        else:
            key = (str(options["mask"]), size)
            if self._mask[0] != key:
                self._mask = (key, torch.from_numpy(mask_option(options["mask"], size)))
            mask = self._mask[1]
        return torch.cat([to_model_range(resize_square(pixels, size)), mask[None]])

    def predict_batch(self, model: nn.Module, inputs: list[Any], options: dict[str, Any]) -> list[Any]:
        """Inpaint a batch (one noise generator for the whole prediction, labels cycled over all inputs)."""
        state = self._run_state(model, options)
        x = torch.stack(inputs)
        images, masks = x[:, :-1], x[:, -1:]
        labels = class_labels(model, options["labels"], len(inputs), state["done"])
        state["done"] += len(inputs)
        filled = model.inpaint(
            images,
            masks,
            labels=labels,
            generator=state["generator"],
            resample=int(options["resample"]),
            **state["sampling"],
        )
        filled, masked = filled.float().cpu(), images * (1 - masks) - masks  # the hidden region shown black
        return [
            {
                "filled": filled[i],
                "masked": masked[i],
                "fraction": float(masks[i].mean()),
                "label": None if labels is None else int(labels[i]),
            }
            for i in range(len(inputs))
        ]

    def postprocess(self, output: dict[str, Any], image: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        """The fraction of the image that was filled (and the requested class for conditional models)."""
        record: dict[str, Any] = {"masked_fraction": output["fraction"]}
        if output["label"] is not None:
            record["label"] = output["label"]
        return record

    def draw(self, image: np.ndarray, output: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        """The input with the hidden region black (`masked/`) and the filled image (`inpaint/`)."""
        return {"masked": to_picture(output["masked"]), "inpaint": to_picture(output["filled"])}  # result last

    def finish_predictions(self, records: list[dict[str, Any]], out_dir: Path, options: dict[str, Any]) -> dict:
        """inpaint_grid.png (rows: input, masked, result) and the sampling options used."""
        state = self._inpaint
        sampling = state["sampling"] if state is not None and state["options"] is options else {}
        self._inpaint, self._mask = None, (None, None)
        grid = inpaint_grid(records, Path(out_dir), self._size(), self.facts.channels)
        return {"grid": str(grid), "options": {**sampling, "mask": str(options["mask"]), "seed": options["seed"]}}

    def export_spec(self, model: nn.Module, options: Any) -> Any:
        """The network to export (denoiser); sampling stays in Python."""
        return diffusion_spec(model, options)
