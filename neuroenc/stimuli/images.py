"""Checking stimulus images before anything is computed from them.

A zero-byte, truncated or corrupt image used to fail half-way through feature extraction
(or, for a test image, only after the fit) with a long traceback. :func:`check_images`
opens every file with Pillow, reads its header and size, and runs ``verify()`` (for PNG:
every chunk's CRC and the end of the file, without decoding the pixels), in threads;
:func:`require_valid_images` raises one error listing every bad file. Files found good
are memoised by (size, mtime_ns, inode) under ``<cache_dir>/image-checks/``, one small
JSON per folder, so a rerun only stats them (the content-hash memo of
:mod:`neuroenc.stimuli.features` works the same way).

Limits: ``verify()`` checks structure, not pixels; a PNG whose compressed data is wrong
but whose CRCs were recomputed to match passes, and fails at decoding.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["check_image", "check_images", "require_valid_images"]

_THREADS = 4  # file reads and zlib-free CRC checks release the GIL often enough
_RACY_NS = 2_000_000_000  # as in neuroenc.stimuli.features: trust a memo only for settled files


def check_image(path: str | Path) -> str | None:
    """Return why ``path`` is not a readable image, or None when it is."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if size == 0:
        return "empty file (0 bytes)"
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width == 0 or height == 0:
                return f"image of size {width}x{height}"
            img.verify()
    except UnidentifiedImageError:
        return f"not an image Pillow can read ({size} bytes)"
    except OSError as exc:  # includes Pillow's "Truncated File Read"
        return f"truncated or unreadable ({exc}; {size} bytes)"
    except (SyntaxError, ValueError, EOFError) as exc:  # Pillow reports bad chunks as SyntaxError
        return f"corrupt ({exc})"
    return None


def _memo_file(memo_dir: Path, folder: Path) -> Path:
    return memo_dir / f"{hashlib.sha256(str(folder).encode()).hexdigest()[:20]}.json"


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def check_images(paths: Sequence[str | Path], memo_dir: str | Path | None = None
                 ) -> list[tuple[Path, str]]:
    """Return ``(path, reason)`` for every image in ``paths`` that cannot be read.

    Parameters
    ----------
    paths : sequence of path
    memo_dir : path, optional
        Folder memoising files found good, so that unchanged files are not read again.
    """
    paths = [Path(p) for p in paths]
    todo = list(range(len(paths)))
    memos: dict[Path, dict[str, list[int]]] = {}
    stats: dict[int, os.stat_result] = {}
    if memo_dir is not None:
        memo_dir = Path(memo_dir)
        todo = []
        for i, path in enumerate(paths):
            folder = path.parent.resolve()
            if folder not in memos:
                try:
                    memos[folder] = json.loads(_memo_file(memo_dir, folder).read_text())["files"]
                except (OSError, ValueError, KeyError, TypeError):
                    memos[folder] = {}
            try:
                stats[i] = path.stat()
            except OSError:
                todo.append(i)
                continue
            if memos[folder].get(path.name) != _stat_key(stats[i]):
                todo.append(i)
    bad: list[tuple[Path, str]] = []
    checked_at = time.time_ns()
    with ThreadPoolExecutor(max_workers=max(1, min(_THREADS, len(todo)))) as pool:
        reasons = list(pool.map(check_image, [paths[i] for i in todo]))
    changed = set()
    for i, reason in zip(todo, reasons):
        if reason is not None:
            bad.append((paths[i], reason))
        elif memo_dir is not None and i in stats and stats[i].st_mtime_ns < checked_at - _RACY_NS:
            folder = paths[i].parent.resolve()
            memos[folder][paths[i].name] = _stat_key(stats[i])
            changed.add(folder)
    for folder in changed:
        from neuroenc.core.cache import write_json_atomic

        try:
            write_json_atomic(_memo_file(memo_dir, folder),  # type: ignore[arg-type]
                              {"folder": str(folder), "files": memos[folder]})
        except OSError:  # a read-only cache: the check still ran
            pass
    return sorted(bad, key=lambda item: str(item[0]))


def require_valid_images(paths: Sequence[str | Path], *, root: str | Path | None = None,
                         memo_dir: str | Path | None = None, what: str = "images") -> None:
    """Check every image; raise one error listing every bad file (path relative to ``root``).

    Raises
    ------
    neuroenc.data.subject.DatasetError
        ``<n> of <total> images cannot be read`` and one line per bad file:
        ``subj01/training_split/training_images/train-0003_nsd-00012.png: empty file (0 bytes)``.
    """
    from neuroenc.data.subject import DatasetError

    bad = check_images(paths, memo_dir)
    if not bad:
        return
    lines = []
    for path, reason in bad:
        shown = str(path)
        if root is not None:
            try:
                shown = path.relative_to(root).as_posix()
            except ValueError:
                pass
        lines.append(f"  {shown}: {reason}")
    raise DatasetError(f"{len(bad)} of {len(paths)} {what} cannot be read (nothing was computed "
                       "from them yet); replace them from the dataset release:\n"
                       + "\n".join(lines))
