"""Input walking for predict and explain: files, folders and globs, each image once, never into the output folder.

Folders and `**` globs are walked without following directory symlinks (a link back to a parent would repeat
files, or with two such links grow exponentially); a file reached twice (a symlink, a folder and a glob naming
it) is yielded once. Hidden files and folders (`.git/`, macOS's `._x.png` AppleDouble files) are skipped and
counted. The output folder is never walked, and an output folder that holds inputs is refused, so outputs can
never overwrite an input and a second run never reads the first one's pictures.
"""

from __future__ import annotations

import glob
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from visionkit.data import IMAGE_SUFFIXES, VIDEO_SUFFIXES, DataWarning
from visionkit.errors import ConfigError, DataError


def walk_inputs(
    inputs: Sequence[str | Path], out_dir: str | Path | None = None, videos: bool = False
) -> list[tuple[Path, Path]]:
    """(file, relative output path) for files, folders (recursive) and glob patterns, in a stable order; with
    `videos`, folders and globs yield video files (VIDEO_SUFFIXES) too.

    A folder's images keep their path relative to the folder; a file keeps its name. The relative paths
    are made unique (`x.png`, `x_1.png`, ...), so outputs named after them never overwrite each other.
    """
    out = Path(out_dir).resolve() if out_dir is not None else None
    pairs: list[tuple[Path, Path]] = []
    seen: set[str] = set()
    hidden = [0]
    for raw in inputs:
        item = Path(raw)
        if item.is_dir():
            _refuse_outputs_among_inputs(item, out, raw)
            found = sorted(_walk(item, out, hidden, videos))
            pairs += [(p, p.relative_to(item)) for p in found if _once(p, seen)]
        elif item.is_file():
            _refuse_outputs_among_inputs(item, out, raw)
            if _once(item, seen):
                pairs.append((item, Path(item.name)))
        elif glob.has_magic(str(raw)):
            matches = sorted(_glob(str(raw), out, hidden, videos))
            pairs += [(p, Path(p.name)) for p in matches if _once(p, seen)]
        else:
            raise DataError(f"Input '{item}' does not exist; pass image files, folders of images or glob patterns.")
    if hidden[0]:
        warnings.warn(
            f"skipped {hidden[0]} hidden file(s) or folder(s) in the inputs (names starting with '.', such as "
            "macOS's ._x.png); name them without the dot to predict on them.",
            DataWarning,
            stacklevel=2,
        )
    if not pairs:
        kinds = IMAGE_SUFFIXES + (VIDEO_SUFFIXES if videos else ())
        raise DataError(f"No images ({', '.join(kinds)}) found in {[str(i) for i in inputs]}.")
    return _unique_names(pairs)


def _refuse_outputs_among_inputs(item: Path, out: Path | None, raw: str | Path) -> None:
    """An output folder that is, or holds, an input would mix outputs with inputs: refused, naming both."""
    if out is None:
        return
    resolved = item.resolve()
    if resolved == out or out in resolved.parents:
        raise ConfigError(
            f"The output folder '{out}' holds the input '{raw}': predictions written there could overwrite inputs "
            f"and be read as inputs by the next run. Pass --out a folder outside the inputs (e.g. "
            f"'{resolved.name}_predictions' beside it, or a subfolder of it, which input walking skips)."
        )


def _once(path: Path, seen: set[str]) -> bool:
    """True the first time a file (by its real path) is met."""
    real = os.path.realpath(path)
    if real in seen:
        return False
    seen.add(real)
    return True


def _is_image(name: str, videos: bool = False) -> bool:
    suffix = Path(name).suffix.lower()
    return suffix in IMAGE_SUFFIXES or (videos and suffix in VIDEO_SUFFIXES)


def _walk(root: Path, out: Path | None, hidden: list[int], videos: bool = False) -> Iterator[Path]:
    """Image files under `root`, not following directory symlinks, skipping hidden entries and the output folder."""
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        kept = []
        for d in sorted(dirs):
            if d.startswith("."):
                hidden[0] += 1
            elif out is None or (here / d).resolve() != out:
                kept.append(d)
        dirs[:] = kept
        for name in files:
            if name.startswith("."):
                hidden[0] += _is_image(name)
            elif _is_image(name, videos) and (here / name).is_file():
                yield here / name


def _glob(pattern: str, out: Path | None, hidden: list[int], videos: bool = False) -> Iterator[Path]:
    """Files matching a glob (`**` any depth), walked from its fixed leading folder without following dir links."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    matcher = re.compile(_translate("/".join(parts[fixed:])))
    if not root.is_dir():
        return
    for path in _walk(root, out, hidden, videos):
        if matcher.fullmatch(path.relative_to(root).as_posix()):
            yield path if fixed else Path(os.path.relpath(path))


def _translate(pattern: str) -> str:
    """A glob pattern as a regular expression over '/'-separated relative paths (`**/` is zero or more folders)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def _unique_names(pairs: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """Relative output paths made unique, case-insensitively (`x`, `x_1`, ...), without their suffix."""
    used: set[str] = set()
    unique = []
    for path, rel in pairs:
        stem, n = rel.with_suffix(""), 0
        candidate = stem
        while candidate.as_posix().lower() in used:
            n += 1
            candidate = stem.with_name(f"{stem.name}_{n}")
        used.add(candidate.as_posix().lower())
        unique.append((path, candidate))
    return unique
