"""Image features: streamed extraction from a backbone into a memory-mapped disk cache.

Images stream through a DataLoader (workers decode and preprocess) into the backbone in
inference mode, all requested layers in one forward pass, mixed precision on CUDA; each
layer's features are written batch by batch into a ``.npy`` file opened as a memmap,
so a stimulus set larger than RAM is fine. On CUDA, a batch's features are copied to
pinned host memory asynchronously and written to disk while the GPU runs the next batch.
The cache entry's key covers the backbone's identity (model, weights, preprocessing,
image size, layers, pooling) and the content of the image set; it is written into a
temporary folder and renamed into place, so an interrupted extraction never leaves an
entry that looks complete.

Hashing the image set's content would reread every image on every run (a 10,000-image
NSD subject is ~1 GB). The key stays content-based, but each file's SHA-256 is memoised
in ``<cache_dir>/file-hashes/`` by (path, size, mtime_ns, inode), so a rerun only stats
the files; a file whose modification time is within 2 s of when it was hashed is hashed
again (it might have changed again within the file system's timestamp resolution, the
"racy clean" case git guards against the same way).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from neuroenc.core.cache import allocated_memmap, atomic_dir, entry_lock, hash_files, stable_hash

if TYPE_CHECKING:
    from neuroenc.core.context import RunContext
    from neuroenc.interfaces import ImageBackbone

__all__ = ["ImageFolderDataset", "extract_features", "feature_cache_key", "hash_images"]

CACHE_FORMAT = 1
#: The content digest of an image set (also memoised): :func:`neuroenc.core.cache.hash_files`.
hash_images = hash_files


class ImageFolderDataset:
    """A torch-style dataset of image files, preprocessed by ``preprocess``."""

    def __init__(self, paths: Sequence[Path], preprocess):
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.preprocess(img.convert("RGB"))


def feature_cache_key(backbone: ImageBackbone, images: Sequence[Path], *,
                      hash_index: Path | None = None) -> tuple[str, dict]:
    """Return ``(key, description)`` of the feature cache entry for these images.

    ``hash_index``: folder memoising per-file content hashes (see :func:`neuroenc.core.cache.hash_files`);
    the key is the same with or without it.
    """
    description = {
        "format": CACHE_FORMAT,
        "backbone": backbone.identity(),
        "n_images": len(images),
        "images_sha256": hash_files(images, hash_index),
    }
    return stable_hash(description, length=24), description


def _load_entry(entry: Path) -> dict[str, np.ndarray] | None:
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    return {layer: np.load(entry / f"{i:03d}.npy", mmap_mode="r")
            for i, layer in enumerate(meta["layers"])}


# --------------------------------------------------------------------------- extraction


def extract_features(backbone: ImageBackbone, images: Sequence[Path], context: RunContext,
                     *, description: str = "features") -> dict[str, np.ndarray]:
    """Return ``{layer: features of shape (n_images, dim)}``, memory-mapped from the cache.

    A backbone that returns maps (timm ``pooling: map``) gives arrays of shape
    (n_images, channels, height, width) instead, memory-mapped likewise.

    Parameters
    ----------
    backbone : ImageBackbone
    images : sequence of Path
        Image files, in the order the rows should have.
    context : RunContext
        Supplies device, batch size, workers, cache folder and progress bars.
    """
    images = [Path(p) for p in images]
    key, key_description = feature_cache_key(backbone, images,
                                             hash_index=context.cache_dir / "file-hashes")
    entry = context.cache_dir / "features" / key
    cached = _load_entry(entry)
    if cached is not None:
        return cached
    with entry_lock(context.cache_dir, "features", key):  # a second run needing this entry waits here, then reuses it
        cached = _load_entry(entry)
        if cached is not None:
            return cached
        return _extract(backbone, images, context, entry, key, key_description, description)


def _extract(backbone: ImageBackbone, images: list[Path], context: RunContext, entry: Path,
             key: str, key_description: dict, description: str) -> dict[str, np.ndarray]:
    import torch

    device = torch.device(context.device)
    cuda = device.type == "cuda"
    module = backbone.module.to(device).eval()
    # Convolutions run faster on channels-last (NHWC) tensors in oneDNN and cuDNN:
    # measured end to end on the 2-core CPU of docs/performance.md (1000 demo images,
    # 128 px), EfficientNet-Lite0 (depthwise convolutions) 4.40 s instead of 6.55 s,
    # ResNet-18 6.90 s instead of 7.00 s. Features are the same up to float rounding;
    # the module is put back in the default layout afterwards (it may be trained next).
    channels_last = any(isinstance(m, torch.nn.Conv2d) for m in module.modules())
    loader = torch.utils.data.DataLoader(
        ImageFolderDataset(images, backbone.preprocess), batch_size=context.batch_size,
        num_workers=context.num_workers, shuffle=False, pin_memory=cuda,
        persistent_workers=False)
    autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else \
        torch.autocast("cpu", enabled=False)
    model_name = backbone.identity().get("model_name", "?")

    with atomic_dir(entry) as tmp, _channels_last(module, channels_last):
        writer = _Writer(tmp, len(images), images, model_name)
        with context.progress(f"{description} ({len(images)} images)", len(images)) as advance, \
                torch.inference_mode(), autocast:
            for batch in loader:
                batch = batch.to(device, non_blocking=True)
                if channels_last and batch.ndim == 4:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                feats = backbone.forward_features(batch)
                n = batch.shape[0]
                if cuda:
                    writer.submit_cuda(feats, n)
                else:
                    writer.write(feats, n)
                advance(n)
            writer.finish()
        (tmp / "meta.json").write_text(json.dumps(
            {"layers": writer.layers, "key": key, **key_description}, indent=2, default=str))
    loaded = _load_entry(entry)
    assert loaded is not None
    return loaded


class _Writer:
    """Writes each layer's features into ``NNN.npy`` memmaps, batch by batch.

    On CUDA, all layers of a batch are concatenated on the device, checked for
    non-finite values there, and copied into one of two pinned host buffers without
    blocking; the copy is written to disk only when the next batch has been submitted,
    so the GPU never waits for the disk (one synchronisation per batch instead of one
    per layer, and no pageable-memory copies).
    """

    def __init__(self, folder: Path, n_images: int, images: list[Path], model_name: str):
        self.folder = folder
        self.n_images = n_images
        self.images = images
        self.model_name = model_name
        self.layers: list[str] = []
        self.shapes: list[tuple[int, ...]] = []
        self.dims: list[int] = []
        self.outputs: list[np.ndarray] = []
        self.row = 0
        self.pending = None
        self.buffers: list = [None, None]  # pinned host buffers, alternating (CUDA)
        self.turn = 0

    def _open(self, feats: dict) -> None:
        self.layers = list(feats)
        # Per-image shape of each layer: (dim,) for vectors and token sequences (flattened,
        # as always), (C, H, W) for maps (backbone pooling 'map'), kept in the .npy header
        # so that a map reads back as a map.
        self.shapes = [tuple(int(d) for d in f.shape[1:]) if f.ndim == 4
                       else (int(np.prod(f.shape[1:])),) for f in feats.values()]
        self.dims = [int(np.prod(shape)) for shape in self.shapes]
        for i, shape in enumerate(self.shapes):
            self.outputs.append(allocated_memmap(  # a full disk: OSError, not SIGBUS
                self.folder / f"{i:03d}.npy", dtype=np.float32, shape=(self.n_images, *shape)))

    def _non_finite(self, layer: str, row: int, n: int) -> FloatingPointError:
        return FloatingPointError(
            f"backbone {self.model_name} produced non-finite features at layer {layer!r} "
            f"for images {self.images[row].name}..{self.images[row + n - 1].name}")

    def write(self, feats: dict, n: int) -> None:
        """Write a batch computed on the CPU (views, no copies for float32 features)."""
        if not self.outputs:
            self._open(feats)
        for layer, out in zip(self.layers, self.outputs):
            values = feats[layer].reshape(n, -1)
            if values.dtype != _torch().float32:
                values = values.float()
            values = values.numpy()
            if not np.isfinite(values).all():
                raise self._non_finite(layer, self.row, n)
            out[self.row:self.row + n] = values.reshape(n, *out.shape[1:])
        self.row += n

    def submit_cuda(self, feats: dict, n: int) -> None:
        """Start copying a CUDA batch to the host; write the previous batch meanwhile."""
        torch = _torch()
        if not self.outputs:
            self._open(feats)
        flat = torch.cat([feats[layer].reshape(n, -1).float() for layer in self.layers], dim=1)
        finite = torch.isfinite(flat).all(dim=0)
        # Buffer `turn` is free: the batch that used it was written by the previous _drain.
        buffer = self.buffers[self.turn]
        if buffer is None or buffer.shape[0] < n:
            buffer = torch.empty((n, flat.shape[1]), dtype=torch.float32, pin_memory=True)
            self.buffers[self.turn] = buffer
        self.turn ^= 1
        host = buffer[:n]
        host.copy_(flat, non_blocking=True)
        finite_host = finite.to("cpu", non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._drain()
        self.pending = (host, finite_host, event, self.row, n)
        self.row += n

    def _drain(self) -> None:
        if self.pending is None:
            return
        host, finite, event, row, n = self.pending
        self.pending = None
        event.synchronize()
        values = host.numpy()
        start = 0
        finite = finite.numpy()
        for layer, dim, out in zip(self.layers, self.dims, self.outputs):
            if not finite[start:start + dim].all():
                raise self._non_finite(layer, row, n)
            out[row:row + n] = values[:, start:start + dim].reshape(n, *out.shape[1:])
            start += dim

    def finish(self) -> None:
        self._drain()
        for out in self.outputs:
            out.flush()
        self.outputs.clear()


@contextlib.contextmanager
def _channels_last(module, enabled: bool):
    """Run the block with ``module`` in channels-last layout, then restore the default."""
    if not enabled:
        yield
        return
    module.to(memory_format=_torch().channels_last)
    try:
        yield
    finally:
        module.to(memory_format=_torch().contiguous_format)


def _torch():
    import torch

    return torch
