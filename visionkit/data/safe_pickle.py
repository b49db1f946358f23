"""Reading pickled dataset files (CIFAR's batches) without letting them run code."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from visionkit.errors import DataError

# The only globals a CIFAR batch (plain containers plus numpy arrays) needs to be rebuilt.
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain containers and numpy arrays and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        """Allow numpy's array reconstruction only."""
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks for the global {module}.{name}")


def load_pickle(path: str | Path, what: str) -> Any:
    """Unpickle a data file allowing only containers, numbers, strings, bytes and numpy arrays."""
    try:
        with open(path, "rb") as fh:
            return _RestrictedUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(
            f"{what} '{path}' is not a plain data pickle ({exc}); visionkit reads only containers and numpy arrays "
            "from dataset files and never runs code from them. Re-extract the original dataset archive."
        ) from None
