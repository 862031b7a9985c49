"""One line for a failed file operation: which path, what failed, how much space.

A full disk, a read-only folder or a missing mount surfaces deep inside numpy, h5py or
torch as an ``OSError`` (sometimes with a temporary file's name); the command line turns
it into one line a user can act on, e.g.::

    /data/out/demo/20240101-120000/models/ridge/subj01/predictions.nc: cannot write: No space
    left on device (errno 28; needed 3.1 MB, 0.2 MB free on that file system)
"""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

__all__ = ["describe_os_error", "needs_space"]

_TEMPORARY = re.compile(r"\.(?P<name>.+?)\.(?:[A-Za-z0-9_-]+-\d+\.)?[A-Za-z0-9_]+\.(?:tmp|old)")
_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def needs_space(exc: OSError, n_bytes: int, path: str | Path) -> OSError:
    """Record on ``exc`` the bytes a failed write of ``path`` needed; return it (to re-raise).

    A write through a file object raises without a file name; ``path`` fills it in.
    """
    exc.neuroenc_needed_bytes = int(n_bytes)  # type: ignore[attr-defined]
    if exc.filename is None:
        exc.filename = str(path)
    return exc


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _target(filename: str) -> str:
    """Return the file a temporary stands for (``.x.nc.host-1.abc.tmp`` -> ``x.nc``)."""
    parts = [(m["name"] if (m := _TEMPORARY.fullmatch(part)) else part)
             for part in Path(filename).parts]
    return str(Path(*parts)) if parts else filename


def describe_os_error(exc: OSError) -> str:
    """Return one line: the path, the operation that failed and, for a full disk, the space."""
    filename = exc.filename if exc.filename is not None else None
    target = _target(str(filename)) if filename is not None else "(unknown path)"
    strerror = exc.strerror or str(exc) or type(exc).__name__
    verb = {errno.ENOSPC: "cannot write", errno.EDQUOT: "cannot write", errno.EFBIG: "cannot write",
            errno.EROFS: "cannot write", errno.EACCES: "permission denied for",
            errno.EPERM: "permission denied for", errno.ENOENT: "not found:",
            errno.ENOTDIR: "not a folder on the way to"}.get(exc.errno, "failed on")
    line = f"{target}: {verb.rstrip(':')}: {strerror}"
    extra = [f"errno {exc.errno}"] if exc.errno is not None else []
    if exc.errno in _SPACE:
        needed = getattr(exc, "neuroenc_needed_bytes", None)
        if needed is not None:
            extra.append(f"needed {_size(needed)}")
        folder = Path(target).parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            extra.append(f"{_size(shutil.disk_usage(folder).free)} free on that file system")
        except OSError:
            pass
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        extra.append("choose a writable output.dir / compute.cache_dir, or fix the permissions")
    if getattr(exc, "filename2", None):
        extra.append(f"and {exc.filename2}")
    return line + (f" ({'; '.join(extra)})" if extra else "")
