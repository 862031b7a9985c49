"""Wall time and peak memory of each stage of the demo run (``neuroenc run registry.yaml``).

Runs the registry in a fresh subprocess per pass, with a sampling thread that reads the
process's resident memory every 20 ms, and wraps the functions each stage runs (dataset
generation and loading, feature extraction, ridge fit / predict, other mappers' fit /
predict, scoring, writing results) to attribute time and peak RSS to stages. Pass 1
uses an empty cache folder (the demo dataset is generated and features are extracted);
pass 2 reuses it (cache hits). The runner's own ``timings_s`` are printed beside.

    python benchmarks/demo.py                                  # the ridge models only
    python benchmarks/demo.py --models all                     # every model of the registry
    python benchmarks/demo.py --profile demo.prof              # also cProfile pass 1
    python benchmarks/demo.py --json demo.json

``--models`` keeps only the named models of the registry (default: the two ridge
baselines; the LLM-VEM sweep trains networks and takes far longer on a CPU).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ["ridge-effnet", "ridge-resnet18-untrained"]
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * PAGE
    except OSError:  # not Linux: fall back to the peak so far
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024


class StageTracker:
    """Attributes wall time and sampled RSS to the innermost running stage."""

    def __init__(self, interval: float = 0.02):
        self.stack: list[str] = []
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.lock = threading.Lock()
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _rss_bytes()
            with self.lock:
                stage = self.stack[-1] if self.stack else "other"
                self.peak[stage] = max(self.peak.get(stage, 0), rss)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def wrap(self, owner, name: str, stage: str) -> None:
        """Replace ``owner.name`` by a wrapper that runs it as ``stage``."""
        func = getattr(owner, name)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with self.lock:
                nested = bool(self.stack)
                self.stack.append(stage)
            t0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                rss = _rss_bytes()
                with self.lock:
                    self.stack.pop()
                    self.seconds[stage] = self.seconds.get(stage, 0.0) + dt
                    self.calls[stage] = self.calls.get(stage, 0) + 1
                    self.peak[stage] = max(self.peak.get(stage, 0), rss)
                    if nested:  # the enclosing stage's time excludes this one
                        parent = self.stack[-1]
                        self.seconds[parent] = self.seconds.get(parent, 0.0) - dt

        setattr(owner, name, wrapper)


def instrument(tracker: StageTracker) -> None:
    import neuroenc_builtins.algonauts as algonauts
    import neuroenc_builtins.demo as demo
    import neuroenc.evaluation.metrics as metrics
    import neuroenc.models.ridge as ridge
    import neuroenc.core.runner as runner
    import neuroenc_builtins.datasets as datasets
    import neuroenc_builtins.recipes as recipes

    tracker.wrap(demo, "ensure_demo_dataset", "dataset generation")
    tracker.wrap(datasets, "read_subject", "dataset loading")
    tracker.wrap(algonauts.SubjectData, "responses", "dataset loading")
    tracker.wrap(recipes, "extract_features", "features")
    tracker.wrap(ridge.RidgeCV, "fit", "ridge fit")
    tracker.wrap(ridge.RidgeCV, "predict", "ridge predict")
    for name in ("pearson_r", "r2_score", "noise_normalized_score"):
        tracker.wrap(metrics, name, "scoring")
    for name in ("write_netcdf", "export_submission", "result_dataset", "predictions_dataset",
                 "summarize", "combine_sweep"):
        tracker.wrap(runner, name, "writing results")
    try:  # LLM-VEM training, when that model is kept
        import neuroenc_llmvem.recipe as llmvem

        tracker.wrap(llmvem, "extract_features", "features")
        for cls_name in dir(llmvem):
            cls = getattr(llmvem, cls_name)
            if isinstance(cls, type) and cls.__module__ == llmvem.__name__ and hasattr(cls, "fit") \
                    and hasattr(cls, "predict"):
                tracker.wrap(cls, "fit", "llm-vem fit")
                tracker.wrap(cls, "predict", "llm-vem predict")
    except ImportError:
        pass


def one_pass(registry_path: Path, profile: Path | None) -> dict:
    """Run the registry in this process; return stage timings and memory."""
    from neuroenc.core.config import load_registry, resolve_registry
    from neuroenc.core.plugins import PluginManager
    from neuroenc.core.runner import run_registry

    tracker = StageTracker()
    instrument(tracker)
    manager = PluginManager()
    registry = resolve_registry(load_registry(registry_path), manager)
    tracker.start()
    t0 = time.perf_counter()
    if profile is not None:
        import cProfile

        prof = cProfile.Profile()
        result = prof.runcall(run_registry, registry, manager, show_progress=False,
                              log=lambda msg: None)
        prof.dump_stats(profile)
    else:
        result = run_registry(registry, manager, show_progress=False, log=lambda msg: None)
    total = time.perf_counter() - t0
    tracker.stop()
    other = total - sum(tracker.seconds.values())
    seconds = dict(tracker.seconds, other=other)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return {"total_s": total, "seconds": seconds, "calls": tracker.calls,
            "peak_rss": tracker.peak, "maxrss": maxrss, "runner_timings_s": result.timings,
            "run_dir": str(result.run_dir)}


def write_registry(models: list[str] | None, out_dir: Path, cache_dir: Path) -> Path:
    import yaml

    data = yaml.safe_load((ROOT / "registry.yaml").read_text())
    if models is not None:
        unknown = sorted(set(models) - set(data["models"]))
        if unknown:
            raise SystemExit(f"registry.yaml has no model(s) {unknown}; it has {sorted(data['models'])}")
        data["models"] = {name: data["models"][name] for name in models}
    data.setdefault("compute", {})["cache_dir"] = str(cache_dir)
    data.setdefault("output", {})["dir"] = str(out_dir / "results")
    path = out_dir / "registry.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                        help="models of registry.yaml to run, or 'all'")
    parser.add_argument("--cache-dir", type=Path, help="default: a fresh temporary folder")
    parser.add_argument("--passes", type=int, default=2, help="1: cold only; 2: cold then warm")
    parser.add_argument("--profile", type=Path, help="cProfile pass 1 into this file")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker is not None:
        print(json.dumps(one_pass(args.worker, args.profile), default=str))
        return

    models = None if args.models == ["all"] else args.models
    with tempfile.TemporaryDirectory(prefix="neuroenc-demo-bench-") as tmp:
        tmp = Path(tmp)
        cache = args.cache_dir or tmp / "cache"
        registry = write_registry(models, tmp, cache)
        print(f"models: {', '.join(models or ['all'])}; cache {cache}; "
              f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
        passes = []
        for i in range(args.passes):
            cmd = [sys.executable, __file__, "--worker", str(registry)]
            if args.profile is not None and i == 0:
                cmd += ["--profile", str(args.profile)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                raise SystemExit(f"pass {i + 1} failed:\n{out.stderr[-4000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res["load_after"] = os.getloadavg()[0]
            passes.append(res)

    stages = []
    for res in passes:
        for stage in res["seconds"]:
            if stage not in stages:
                stages.append(stage)
    header = f"{'stage':<20}" + "".join(f"{f'pass {i + 1} s':>12}{'peak RSS GiB':>14}"
                                        for i in range(len(passes)))
    print(header)
    for stage in stages:
        row = f"{stage:<20}"
        for res in passes:
            s = res["seconds"].get(stage)
            peak = res["peak_rss"].get(stage)
            row += f"{s:12.1f}" if s is not None else f"{'-':>12}"
            row += f"{peak / 2**30:14.2f}" if peak else f"{'-':>14}"
        print(row)
    print(f"{'total':<20}" + "".join(f"{res['total_s']:12.1f}{res['maxrss'] / 2**30:14.2f}"
                                     for res in passes))
    for i, res in enumerate(passes):
        print(f"pass {i + 1} runner timings_s: " + ", ".join(
            f"{k} {v:.1f}" for k, v in res["runner_timings_s"].items()))
        print(f"pass {i + 1} load average after: {res['load_after']:.2f}")
    if args.profile is not None:
        import pstats

        print(f"\ncProfile of pass 1 ({args.profile}), top 25 by own time:")
        pstats.Stats(str(args.profile)).sort_stats("tottime").print_stats(25)
    if args.json:
        args.json.write_text(json.dumps(passes, indent=2, default=str))


if __name__ == "__main__":
    main()
