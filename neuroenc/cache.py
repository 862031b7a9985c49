"""Atomic writes, cache-entry locks, stale-temporary sweeps and content-addressed keys.

Everything neuroenc writes (dataset caches, feature caches, results) goes through a
temporary sibling and ``os.replace``, so an interrupted run leaves either the old file
or the new one, never half of one, and readers never see an incomplete cache entry.

Temporaries are named ``.<name>.<host>-<pid>.<random>.tmp`` so that a later run can tell
a leftover of a killed process (:func:`sweep_stale`) from the work of a live one. A cache
entry is created under a file lock (:func:`entry_lock`, the ``filelock`` package), so
two runs that need the same entry at the same time compute it once: the second waits,
then reads what the first wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_dir", "allocated_memmap", "entry_lock", "sweep_stale",
           "stable_hash", "hash_files", "write_json_atomic"]


#: A temporary left by a process that is gone is swept at once on the same host; one of
#: another host (a shared file system) or of an unknown owner only when this much older.
STALE_AFTER_S = 24 * 3600
_TMP = re.compile(r"\.(?P<name>.+?)\.(?:(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.)?"
                  r"[A-Za-z0-9_]+\.(?:tmp|old)")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0]) or "host"


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{_host()}-{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; results are for sharing
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it becomes ``path`` only on success.

    An existing ``path`` is replaced (moved aside first, then removed), so a reader
    never sees a mixture of old and new files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; shared caches are read by the group
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def entry_lock(cache_dir: str | Path, kind: str, key: str, timeout: float = -1):
    """Return a file lock (``filelock.FileLock``) guarding the creation of one cache entry.

    The lock file is ``<cache_dir>/locks/<kind>/<key>.lock``, apart from the entries so
    that a folder of entries lists entries only. Use it as ``with entry_lock(...): <check
    the entry again, create it if still missing>``. ``timeout`` is in seconds, -1 waits
    for ever. Lock files stay (a few bytes each: removing one another process waits on
    would let two processes hold "the" lock); they are created group-writable where the
    umask allows, so users sharing a cache can all take them.
    """
    from filelock import FileLock

    folder = Path(cache_dir) / "locks" / kind
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(folder / f"{key}.lock", timeout=timeout, mode=0o666 & ~_umask())


def _owner_gone(host: str | None, pid: str | None, mtime: float) -> bool | None:
    """Return True when the owner process is gone, False when it runs, None when unknown."""
    if host != _host() or pid is None:
        return None
    pid_no = int(pid)
    if pid_no == os.getpid():
        return False
    try:
        os.kill(pid_no, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    try:  # a reused pid: the live process started after the temporary was written
        return os.stat(f"/proc/{pid_no}").st_mtime > mtime + 1
    except OSError:
        return False


def sweep_stale(folder: str | Path, *, depth: int = 1, now: float | None = None) -> list[Path]:
    """Remove leftover temporaries of killed runs under ``folder``; return what was removed.

    Looks ``depth`` levels down (1: the folder's own entries) for neuroenc's temporaries
    (``.<name>.<host>-<pid>.<random>.tmp`` / ``.old``, files or folders). One is stale when
    its process is gone (same host, the pid is not running or was reused after it was
    written) or, for another host or an unnamed owner, when it is older than
    :data:`STALE_AFTER_S`. Temporaries of live processes on this host are left alone
    however old; errors (a read-only folder, a race with another sweep) are ignored.
    """
    now = time.time() if now is None else now
    removed: list[Path] = []
    folder = Path(folder)
    level = [folder]
    for _ in range(depth):
        below = []
        for parent in level:
            try:
                entries = list(os.scandir(parent))
            except OSError:
                continue
            for entry in entries:
                match = _TMP.fullmatch(entry.name)
                if match is None:
                    if entry.is_dir(follow_symlinks=False):
                        below.append(Path(entry.path))
                    continue
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                except OSError:
                    continue
                gone = _owner_gone(match["host"], match["pid"], mtime)
                if not (gone or (gone is None and now - mtime > STALE_AFTER_S)):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                    removed.append(Path(entry.path))
                except OSError:
                    pass
        level = below
    return removed


def allocated_memmap(path: str | Path, dtype, shape: tuple[int, ...]):
    """Return a new ``.npy`` file opened as a writable memmap, its blocks allocated on disk.

    ``np.lib.format.open_memmap`` makes a sparse file; on a full disk the first write to
    an unbacked page kills the process with SIGBUS. Allocating first turns that into an
    ``OSError`` (no space left) before anything is computed.
    """
    import numpy as np

    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    size = os.path.getsize(path)
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except OSError as exc:
        del out
        from neuroenc.oserrors import needs_space

        raise needs_space(exc, size, path)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def stable_hash(obj: Any, length: int = 16) -> str:
    """Return a short hex digest of a JSON-serialisable object, stable across runs."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def hash_files(paths: Iterable[str | Path], chunk_size: int = 1 << 20) -> str:
    """Return a digest of the files' contents, in order (names do not matter).

    Content, not names or modification times: a copied dataset keeps its cache, and an
    image replaced under the same name invalidates it.
    """
    digest = hashlib.sha256()
    for p in paths:
        file_digest = hashlib.sha256()
        with open(p, "rb") as fh:
            while chunk := fh.read(chunk_size):
                file_digest.update(chunk)
        digest.update(file_digest.digest())
    return digest.hexdigest()[:32]
