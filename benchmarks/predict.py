"""Prediction throughput of a saved encoder against the bare backbone forward pass.

A ridge-type encoder of Algonauts size (39,548 vertices by default; random weights, since
only the shapes matter for speed) on the demo backbone is saved into a run-like folder
and loaded with :func:`neuroenc.load_encoder`; on the same images:

1. bare forward: images decoded and preprocessed beforehand (not timed), then only
   ``backbone.forward_features`` in batches (inference mode, channels-last for CNNs, as
   neuroenc runs them; float16 autocast on CUDA);
2. bare forward + readout: the same plus the ``features @ coef + intercept`` matmul, the
   work any linear encoder must do;
3. ``Encoder.predict``: decode + preprocess in the DataLoader, forward, readout, copy to
   host, an xarray DataArray at the end;
4. ``Encoder.predict_to_file``: the same streamed to a netCDF file batch by batch (what
   ``neuroenc predict`` does).

Also prints the encoder's size on disk in float32 and float16.

    python benchmarks/predict.py                                  # CPU, demo backbone
    python benchmarks/predict.py --device cuda --n-images 4096 --batch-size 128
    python benchmarks/predict.py --n-vertices 4000                # a small subject
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from features import BACKBONES, demo_images, make_images


def _save_encoder(run_dir: Path, backbone_params: dict, n_vertices: int, seed: int,
                  dtype: str) -> int:
    """Save a linear encoder with random weights on this backbone; return its size in bytes."""
    from neuroenc.core.config import ComponentRef
    from neuroenc.core.context import RunContext, seed_everything
    from neuroenc.core.encoders import backbone_record, save_part_encoder
    from neuroenc.core.plugins import PluginManager

    ref = ComponentRef(name="timm", **backbone_params)
    seed_everything(seed)  # as the runner does before it builds a recipe
    context = RunContext(manager=PluginManager(), cache_dir=run_dir / "cache", show_progress=False)
    backbone = context.build("image_backbone", ref)
    import torch

    from PIL import Image
    with torch.inference_mode():
        probe = backbone.forward_features(backbone.preprocess(Image.new("RGB", (64, 64)))[None])
    n_features = sum(int(np.prod(f.shape[1:])) for f in probe.values())
    rng = np.random.default_rng(seed)

    class Fitted:
        def state(self):
            return ({"coef": rng.standard_normal((n_features, n_vertices), dtype=np.float32) * 0.01,
                     "intercept": np.zeros(n_vertices, np.float32)},
                    {"readout": "linear", "backbone": backbone_record(ref, backbone)})
    half = n_vertices // 2
    coords = {"hemisphere": np.array(["lh"] * half + ["rh"] * (n_vertices - half)),
              "fsaverage_index": np.r_[np.arange(half), np.arange(n_vertices - half)]}
    entry = save_part_encoder(Fitted(), run_dir / "models" / "bench" / "subj01",
                              model_name="bench", subject="subj01", recipe="frozen-features",
                              params={"backbone": ref.model_dump(mode="json")},
                              vertex_coords=coords, attrs={}, seed=seed, dtype=dtype)
    return entry["size_bytes"], n_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="effnet")
    parser.add_argument("--n-images", type=int, default=256)
    parser.add_argument("--n-vertices", type=int, default=19_004 + 20_544)
    parser.add_argument("--image-size", type=int, default=None,
                        help="synthetic PNGs of this size; default: the demo dataset's images")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timings")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from neuroenc import load_encoder

    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, device {args.device}")
    with tempfile.TemporaryDirectory(prefix="neuroenc-predict-bench-") as tmp:
        tmp = Path(tmp)
        images = (make_images(tmp / "images", args.n_images, args.image_size) if args.image_size
                  else demo_images(tmp / "demo", args.n_images))
        n = len(images)
        sizes = {}
        for dtype in ("float16", "float32"):  # float32 last: that one is loaded
            sizes[dtype], n_features = _save_encoder(tmp / dtype, BACKBONES[args.backbone],
                                                     args.n_vertices, seed=0, dtype=dtype)
        print(f"encoder: {n_features} features x {args.n_vertices} vertices; on disk "
              f"{sizes['float32'] / 1e6:.1f} MB (float32), {sizes['float16'] / 1e6:.1f} MB (float16)")
        enc = load_encoder(tmp / "float32", "bench", "subj01", device=args.device,
                           batch_size=args.batch_size, num_workers=args.num_workers)
        backbone, device = enc.backbone, torch.device(args.device)
        cuda = device.type == "cuda"
        tensors = [backbone.preprocess(Image.open(p).convert("RGB")) for p in images]
        conv = any(isinstance(m, torch.nn.Conv2d) for m in backbone.module.modules())
        layout = torch.channels_last if conv or cuda else torch.contiguous_format
        batches = [torch.stack(tensors[i:i + args.batch_size]).to(device).contiguous(
            memory_format=layout) for i in range(0, n, args.batch_size)]
        autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else \
            torch.autocast("cpu", enabled=False)

        def sync():
            if cuda:
                torch.cuda.synchronize()

        def best(fn) -> float:
            times = []
            for _ in range(args.repeats):
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times.append(time.perf_counter() - t0)
            return min(times)

        def bare(readout: bool):
            backbone.module.to(memory_format=layout)
            with torch.inference_mode(), autocast:
                for b in batches:
                    feats = backbone.forward_features(b)
                    if readout:
                        enc.predictor.predict_features(feats).float().cpu()
                    elif cuda:
                        for f in feats.values():
                            f.float().cpu()
        bare(True)  # warm-up
        t_bare = best(lambda: bare(False))
        t_readout = best(lambda: bare(True))
        t_predict = best(lambda: enc.predict(images))
        t_file = best(lambda: enc.predict_to_file(images, tmp / "predictions.nc"))
        mb = (tmp / "predictions.nc").stat().st_size / 1e6
        print(f"{n} images, backbone {args.backbone}, batch {args.batch_size}, "
              f"{args.num_workers} DataLoader workers")
        rows = [("bare forward_features (preprocessed tensors)", t_bare),
                ("bare forward + linear readout", t_readout),
                ("Encoder.predict (decode, preprocess, forward, readout)", t_predict),
                (f"Encoder.predict_to_file (streamed to netCDF, {mb:.0f} MB)", t_file)]
        for label, t in rows:
            print(f"  {label:62s} {t:7.2f} s  {n / t:8.1f} images/s  {t / t_bare:5.2f}x bare")
        print(f"predict / bare forward: {t_predict / t_bare:.2f}x; predict / (bare forward + "
              f"readout): {t_predict / t_readout:.2f}x")


if __name__ == "__main__":
    main()
