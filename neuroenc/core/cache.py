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
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_dir", "allocated_memmap", "entry_lock", "sweep_stale",
           "stable_hash", "file_sha256", "file_digests", "hash_files", "hash_texts", "module_digest",
           "write_json_atomic"]


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
        from neuroenc.core.oserrors import needs_space

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


# A memoised file hash is trusted only if the file was last modified this long before it
# was hashed (coarse timestamps: FAT 2 s, some network file systems 1 s).
_RACY_NS = 2_000_000_000
_HASH_THREADS = 4  # hashlib and file reads release the GIL


def file_sha256(path: str | Path) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    with open(path, "rb") as fh:
        if hasattr(hashlib, "file_digest"):  # Python >= 3.11
            return hashlib.file_digest(fh, "sha256").hexdigest()
        digest = hashlib.sha256()
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
        return digest.hexdigest()


def _index_file(index_dir: Path, folder: Path) -> Path:
    return index_dir / f"{hashlib.sha256(str(folder).encode()).hexdigest()[:20]}.json"


def _read_index(path: Path, folder: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("folder") != str(folder):
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def file_digests(paths: Sequence[str | Path], index_dir: str | Path | None = None) -> list[str]:
    """Return the hex SHA-256 of each file, memoised in ``index_dir`` where given.

    With ``index_dir``, each file's digest is kept there by (absolute path, size,
    mtime_ns, inode), one small JSON index per folder, so hashing an unchanged image set
    again only stats it. A file modified within 2 s of being hashed is never trusted
    from the memo (coarse file-system timestamps). Reads run on a few threads.
    """
    paths = [Path(p) for p in paths]
    digests: list[str | None] = [None] * len(paths)
    stats = [os.stat(p) for p in paths]
    # One resolve() per folder, not per image (it is a chain of system calls).
    resolved: dict[Path, Path] = {}
    folders = []
    for p in paths:
        if p.parent not in resolved:
            resolved[p.parent] = p.parent.resolve()
        folders.append(resolved[p.parent])
    indexes: dict[Path, dict[str, list]] = {}
    if index_dir is not None:
        index_dir = Path(index_dir)
        for i, p in enumerate(paths):
            folder = folders[i]
            if folder not in indexes:
                indexes[folder] = _read_index(_index_file(index_dir, folder), folder)
            entry = indexes[folder].get(p.name)
            st = stats[i]
            if (isinstance(entry, list) and len(entry) == 5
                    and entry[:3] == [st.st_size, st.st_mtime_ns, st.st_ino]
                    and st.st_mtime_ns < entry[3] - _RACY_NS):
                digests[i] = entry[4]
    missing = [i for i, d in enumerate(digests) if d is None]
    if missing:
        hashed_at = time.time_ns()
        with ThreadPoolExecutor(max_workers=min(_HASH_THREADS, len(missing))) as pool:
            for i, digest in zip(missing, pool.map(file_sha256, [paths[i] for i in missing])):
                digests[i] = digest
        if index_dir is not None:
            changed = set()
            for i in missing:
                st = stats[i]
                indexes[folders[i]][paths[i].name] = [st.st_size, st.st_mtime_ns, st.st_ino,
                                                      hashed_at, digests[i]]
                changed.add(folders[i])
            for folder in changed:
                try:
                    with atomic_path(_index_file(index_dir, folder)) as tmp:
                        tmp.write_text(json.dumps({"folder": str(folder),
                                                   "files": indexes[folder]},
                                                  separators=(",", ":")))
                except OSError:  # a read-only cache still gives the right key
                    pass
    return digests  # type: ignore[return-value]


def hash_files(paths: Iterable[str | Path], index_dir: str | Path | None = None) -> str:
    """Return a digest of the files' contents, in order (names do not matter).

    Content, not names or modification times: a copied dataset keeps its cache, and an
    image replaced under the same name invalidates it. ``index_dir`` memoises the
    per-file digests (:func:`file_digests`).
    """
    total = hashlib.sha256()
    for digest in file_digests(list(paths), index_dir):
        total.update(bytes.fromhex(digest))
    return total.hexdigest()[:32]


def hash_texts(texts: Iterable[str]) -> str:
    """Return a digest of the texts' exact content, in order.

    Each text is hashed on its own first, so text boundaries count:
    ``["ab", "c"]`` and ``["a", "bc"]`` differ.
    """
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return digest.hexdigest()[:32]


def module_digest(module) -> str:
    """Return the SHA-256 of a torch module's parameters and buffers (names, shapes, values).

    Independent of the device, the memory layout (channels-last) and the file the weights
    came from, so it tells whether two backbones compute the same function.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16
            value = value.float()
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()
