"""Make the figures of docs/analysis.md from a run of the demo experiment.

    neuroenc run registry.yaml                       # the demo run (about a minute)
    python docs/make_figures.py results/demo/latest  # writes docs/figures/*.png

Each figure is a 256-colour PNG under 200 KB. The script uses only the public analysis
API, so it doubles as an example of it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAX_BYTES = 200_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default=str(HERE.parent / "results" / "demo" / "latest"),
                        help="a run folder of the demo experiment (default: results/demo/latest)")
    parser.add_argument("--out", default=str(HERE / "figures"), help="folder for the PNGs")
    args = parser.parse_args(argv)

    from neuroenc.evaluation.analysis import leading_models, load_results
    from neuroenc.viz.plotting import (plot_difference_map, plot_model_scatter, plot_roi_comparison,
                                   plot_surface, save_figure)

    results = load_results(args.run_dir)
    models = leading_models(results)  # best first; a sweep by its best point
    best, second = models[:2]
    subject = next(iter(results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    figures = {
        "surface_map.png": (plot_surface(results[subject], "noise_normalized", model=best,
                                         rois="floc-faces"), 80),
        "roi_classes.png": (plot_roi_comparison(results, "noise_normalized", models=models), 80),
        "roi_faces_box.png": (plot_roi_comparison(results, "noise_normalized", models=models,
                                                  roi_class="floc-faces", kind="box",
                                                  figsize=(6.5, 3.6)), 80),
        "model_scatter.png": (plot_model_scatter(results, second, best, "noise_normalized",
                                                 figsize=(4.4, 4.4)), 80),
        "difference_map.png": (plot_difference_map(results, best, second, "noise_normalized",
                                                   subject=subject,
                                                   views=("lateral", "ventral", "posterior")), 80),
    }
    for name, (fig, dpi) in figures.items():
        path = save_figure(fig, out / name, dpi=dpi, palette=True)
        size = path.stat().st_size
        print(f"{path} ({size / 1000:.0f} KB)")
        if size > MAX_BYTES:
            print(f"  larger than {MAX_BYTES / 1000:.0f} KB: lower the dpi", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
