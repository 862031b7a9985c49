"""Image captions: a resumable, content-addressed disk cache around any captioner.

Captioning with a vision-language LLM takes seconds per image, so a stimulus set of
10,000 images takes hours; a crash or a pre-empted GPU job must not throw that away.
The cache here therefore differs from the feature cache (:mod:`neuroenc.stimuli.features`),
which writes a whole entry at once: it appends.

Layout under ``<cache_dir>/captions/<key>/``, where ``key`` hashes the captioner's
``identity()`` (model, weights, prompt, every generation setting)::

    meta.json                       the identity the key was computed from
    shard-<time>-<pid>-<rand>.jsonl one JSON object a line:
                                    {"sha256": ..., "caption": ..., "image": ...}

* Entries are keyed by the SHA-256 of the image file's bytes, so identical images (the
  ~1,000 NSD images all eight subjects saw, a copied dataset) are captioned once.
* Each run appends to a shard of its own (created exclusively), so concurrent runs never
  interleave lines, and a line torn by a crash stays the last line of a shard no one
  writes to again.
* Lines are written a batch at a time, then flushed and fsync'ed: a crash loses at most
  the batch in flight. On reading, a truncated last line of a shard is ignored.
* A run that stopped halfway resumes: only images whose hash is missing are captioned.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neuroenc.core.cache import entry_lock, file_digests, file_sha256, stable_hash, write_json_atomic

if TYPE_CHECKING:
    from neuroenc.core.context import RunContext
    from neuroenc.interfaces import Captioner

__all__ = ["caption_images", "caption_cache_key", "caption_cache_dir", "read_caption_cache",
           "image_sha256", "CaptionCacheWarning"]

#: Version of the on-disk format; part of the key, so a change starts a fresh entry.
CACHE_FORMAT = 1


class CaptionCacheWarning(UserWarning):
    """A caption cache line was unreadable and will be captioned again."""


#: The cache key of one image's caption: the SHA-256 of its bytes.
image_sha256 = file_sha256


def _identity(captioner: Captioner) -> dict[str, Any]:
    identity = captioner.identity()
    if not isinstance(identity, dict):
        raise TypeError(f"captioner {type(captioner).__name__}: identity() returned "
                        f"{type(identity).__name__}; expected a dict of everything that changes "
                        "its captions")
    return identity


def caption_cache_key(captioner: Captioner) -> tuple[str, dict[str, Any]]:
    """Return ``(key, description)`` of a captioner's cache entry.

    The key depends on the captioner's ``identity()`` only, not on the images: every
    image set captioned by the same captioner shares one entry.
    """
    description = {"format": CACHE_FORMAT, "captioner": _identity(captioner)}
    return stable_hash(description, length=24), description


def caption_cache_dir(captioner: Captioner, cache_dir: str | Path) -> Path:
    """Return the folder holding ``captioner``'s cached captions under ``cache_dir``."""
    key, _ = caption_cache_key(captioner)
    return Path(cache_dir) / "captions" / key


def _captioner_name(captioner: Captioner, identity: dict[str, Any] | None = None) -> str:
    component = (identity or {}).get("component")
    kind = type(captioner).__name__
    return f"{component!r} ({kind})" if component else kind


def read_caption_cache(entry: str | Path) -> dict[str, str]:
    """Return ``{image sha256: caption}`` from every shard of a cache entry.

    A truncated or unparsable *last* line of a shard is what a crash mid-write leaves and
    is skipped silently; an unreadable line elsewhere is skipped with a
    :class:`CaptionCacheWarning` (its image is captioned again). When two shards hold
    the same image (two runs raced), the older shard wins.
    """
    captions: dict[str, str] = {}
    for shard in sorted(Path(entry).glob("shard-*.jsonl")):
        with open(shard, "rb") as fh:
            lines = fh.read().split(b"\n")
        # A complete file ends with "\n", so the final element is b""; anything else there
        # is a line whose write was cut short.
        last = len(lines) - 1
        for number, raw in enumerate(lines):
            if not raw.strip():
                continue
            record = _parse_line(raw)
            if record is None:
                if number != last:
                    warnings.warn(f"{shard}: line {number + 1} is not a caption record; its image "
                                  "will be captioned again", CaptionCacheWarning, stacklevel=2)
                continue
            if number == last:
                continue  # no trailing newline: the fsync did not complete; distrust it
            captions.setdefault(record["sha256"], record["caption"])
    return captions


def _parse_line(raw: bytes) -> dict[str, str] | None:
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if (not isinstance(record, dict) or not isinstance(record.get("sha256"), str)
            or not isinstance(record.get("caption"), str)):
        return None
    return record


