"""Is a run sized for this machine? Warnings before training (warm-up longer than the run, images upscaled
far beyond their size) and an estimate of the whole run's time from measured steps."""

from __future__ import annotations

import statistics
import time
from typing import Any

UPSCALE_LIMIT = 2.0  # data.image_size above this multiple of the images' typical longest side is warned about
ESTIMATE_AFTER = 5  # updates timed (after an epoch's first, which pays for warm-up) before the estimate


def typical_side(dataset: Any) -> float | None:
    """The median longest side (pixels) of a dataset's source images, where its records tell (detection data)."""
    records = getattr(dataset, "records", None)
    if not records:
        return None
    sides = [max(r.width, r.height) for r in records if getattr(r, "width", None) and getattr(r, "height", None)]
    return float(statistics.median(sides)) if sides else None


def sizing_warnings(cfg: dict[str, Any], total_updates: int, train_set: Any) -> list[str]:
    """One paragraph per sizing problem: warm-up >= the run's updates; image_size upscaling the images > 2x."""
    found = []
    warmup = int((cfg.get("scheduler") or {}).get("warmup_steps") or 0)
    if warmup and warmup >= total_updates:
        found.append(
            f"scheduler.warmup_steps is {warmup} but the run has {total_updates} updates: the learning rate never "
            f"leaves its warm-up. Use about a tenth of the updates, e.g. scheduler.warmup_steps="
            f"{max(total_updates // 10, 1)}."
        )
    size, side = (cfg.get("data") or {}).get("image_size"), typical_side(train_set)
    if isinstance(size, (int, float)) and side and size > UPSCALE_LIMIT * side:
        found.append(
            f"data.image_size is {size} but the training images' longest side is {side:g} px (median): each is "
            f"upscaled {size / side:.1f}x, about {(size / side) ** 2:.0f}x the pixels to compute for no detail "
            f"gained. Train near the images' size, e.g. data.image_size={nearest_multiple(side)}."
        )
    return found


def nearest_multiple(side: float, step: int = 32) -> int:
    """The multiple of `step` at or above `side` (detectors' strides need one), at least `step`."""
    return max(step, int(-(-side // step)) * step)


def duration(seconds: float) -> str:
    """'2 h 05 min', '7 min 30 s', '42 s' or 'under 1 s'."""
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.0f} s" if seconds >= 1 else "under 1 s"


def estimate_line(seconds_per_update: float, updates_left: int, measured: int) -> str:
    """The estimate printed once training has timed a few updates."""
    left = duration(seconds_per_update * updates_left)
    return (
        f"estimate: {seconds_per_update:.3g} s per update over {measured} updates; the {updates_left} left take "
        f"{'' if left.startswith('under') else 'about '}{left}, validation passes not included"
    )


class RunClock:
    """Times an epoch's updates 2..6 and, once per process, gives the estimate of the rest of the run."""

    def __init__(self) -> None:
        self.start, self.done = 0.0, False

    def tick(self, updates_this_epoch: int, step: int, planned: int) -> str | None:
        """Call after each update; returns the estimate line once, when it has been measured."""
        if self.done:
            return None
        if updates_this_epoch == 1:
            self.start = time.perf_counter()
            return None
        if updates_this_epoch < 1 + ESTIMATE_AFTER:
            return None
        self.done = True
        left = planned - step
        if left <= ESTIMATE_AFTER:
            return None
        return estimate_line((time.perf_counter() - self.start) / ESTIMATE_AFTER, left, ESTIMATE_AFTER)
