"""Time neuroenc's per-vertex CV ridge against himalaya and scikit-learn on the same data.

One command; every solver sees the same synthetic data (features with a decaying
spectrum, responses ``X W + noise`` with a per-target signal-to-noise ratio ranging from
pure noise to well predicted, so the best alphas differ across targets), the same alpha
grid and, for neuroenc and himalaya, the same contiguous 5-fold splits and R^2 scoring.
scikit-learn's ``RidgeCV(alpha_per_target=True)`` has no K-fold mode with per-target
alphas: it selects by efficient leave-one-out, so it is compared with neuroenc's
``cv="loo"`` (same alphas expected) and timed next to the K-fold solvers for reference.

Each solver runs in its own subprocess (fresh memory accounting: peak RSS from
``resource.getrusage``, which sees BLAS / torch buffers that tracemalloc does not), after
the data are loaded; the fit alone is timed. Then: chosen alphas and test R^2 are
compared, ratios printed, and the solver's flop count set against the machine's measured
GEMM rate.

    python benchmarks/ridge.py                    # medium: 4000 x 512, 10,000 targets
    python benchmarks/ridge.py --full             # Algonauts subject: 9841 x 1024, 39,548
    python benchmarks/ridge.py --full --solvers neuroenc neuroenc-gcv
    python benchmarks/ridge.py --device cuda      # GPU; himalaya with backend torch_cuda
    python benchmarks/ridge.py --json out.json    # also write the numbers

Sizes: ``--n-samples --n-features --n-targets --n-test --n-alphas --n-folds``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = ("neuroenc", "neuroenc-loo", "neuroenc-gcv", "himalaya", "sklearn")
# Not run by default: neuroenc in float64 (a precision reference for the float32 solvers).
EXTRA_SOLVERS = ("neuroenc-float64",)
_NEUROENC_CV = {"neuroenc": "kfold", "neuroenc-loo": "loo", "neuroenc-gcv": "gcv",
                "neuroenc-float64": "kfold"}
MEDIUM = dict(n_samples=4000, n_features=512, n_targets=10_000)
FULL = dict(n_samples=9841, n_features=1024, n_targets=39_548)


# --------------------------------------------------------------------------- data


def make_data(n_samples: int, n_features: int, n_targets: int, n_test: int, seed: int,
              folder: Path) -> dict:
    """Write X, Y (training) and X_test, Y_test (noiseless targets' expectation + noise)
    as float32 .npy files; return a description.

    Features: a random rotation of independent columns whose standard deviations decay
    as k^-0.7 (image embeddings have such spectra), plus offsets. Responses: ``X W``
    with W random, scaled per target so that the fraction of explainable variance runs
    log-uniformly from 1e-3 to 0.7 (most cortical vertices are noisy), plus unit noise.
    """
    rng = np.random.default_rng(seed)
    n_all = n_samples + n_test
    scales = np.arange(1, n_features + 1) ** -0.7
    rotation, _ = np.linalg.qr(rng.standard_normal((n_features, n_features)))
    X = (rng.standard_normal((n_all, n_features)) * scales) @ rotation
    X += rng.standard_normal(n_features) * 0.1
    X = X.astype(np.float32)
    signal_fraction = np.exp(rng.uniform(np.log(1e-3), np.log(0.7), n_targets))
    Y = np.empty((n_all, n_targets), dtype=np.float32)
    chunk = 4096
    Xc = X - X[:n_samples].mean(0)
    for start in range(0, n_targets, chunk):
        stop = min(start + chunk, n_targets)
        W = rng.standard_normal((n_features, stop - start)).astype(np.float32)
        signal = Xc @ W
        signal /= signal[:n_samples].std(0)
        f = signal_fraction[start:stop].astype(np.float32)
        Y[:, start:stop] = signal * np.sqrt(f / (1 - f)) \
            + rng.standard_normal((n_all, stop - start), dtype=np.float32)
    Y += rng.standard_normal(n_targets).astype(np.float32) * 0.5
    np.save(folder / "X.npy", X[:n_samples])
    np.save(folder / "Y.npy", Y[:n_samples])
    np.save(folder / "X_test.npy", X[n_samples:])
    np.save(folder / "Y_test.npy", Y[n_samples:])
    return {"n_samples": n_samples, "n_features": n_features, "n_targets": n_targets,
            "n_test": n_test, "seed": seed, "gbytes_Y": Y[:n_samples].nbytes / 1e9}


# --------------------------------------------------------------------------- workers


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def worker(solver: str, folder: Path, alphas: np.ndarray, n_folds: int, device: str,
           target_batch_size: int | None, himalaya_backend: str | None = None) -> dict:
    """Fit one solver on the data in ``folder``; return timings, memory and results."""
    X = np.load(folder / "X.npy")
    Y = np.load(folder / "Y.npy")
    rss_loaded = _maxrss_bytes()
    extra: dict = {}
    if solver.startswith("neuroenc"):
        import torch

        from neuroenc.models.ridge import solve_ridge_cv

        cv = _NEUROENC_CV[solver]
        dtype = "float64" if solver.endswith("float64") else "float32"
        if device.startswith("cuda"):
            torch.zeros(1, device=device)  # CUDA context outside the timing
        t0 = time.perf_counter()
        result = solve_ridge_cv(X, Y, alphas, n_folds=n_folds, cv=cv, device=device,
                                dtype=dtype, target_batch_size=target_batch_size)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        coef, intercept, best = result.coef, result.intercept, result.best_alphas
        np.save(folder / f"{solver}.cv_scores.npy", result.cv_scores)
        if device.startswith("cuda"):
            extra["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
    elif solver == "himalaya":
        from himalaya.backend import set_backend
        from himalaya.ridge import RidgeCV
        from himalaya.scoring import r2_score
        from sklearn.model_selection import KFold

        backend = set_backend(himalaya_backend
                              or ("torch_cuda" if device.startswith("cuda") else "torch"))
        # himalaya's own batching knobs: targets per batch (its prediction tensor is
        # n_alphas x n_val x batch) and alphas at once (its operator is n_alphas x n_val
        # x n_train); sized to stay within a few GB at the --full size.
        params = dict(score_func=r2_score, n_targets_batch=target_batch_size or 2000,
                      n_targets_batch_refit=target_batch_size or 2000)
        model = RidgeCV(alphas=alphas, fit_intercept=True, cv=KFold(n_folds),
                        solver_params=params)
        Xb, Yb = backend.asarray(X), backend.asarray(Y)
        t0 = time.perf_counter()
        model.fit(Xb, Yb)
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        coef = backend.to_numpy(model.coef_)
        intercept = backend.to_numpy(model.intercept_)
        best = backend.to_numpy(model.best_alphas_)
    elif solver == "sklearn":
        from sklearn.linear_model import RidgeCV

        t0 = time.perf_counter()
        model = RidgeCV(alphas=alphas, alpha_per_target=True, fit_intercept=True).fit(X, Y)
        seconds = time.perf_counter() - t0
        coef, intercept, best = model.coef_.T, model.intercept_, model.alpha_
    else:
        raise ValueError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
    X_test = np.load(folder / "X_test.npy")
    Y_test = np.load(folder / "Y_test.npy")
    pred = X_test.astype(np.float64) @ np.asarray(coef, dtype=np.float64) + intercept
    ss_res = ((Y_test - pred) ** 2).sum(0)
    ss_tot = ((Y_test - Y_test.mean(0)) ** 2).sum(0)
    np.save(folder / f"{solver}.best.npy", np.asarray(best, dtype=np.float64))
    np.save(folder / f"{solver}.test_r2.npy", 1 - ss_res / ss_tot)
    return {"solver": solver, "seconds": seconds, "rss_loaded": rss_loaded,
            "rss_peak": _maxrss_bytes(), **extra}


def gemm_worker(device: str) -> dict:
    """Return the machine's GEMM rates (GFLOP/s) and eigh times, torch and NumPy."""
    import torch

    out: dict = {}
    m, k, n = 2048, 2048, 4096

    def best_of(fn, reps=4):
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    rng = np.random.default_rng(0)
    for name, dt in (("float32", np.float32), ("float64", np.float64)):
        a = rng.standard_normal((m, k)).astype(dt)
        b = rng.standard_normal((k, n)).astype(dt)
        if device == "cpu":
            out[f"numpy_{name}"] = 2 * m * k * n / best_of(lambda: a @ b) / 1e9
        ta = torch.from_numpy(a).to(device)
        tb = torch.from_numpy(b).to(device)

        def mm():
            ta @ tb
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        out[f"torch_{name}"] = 2 * m * k * n / best_of(mm) / 1e9
    for size in (512, 1024):
        g = rng.standard_normal((size, size))
        g = g @ g.T
        if device == "cpu":
            out[f"eigh{size}_numpy_s"] = best_of(lambda: np.linalg.eigh(g), reps=2)
        tg = torch.from_numpy(g).to(device)
        out[f"eigh{size}_torch_s"] = best_of(lambda: torch.linalg.eigh(tg), reps=2)
    return out


# --------------------------------------------------------------------------- flop counts


def neuroenc_flops(n: int, p: int, t: int, a: int, k: int, cv: str) -> dict:
    """Return the flops neuroenc's algorithm does for these sizes (contiguous K-fold or
    LOO / GCV; rank taken as min(n_train, p)), split into target side and X side."""
    from neuroenc.models.ridge._solvers import _QUAD_BLOCK, _use_quadratic_form

    n_val = n // k
    n_tr = n - n_val
    target = x_side = 0.0
    if cv == "kfold":
        if n_tr >= p:
            r = p
            target += 2 * n * p * t  # X_val^T Y_val blocks (sum to X^T Y)
            target += k * 2 * (2 * p * r * t)  # V^T (X_tr^T Y_tr) and V^T (X_val^T Y_val)
            x_side += 2 * n * p * p + k * 4 * p * p * r  # Gram blocks, G = V^T Gram V
        else:
            r = n_tr
            target += k * (2 * n_tr * r * t + 2 * n_val * r * t)  # U^T Y_tr, P^T Y_val
            x_side += k * (2 * n_tr * n_tr * p + 2 * n_tr * p * r + 2 * n_val * p * r)
        target += k * 2 * a * r * t  # cross terms
        if _use_quadratic_form(r, n_val):
            target += k * a * (r * r + r * _QUAD_BLOCK) * t  # block upper-triangular u^T G u
        else:
            target += k * a * 2 * n_val * r * t  # explicit predictions
        r_full = min(n, p)
        target += 2 * p * r_full * t * (1 if n >= p else 0) + 2 * n * r_full * t * (n < p)
        target += 2 * p * r_full * t  # refit coef
    else:
        r = min(n, p)
        target += 2 * n * r * t + 2 * p * r * t  # U^T Y, refit
        target += 2 * a * r * t if cv == "gcv" else a * 2 * n * r * t
        x_side += 2 * n * p * p + 2 * n * p * r
    return {"target_side": target, "x_side": x_side}


def himalaya_flops(n: int, p: int, t: int, a: int, k: int) -> float:
    """Return the target-side flops of himalaya's solve_ridge_cv_svd: per fold an explicit
    (n_alphas, n_val, n_train) operator applied to Y_train, plus the refit."""
    n_val = n // k
    n_tr = n - n_val
    return k * a * 2 * n_val * n_tr * t + a * 2 * p * n * t


# --------------------------------------------------------------------------- driver


def run_worker(args_list: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args_list], capture_output=True,
                         text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"worker {args_list} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="9841 x 1024 features, 39,548 targets")
    parser.add_argument("--n-samples", type=int)
    parser.add_argument("--n-features", type=int)
    parser.add_argument("--n-targets", type=int)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--n-alphas", type=int, default=11, help="logspace(-2, 8, n_alphas)")
    parser.add_argument("--n-folds", type=int, default=5)
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS),
                        choices=SOLVERS + EXTRA_SOLVERS)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--target-batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--himalaya-backend", help="default torch (CPU) / torch_cuda (GPU)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    alphas = np.logspace(-2, 8, args.n_alphas)
    if not args.worker:  # before any work: one line saying what to install
        from _peers import require

        ours = [s for s in SOLVERS + EXTRA_SOLVERS if s.startswith("neuroenc")]
        require("benchmarks/ridge.py", [s for s in args.solvers if s in ("himalaya", "sklearn")],
                f", or time neuroenc alone: --solvers {' '.join(s for s in ours if s in SOLVERS)}")

    if args.worker == "gemm":
        print(json.dumps(gemm_worker(args.device)))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.data, alphas, args.n_folds, args.device,
                                args.target_batch_size, args.himalaya_backend)))
        return

    sizes = dict(FULL if args.full else MEDIUM)
    for key in sizes:
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    n, p, t = sizes["n_samples"], sizes["n_features"], sizes["n_targets"]
    a, k = len(alphas), args.n_folds
    import torch

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f} (1 min)")
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name()}")
    print(f"data: X {n} x {p}, Y {n} x {t} float32 ({n * t * 4 / 1e9:.2f} GB), {a} alphas "
          f"logspace(-2, 8), {k} contiguous folds, R^2 scoring, {args.n_test} test samples")

    gemm = run_worker(["--worker", "gemm", "--device", args.device])
    print("GEMM rate (GFLOP/s, 2048x2048 @ 2048x4096): " + ", ".join(
        f"{key} {value:.0f}" for key, value in gemm.items() if not key.endswith("_s")))
    print("eigh (s): " + ", ".join(f"{key[:-2]} {value:.2f}" for key, value in gemm.items()
                                   if key.endswith("_s")))
    rate32 = gemm["torch_float32"]

    results: dict = {"sizes": sizes, "n_alphas": a, "n_folds": k, "device": args.device,
                     "cpu": cpu_model(), "gemm": gemm, "solvers": {}}
    with tempfile.TemporaryDirectory(prefix="neuroenc-bench-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        info = make_data(n, p, t, args.n_test, args.seed, folder)
        print(f"data generated in {time.perf_counter() - t0:.1f} s")
        for solver in args.solvers:
            if os.getloadavg()[0] > 1.5:
                print(f"  (warning: load average {os.getloadavg()[0]:.2f} before {solver})")
            cmd = ["--worker", solver, "--data", str(folder), "--n-alphas", str(a),
                   "--n-folds", str(k), "--device", args.device]
            if args.target_batch_size:
                cmd += ["--target-batch-size", str(args.target_batch_size)]
            if args.himalaya_backend:
                cmd += ["--himalaya-backend", args.himalaya_backend]
            res = run_worker(cmd)
            res["load_before"] = os.getloadavg()[0]
            res["best"] = np.load(folder / f"{solver}.best.npy")
            res["test_r2"] = np.load(folder / f"{solver}.test_r2.npy")
            if (folder / f"{solver}.cv_scores.npy").exists():
                res["cv_scores"] = np.load(folder / f"{solver}.cv_scores.npy")
            results["solvers"][solver] = res
            extra = (f", GPU peak {res['gpu_peak_bytes'] / 2**30:.2f} GiB"
                     if "gpu_peak_bytes" in res else "")
            print(f"{solver:>13}: {res['seconds']:8.2f} s   peak RSS "
                  f"{res['rss_peak'] / 2**30:6.2f} GiB ({(res['rss_peak'] - res['rss_loaded']) / 2**30:+.2f}"
                  f" GiB over the loaded data){extra}")

    solvers = results["solvers"]
    print()
    print("flops and rates:")
    for solver, cv in _NEUROENC_CV.items():
        if solver in solvers:
            fl = neuroenc_flops(n, p, t, a, k, cv)
            total = fl["target_side"] + fl["x_side"]
            rate = total / solvers[solver]["seconds"] / 1e9
            solvers[solver]["flops"] = total
            print(f"  {solver}: {total / 1e12:.2f} TFLOP ({fl['target_side'] / 1e12:.2f} target "
                  f"side), {rate:.0f} GFLOP/s = {100 * rate / rate32:.0f} % of the float32 GEMM rate")
    if "himalaya" in solvers:
        fl = himalaya_flops(n, p, t, a, k)
        rate = fl / solvers["himalaya"]["seconds"] / 1e9
        print(f"  himalaya: {fl / 1e12:.2f} TFLOP (its algorithm), {rate:.0f} GFLOP/s = "
              f"{100 * rate / rate32:.0f} % of the float32 GEMM rate")

    def grid_index(best: np.ndarray) -> np.ndarray:
        return np.abs(np.log(np.asarray(best, dtype=np.float64))[:, None]
                      - np.log(alphas)[None, :]).argmin(axis=1)

    def compare(ours: str, theirs: str) -> None:
        if ours not in solvers or theirs not in solvers:
            return
        A, B = solvers[ours], solvers[theirs]
        # himalaya returns its alphas in float32: compare grid positions, not values.
        ia_all, ib_all = grid_index(A["best"]), grid_index(B["best"])
        same = ia_all == ib_all
        d_r2 = np.abs(A["test_r2"] - B["test_r2"])
        ratio = B["seconds"] / A["seconds"]
        tie = ""
        if "cv_scores" in A and (~same).any():
            # Where the choices differ, how far apart are the two alphas in our CV scores?
            cols = np.flatnonzero(~same)
            ia, ib = ia_all[cols], ib_all[cols]
            gap = np.abs(A["cv_scores"][ia, cols] - A["cv_scores"][ib, cols])
            tie = f"; there, their alpha's CV score is within {gap.max():.1e} of ours"
        print(f"  {ours} vs {theirs}: {ratio:.1f}x faster; same alpha for {100 * same.mean():.2f} % "
              f"of targets; |test R^2 difference| max {d_r2.max():.2e} (where alphas differ: "
              f"{d_r2[~same].max() if (~same).any() else 0:.2e}{tie}); mean test R^2 "
              f"{A['test_r2'].mean():.4f} vs {B['test_r2'].mean():.4f}")
        results.setdefault("comparisons", []).append({
            "ours": ours, "theirs": theirs, "speedup": ratio, "same_alpha": float(same.mean()),
            "max_abs_test_r2_diff": float(d_r2.max()),
            "max_abs_test_r2_diff_where_alphas_differ": float(d_r2[~same].max()) if (~same).any() else 0.0})

    print()
    print("agreement:")
    compare("neuroenc", "himalaya")
    compare("neuroenc-loo", "sklearn")
    compare("neuroenc", "sklearn")
    compare("neuroenc-gcv", "sklearn")
    compare("neuroenc", "neuroenc-float64")
    compare("himalaya", "neuroenc-float64")
    if "neuroenc" in solvers:
        counts = np.bincount(grid_index(solvers["neuroenc"]["best"]), minlength=a)
        print("  alphas chosen by neuroenc (count per alpha of the grid): " + ", ".join(
            f"{alpha:.0e}: {c}" for alpha, c in zip(alphas, counts) if c))
    if args.json:
        for res in solvers.values():
            res.pop("cv_scores", None)
            res["best"] = np.unique(res["best"], return_counts=True)[1].tolist()
            res["test_r2"] = float(res["test_r2"].mean())
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
