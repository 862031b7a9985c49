"""Image features: streamed extraction from a backbone into a memory-mapped disk cache.

Images stream through a DataLoader (workers decode and preprocess) into the backbone in
inference mode, all requested layers in one forward pass, mixed precision on CUDA; each
layer's features are written batch by batch into a ``.npy`` file opened as a memmap,
so a stimulus set larger than RAM is fine. The cache entry's key covers the backbone's
identity (model, weights, preprocessing, image size, layers, pooling) and the content
of the image set; it is written into a temporary folder and renamed into place, so an
interrupted extraction never leaves an entry that looks complete.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from neuroenc.cache import atomic_dir, hash_files, stable_hash

if TYPE_CHECKING:
    from neuroenc.context import RunContext
    from neuroenc.interfaces import ImageBackbone

__all__ = ["ImageFolderDataset", "extract_features", "feature_cache_key"]

CACHE_FORMAT = 1


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


def feature_cache_key(backbone: ImageBackbone, images: Sequence[Path]) -> tuple[str, dict]:
    """Return ``(key, description)`` of the feature cache entry for these images."""
    description = {
        "format": CACHE_FORMAT,
        "backbone": backbone.identity(),
        "n_images": len(images),
        "images_sha256": hash_files(images),
    }
    return stable_hash(description, length=24), description


def _load_entry(entry: Path) -> dict[str, np.ndarray] | None:
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    return {layer: np.load(entry / f"{i:03d}.npy", mmap_mode="r")
            for i, layer in enumerate(meta["layers"])}


def extract_features(backbone: ImageBackbone, images: Sequence[Path], context: RunContext,
                     *, description: str = "features") -> dict[str, np.ndarray]:
    """Return ``{layer: features of shape (n_images, dim)}``, memory-mapped from the cache.

    Parameters
    ----------
    backbone : ImageBackbone
    images : sequence of Path
        Image files, in the order the rows should have.
    context : RunContext
        Supplies device, batch size, workers, cache folder and progress bars.
    """
    import torch

    images = [Path(p) for p in images]
    key, key_description = feature_cache_key(backbone, images)
    entry = context.cache_dir / "features" / key
    cached = _load_entry(entry)
    if cached is not None:
        return cached

    device = torch.device(context.device)
    module = backbone.module.to(device).eval()
    loader = torch.utils.data.DataLoader(
        ImageFolderDataset(images, backbone.preprocess), batch_size=context.batch_size,
        num_workers=context.num_workers, shuffle=False, pin_memory=device.type == "cuda",
        persistent_workers=False)
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else \
        torch.autocast("cpu", enabled=False)

    with atomic_dir(entry) as tmp:
        outputs: dict[str, np.ndarray] = {}
        layers: list[str] = []
        row = 0
        with context.progress(f"{description} ({len(images)} images)", len(images)) as advance, \
                torch.inference_mode(), autocast:
            for batch in loader:
                feats = backbone.forward_features(batch.to(device, non_blocking=True))
                if not outputs:
                    layers = list(feats)
                    for i, layer in enumerate(layers):
                        dim = int(np.prod(feats[layer].shape[1:]))
                        outputs[layer] = np.lib.format.open_memmap(
                            tmp / f"{i:03d}.npy", mode="w+", dtype=np.float32,
                            shape=(len(images), dim))
                n = batch.shape[0]
                for layer in layers:
                    values = feats[layer].float().reshape(n, -1).cpu().numpy()
                    if not np.isfinite(values).all():
                        raise FloatingPointError(
                            f"backbone {backbone.identity().get('model_name', '?')} produced "
                            f"non-finite features at layer {layer!r} for images "
                            f"{images[row].name}..{images[row + n - 1].name}")
                    outputs[layer][row:row + n] = values
                row += n
                advance(n)
        for arr in outputs.values():
            arr.flush()
        del outputs
        (tmp / "meta.json").write_text(json.dumps(
            {"layers": layers, "key": key, **key_description}, indent=2, default=str))
    loaded = _load_entry(entry)
    assert loaded is not None
    return loaded
