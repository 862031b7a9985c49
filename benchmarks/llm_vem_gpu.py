"""Time LLM-VEM training per epoch on the CPU and, when present, on a CUDA GPU.

Trains the demo registry's ``llm-vem`` model (the first point of its sweep with an
alignment weight lambda > 0, so the text side is timed too, unless ``--weight`` is given)
on one demo subject, once per device, mixed precision on for the
GPU, and prints the seconds per epoch of each stage and the CPU / GPU ratio.

    python benchmarks/llm_vem_gpu.py                 # CPU, and CUDA if available
    python benchmarks/llm_vem_gpu.py --devices cuda --epochs 3

Checkpoint reuse is switched off so each device really trains.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=ROOT / "registry.yaml")
    parser.add_argument("--model", default="llm-vem")
    parser.add_argument("--subject", default="subj01")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu and cuda if present")
    parser.add_argument("--epochs", type=int, default=None, help="cap every stage at this many epochs")
    parser.add_argument("--weight", type=float, default=None, help="alignment lambda")
    args = parser.parse_args()

    import torch

    from neuroenc.core.config import default_cache_dir, expand_model, load_registry, resolve_registry
    from neuroenc.core.context import RunContext, seed_everything
    from neuroenc.core.plugins import PluginManager

    manager = PluginManager()
    registry = resolve_registry(load_registry(args.registry), manager)
    variants = expand_model(args.model, registry.models[args.model], registry.seed)

    def weight(v) -> float:
        alignment = v.params.get("alignment")
        return float(alignment.get("weight", 1.0)) if isinstance(alignment, dict) else 0.0
    variant = next((v for v in variants if weight(v) > 0), variants[0])
    params = dict(variant.params, resume=False, amp=True)
    if args.weight is not None and params.get("alignment"):
        alignment = params["alignment"]
        alignment = {"name": alignment} if isinstance(alignment, str) else dict(alignment)
        params["alignment"] = {**alignment, "weight": args.weight}
    if args.epochs is not None:
        params["stages"] = [{**s, "epochs": min(s["epochs"], args.epochs)} for s in params["stages"]]
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])

    cache_dir = (registry.resolve_path(registry.compute.cache_dir) if registry.compute.cache_dir
                 else default_cache_dir())
    print(f"model {variant.name}, subject {args.subject}, devices {devices}")
    per_device = {}
    for device in devices:
        with tempfile.TemporaryDirectory() as scratch:
            # captions, text embeddings and the dataset come from the shared cache; training
            # checkpoints go to a scratch folder so nothing is reused between devices
            context = RunContext(manager=manager, cache_dir=cache_dir, device=device,
                                 seed=registry.seed, batch_size=registry.compute.batch_size,
                                 num_workers=registry.compute.num_workers, show_progress=False,
                                 base_dir=registry.base_dir)
            reader = context.build("dataset", {"name": registry.dataset.kind,
                                               **registry.dataset.params})
            data = reader.load(args.subject)
            seed_everything(registry.seed)
            model = context.build("recipe", {"name": variant.recipe, **params})
            model._checkpoint_path = lambda *a, _s=scratch: Path(_s) / "ckpt.pt"
            t0 = time.perf_counter()
            model.fit(data, np.arange(len(data.train_images)))
            total = time.perf_counter() - t0
        stages: dict[str, list[float]] = {}
        for entry in model.history:
            stages.setdefault(entry["stage"], []).append(entry["seconds"])
        per_device[device] = {name: float(np.median(v)) for name, v in stages.items()}
        name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
        print(f"\n{device} ({name}): fit {total:.1f} s")
        for stage, seconds in per_device[device].items():
            print(f"  stage {stage}: {seconds:.2f} s per epoch (median of {len(stages[stage])})")
    if len(per_device) > 1 and "cpu" in per_device:
        for device in (d for d in per_device if d != "cpu"):
            for stage in per_device["cpu"]:
                ratio = per_device["cpu"][stage] / per_device[device][stage]
                print(f"stage {stage}: {device} is {ratio:.1f}x faster than cpu per epoch")


if __name__ == "__main__":
    main()