def _check_output(captioner: Captioner, identity: dict, output: Any, batch: Sequence[Path]) -> list[str]:
    name = _captioner_name(captioner, identity)
    if not isinstance(output, (list, tuple)):
        raise TypeError(f"captioner {name}: caption() returned {type(output).__name__}; expected "
                        f"a list of {len(batch)} strings, one per image")
    if len(output) != len(batch):
        raise ValueError(f"captioner {name}: caption() returned {len(output)} captions for "
                         f"{len(batch)} images ({batch[0].name} .. {batch[-1].name}); expected one "
                         "per image")
    for image, text in zip(batch, output):
        if not isinstance(text, str):
            raise TypeError(f"captioner {name}: the caption of {image} is "
                            f"{type(text).__name__} ({text!r:.60}); expected str")
    return list(output)


def _new_shard(entry: Path):
    name = f"shard-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
    # "x": exclusive creation, so two runs can never share (and interleave) a shard
    return open(entry / name, "x", encoding="utf-8", newline="\n")


def caption_images(captioner: Captioner, images: Sequence[str | Path], context: RunContext,
                   *, description: str = "captions") -> list[str]:
    """Return one caption per image, captioning only images not yet in the cache.

    Parameters
    ----------
    captioner : Captioner
        Anything with ``caption(images) -> list[str]`` and ``identity() -> dict``.
    images : sequence of Path, length n_images
        Image files. Identical files (same bytes) are captioned once.
    context : RunContext
        Supplies the cache folder (``cache_dir / "captions"``), the number of images per
        ``caption()`` call and per durable write (``batch_size``) and progress bars.
    description : str
        Label of the progress bar.

    Returns
    -------
    captions : list of str, length n_images
        In the order of ``images``.

    Raises
    ------
    TypeError, ValueError
        When the captioner returns anything but one string per image; the batches
        written before stay in the cache.
    """
    images = [Path(p) for p in images]
    if not images:
        return []
    key, key_description = caption_cache_key(captioner)
    identity = key_description["captioner"]
    entry = Path(context.cache_dir) / "captions" / key
    entry.mkdir(parents=True, exist_ok=True)
    if not (entry / "meta.json").is_file():
        write_json_atomic(entry / "meta.json", {"key": key, **key_description})

    hashes = file_digests(images, Path(context.cache_dir) / "file-hashes")
    cached = read_caption_cache(entry)
    missing = _missing(hashes, images, cached)
    if not missing:
        return [cached[digest] for digest in hashes]
    # Two runs captioning the same images wait for each other and caption them once; runs
    # on other images (another subject) take another lock and go on in parallel.
    images_key = stable_hash(sorted(missing), length=24)
    with entry_lock(context.cache_dir, "captions", f"{key}-{images_key}"):
        cached = read_caption_cache(entry)
        missing = _missing(hashes, images, cached)
        _caption_missing(captioner, identity, missing, cached, entry, context, description,
                         len(set(hashes)))
    return [cached[digest] for digest in hashes]


def _missing(hashes: list[str], images: list[Path], cached: dict[str, str]) -> dict[str, Path]:
    """Return the first image with each hash not in ``cached``, in input order."""
    missing: dict[str, Path] = {}
    for digest, path in zip(hashes, images):
        if digest not in cached and digest not in missing:
            missing[digest] = path
    return missing


def _caption_missing(captioner, identity, missing: dict[str, Path], cached: dict[str, str],
                     entry: Path, context, description: str, n_distinct: int) -> None:
    if missing:
        todo = list(missing.items())
        batch_size = max(1, int(context.batch_size))
        label = f"{description} ({len(todo)} of {n_distinct} distinct images)"
        shard = None  # opened on the first finished batch: a run that fails at once leaves no file
        try:
            with context.progress(label, len(todo)) as advance:
                for start in range(0, len(todo), batch_size):
                    chunk = todo[start:start + batch_size]
                    paths = [path for _, path in chunk]
                    texts = _check_output(captioner, identity, captioner.caption(paths), paths)
                    if shard is None:
                        shard = _new_shard(entry)
                    # one write per batch, then flush + fsync: after a crash the shard holds
                    # whole earlier batches and at most one torn last line
                    shard.write("".join(
                        json.dumps({"sha256": digest, "caption": text, "image": path.name}) + "\n"
                        for (digest, path), text in zip(chunk, texts)))
                    shard.flush()
                    os.fsync(shard.fileno())
                    cached.update((digest, text) for (digest, _), text in zip(chunk, texts))
                    advance(len(chunk))
        finally:
            if shard is not None:
                shard.close()
