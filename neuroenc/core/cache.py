"""Atomic writes and content-addressed cache keys.

Everything neuroenc writes (dataset caches, feature caches, results) goes through a
temporary sibling and ``os.replace``, so an interrupted run leaves either the old file
or the new one, never half of one, and readers never see an incomplete cache entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_dir", "stable_hash", "file_sha256", "file_digests", "hash_files",
           "hash_texts", "write_json_atomic"]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
