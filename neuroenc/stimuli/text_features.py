"""Text embeddings: batched encoding of captions into a memory-mapped disk cache.

The design mirrors :mod:`neuroenc.stimuli.features`. A cache entry's key covers the text
encoder's identity (model, weights, tokenisation and long-text strategy,
normalisation, precision) and the exact texts, in order; the entry is written into a
temporary folder and renamed into place, so an interrupted encoding never leaves an
entry that looks complete. Each batch is checked as it arrives: a text encoder that
returns the wrong shape or a non-finite value is named in the error, with the texts
it failed on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neuroenc.core.cache import allocated_memmap, atomic_dir, entry_lock, hash_texts, stable_hash

if TYPE_CHECKING:
    from neuroenc.core.context import RunContext
    from neuroenc.interfaces import TextEncoder

__all__ = ["encode_texts", "encoder_label", "hash_texts", "text_cache_key"]

CACHE_FORMAT = 1
CACHE_FOLDER = "text-embeddings"
EMBEDDINGS_FILE = "embeddings.npy"


def text_cache_key(encoder: TextEncoder, texts: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """Return ``(key, description)`` of the text-embedding cache entry for these texts."""
    description = {
        "format": CACHE_FORMAT,
        "encoder": encoder.identity(),
        "n_texts": len(texts),
        "texts_sha256": hash_texts(texts),
    }
    return stable_hash(description, length=24), description


def encoder_label(encoder: TextEncoder) -> str:
    """Return a short name of a text encoder for messages, e.g. ``clip (ViT-L-14)``."""
    try:
        ident = encoder.identity()
    except Exception:  # a label must never hide the error it is part of
        ident = {}
    name = ident.get("component") or type(encoder).__name__
    model = ident.get("model_name") or ident.get("model")
    return f"{name} ({model})" if model else str(name)


def _load_entry(entry: Path) -> np.ndarray | None:
    # meta.json is written last inside the temporary folder, so its presence (after the
    # atomic rename) means the entry is complete.
    if not (entry / "meta.json").is_file():
        return None
    return np.load(entry / EMBEDDINGS_FILE, mmap_mode="r")


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts: expected a sequence of strings, got one string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}]: expected a string, got {type(text).__name__} "
                            f"({text!r:.60})")
    return texts


def _check_batch(values: Any, batch: list[str], start: int, dim: int | None,
                 encoder: TextEncoder) -> np.ndarray:
    """Return the encoder's output for one batch as float32, or raise naming the encoder."""
    label = encoder_label(encoder)
    where = f"texts {start}..{start + len(batch) - 1}"
    try:
        values = np.asarray(values)
    except Exception as exc:
        raise TypeError(f"text encoder {label}: encode() returned {type(values).__name__}, "
                        f"expected an array of shape (n_texts, dim) ({where})") from exc
    if values.ndim != 2 or values.shape[0] != len(batch):
        raise ValueError(f"text encoder {label}: encode() returned shape {values.shape} for "
                         f"{len(batch)} texts, expected ({len(batch)}, dim) ({where})")
    if dim is not None and values.shape[1] != dim:
        raise ValueError(f"text encoder {label}: encode() returned dim {values.shape[1]}, "
                         f"expected {dim} ({where})")
    if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
        raise TypeError(f"text encoder {label}: encode() returned dtype {values.dtype}, "
                        f"expected real floats ({where})")
    values = values.astype(np.float32, copy=False)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise FloatingPointError(
            f"text encoder {label}: non-finite embeddings for {int(bad.sum())} of "
            f"{len(batch)} texts ({where}), first text {start + first}: "
            f"{batch[first]!r:.80}")
    return values


def encode_texts(encoder: TextEncoder, texts: Sequence[str], context: RunContext, *,
                 description: str = "text embeddings") -> np.ndarray:
    """Return the texts' embeddings, shape (n_texts, dim), float32, memory-mapped from the cache.

    Parameters
    ----------
    encoder : TextEncoder
        A built text encoder: ``encode(texts)`` -> array of shape (n_texts, dim) and
        ``identity()`` for the cache key (an attribute ``dim`` is checked when present).
    texts : sequence of str
        The texts, in the order the rows should have (e.g. one caption per image).
    context : RunContext
        Supplies the batch size (texts per ``encode`` call), cache folder and progress
        bars.
    description : str
        Progress-bar label.

    Returns
    -------
    embeddings : ndarray of shape (n_texts, dim), float32
        Read-only memory map of ``<cache_dir>/text-embeddings/<key>/embeddings.npy``.
        The key covers ``encoder.identity()`` and the exact texts in order, so a changed
        caption, order or encoder setting is a new entry.

    Raises
    ------
    TypeError, ValueError, FloatingPointError
        A text is not a string, or the encoder returned the wrong shape or type, a dim
        other than its ``dim`` attribute or earlier batches, or NaN / inf; the message
        names the encoder and the texts of the failing batch. Nothing is cached then.
    """
    texts = _check_texts(texts)
    expected_dim = getattr(encoder, "dim", None)
    if not texts:
        # Nothing to embed and nothing worth caching; the width still has to be right.
        if expected_dim is None:
            raise ValueError(f"text encoder {encoder_label(encoder)}: no texts, and the "
                             "encoder has no 'dim' attribute to size an empty result")
        return np.zeros((0, int(expected_dim)), np.float32)

    key, key_description = text_cache_key(encoder, texts)
    entry = context.cache_dir / CACHE_FOLDER / key
    cached = _load_entry(entry)
    if cached is not None:
        return cached
    with entry_lock(context.cache_dir, CACHE_FOLDER, key):  # a second run needing this entry waits here, then reuses it
        cached = _load_entry(entry)
        if cached is not None:
            return cached
        return _embed(encoder, texts, context, entry, key, key_description, expected_dim,
                      description)


def _embed(encoder, texts: list[str], context: RunContext, entry: Path, key: str,
           key_description: dict, expected_dim, description: str) -> np.ndarray:
    batch_size = max(1, int(context.batch_size))
    with atomic_dir(entry) as tmp:
        out: np.ndarray | None = None
        dim = None if expected_dim is None else int(expected_dim)
        with context.progress(f"{description} ({len(texts)} texts)", len(texts)) as advance:
            for start in range(0, len(texts), batch_size):
                batch = texts[start:start + batch_size]
                values = _check_batch(encoder.encode(batch), batch, start, dim, encoder)
                if out is None:
                    dim = values.shape[1]
                    # Written batch by batch into a memmap: a large caption set need not
                    # fit in RAM twice.
                    out = allocated_memmap(tmp / EMBEDDINGS_FILE, dtype=np.float32,
                                           shape=(len(texts), dim))
                out[start:start + len(batch)] = values
                advance(len(batch))
        assert out is not None
        out.flush()
        del out
        (tmp / "meta.json").write_text(json.dumps(
            {"key": key, "dim": dim, **key_description}, indent=2, sort_keys=True, default=str))
    loaded = _load_entry(entry)
    assert loaded is not None
    return loaded
