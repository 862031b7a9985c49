"""Figures: surface maps on fsaverage5, ROI comparisons, scatter, sweeps; headless PNGs."""

from __future__ import annotations

import sys

import matplotlib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from neuroenc.viz import plotting
from neuroenc.evaluation.analysis import across_subjects, load_results, roi_table
from neuroenc_builtins.algonauts import read_subject
from neuroenc.evaluation.results import combine_sweep, result_dataset, write_netcdf

VIEWS = ("lateral", "ventral")


def demo_results(root, folder, models=("good", "bad"), subjects=("subj01", "subj02")):
    """Write a run folder with results on the demo's real fsaverage5 vertices and ROIs."""
    rng = np.random.default_rng(0)
    out = {}
    for subject in subjects:
        data = read_subject(root, subject)
        coords = data.vertex_coords()
        n = len(coords["hemisphere"])
        for i, model in enumerate(models):
            values = np.clip(60 - 25 * i + rng.normal(0, 10, n), 0, 100)
            ds = result_dataset(model=model, subject=subject, vertex_coords=coords,
                                scores={"noise_normalized": values, "pearson": values / 120},
                                noise_ceiling=data.noise_ceiling(),
                                attrs={"fsaverage_mesh": data.fsaverage_mesh, "split": "test"})
            write_netcdf(ds, folder / "models" / model / subject / "scores.nc")
            out[model, subject] = ds
    return out


@pytest.fixture(scope="module")
def run(small_demo_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("plots") / "run"
    truth = demo_results(small_demo_root, folder)
    return folder, truth, load_results(folder)


def png_size(path):
    with Image.open(path) as img:
        return img.size


class expected_pixels:  # noqa: N801 - reads as a value in the assertions
    """figsize x dpi, to the pixel (matplotlib rounds a fractional size either way)."""

    def __init__(self, fig, dpi):
        w, h = fig.get_size_inches()
        self.size = (w * dpi, h * dpi)

    def __eq__(self, other):
        return all(abs(a - b) <= 1 for a, b in zip(other, self.size))

    def __repr__(self):
        return f"{self.size[0]:.1f} x {self.size[1]:.1f} px"


def test_surface_maps_put_values_on_their_fsaverage_vertices(run):
    _, truth, _ = run
    ds = truth["good", "subj01"]
    maps = plotting.surface_maps(ds, "pearson")
    assert set(maps) == {"lh", "rh"} and maps["lh"].shape == (10242,)
    for hemi in ("lh", "rh"):
        sel = ds.hemisphere.values == hemi
        index = ds.fsaverage_index.values[sel]
        np.testing.assert_allclose(maps[hemi][index], ds.pearson.values[sel])
        outside = np.setdiff1d(np.arange(10242), index)
        assert np.isnan(maps[hemi][outside]).all()


def test_surface_plot_writes_a_png_of_the_expected_size_headless(run, tmp_path):
    _, truth, results = run
    backend = matplotlib.get_backend()
    out = tmp_path / "surface.png"
    fig = plotting.plot_surface(results["subj01"], "noise_normalized", model="good", views=VIEWS,
                                rois="floc-faces", dpi=60, out=out)
    assert out.stat().st_size > 5000
    assert png_size(out) == expected_pixels(fig, 60)
    # two hemispheres x two views of 3D axes, plus the colour bar
    assert sum(ax.name == "3d" for ax in fig.axes) == 4
    assert matplotlib.get_backend() == backend  # nothing global was switched
    if "matplotlib.pyplot" in sys.modules:
        assert not sys.modules["matplotlib.pyplot"].get_fignums()  # no figure left open


def test_surface_plot_shows_the_values_in_the_colour_map(run, tmp_path):
    """A map at its maximum everywhere paints the colour map's top colour; NaN does not."""
    _, truth, _ = run
    ds = truth["good", "subj01"].copy(deep=True)
    ds["noise_normalized"][:] = 100.0
    path = tmp_path / "top.png"
    plotting.plot_surface(ds, views=("lateral",), hemispheres=("lh",), vmin=0, vmax=100, dpi=60,
                          out=path)
    top = np.array(matplotlib.colormaps[plotting.SEQUENTIAL_CMAP](1.0)[:3]) * 255
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=float)
    near_top = (np.abs(pixels - top).sum(axis=2) < 40).sum()
    assert near_top > 500
    empty = ds.copy(deep=True)
    empty["noise_normalized"][:] = np.nan
    path = tmp_path / "empty.png"
    plotting.plot_surface(empty, views=("lateral",), hemispheres=("lh",), vmin=0, vmax=100, dpi=60,
                          out=path)
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=float)
    # only the colour bar has the top colour: the brain shows its grey background
    assert (np.abs(pixels - top).sum(axis=2) < 40).sum() < near_top / 4


def test_difference_map_is_diverging_and_symmetric(run, tmp_path):
    _, _, results = run
    out = tmp_path / "diff.png"
    fig = plotting.plot_difference_map(results, "good", "bad", views=VIEWS, dpi=50, out=out)
    assert png_size(out) == expected_pixels(fig, 50)
    colorbar_ax = [ax for ax in fig.axes if ax.name != "3d"][0]
    low, high = colorbar_ax.get_ylim()
    assert low == pytest.approx(-high) and high > 0
    assert "good - bad" in fig._suptitle.get_text()


def test_full_fsaverage_that_cannot_be_fetched_says_how_to_provide_it(run, monkeypatch):
    import nilearn.datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'osf.io'")

    monkeypatch.setattr(nilearn.datasets, "fetch_surf_fsaverage", offline)
    _, truth, _ = run
    ds = truth["good", "subj01"].copy(deep=True)
    ds.attrs["fsaverage_mesh"] = "fsaverage"
    with pytest.raises(plotting.FsaverageUnavailableError) as info:
        plotting.plot_surface(ds, views=("lateral",))
    message = str(info.value)
    assert "fetch_surf_fsaverage('fsaverage')" in message and "NILEARN_DATA" in message
    assert "ConnectionError" in message and "163,842" in message


def test_roi_bars_show_the_across_subject_means(run, tmp_path):
    _, _, results = run
    out = tmp_path / "bars.png"
    fig = plotting.plot_roi_comparison(results, "noise_normalized", roi_class="floc-faces",
                                       dpi=50, out=out)
    assert png_size(out) == expected_pixels(fig, 50)
    spread = across_subjects(roi_table(results, "noise_normalized", n_boot=0))
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    from matplotlib.container import BarContainer

    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert sorted(c.get_label() for c in bars) == ["bad", "good"]
    for container in bars:
        model = container.get_label()
        expected = spread[spread.model == model].set_index("roi").loc[labels, "mean"]
        np.testing.assert_allclose([bar.get_height() for bar in container.patches], expected)


def test_roi_box_and_class_plots(run, tmp_path):
    _, _, results = run
    for kind, roi_class in (("box", "prf-visualrois"), ("bar", None), ("box", None)):
        out = tmp_path / f"{kind}-{roi_class}.png"
        fig = plotting.plot_roi_comparison(results, kind=kind, roi_class=roi_class, dpi=40, out=out)
        assert png_size(out) == expected_pixels(fig, 40) and out.stat().st_size > 2000
    one = {"subj01": results["subj01"]}  # one subject: bootstrap CIs as error bars
    fig = plotting.plot_roi_comparison(one, dpi=40, n_boot=50)
    table = roi_table(one, level="roi_class", n_boot=50)
    errorbars = [c for c in fig.axes[0].containers if type(c).__name__ == "ErrorbarContainer"]
    segments = errorbars[1].lines[2][0].get_segments()  # the "all" group of the 2nd model
    first = table[(table.model == "good") & (table.roi_class == "all")].iloc[0]
    assert segments[0][0][1] == pytest.approx(first.median_ci_low)
    assert segments[0][1][1] == pytest.approx(first.median_ci_high)
    with pytest.raises(KeyError, match="no ROI class 'floc-face'"):
        plotting.plot_roi_comparison(results, roi_class="floc-face")


def test_model_scatter(run, tmp_path):
    _, truth, results = run
    out = tmp_path / "scatter.png"
    fig = plotting.plot_model_scatter(results, "bad", "good", dpi=50, out=out)
    assert png_size(out) == expected_pixels(fig, 50)
    x = np.concatenate([truth["bad", s].noise_normalized.values for s in ("subj01", "subj02")])
    y = np.concatenate([truth["good", s].noise_normalized.values for s in ("subj01", "subj02")])
    text = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert f"{np.mean(y > x):.0%} of {x.size} vertices" in text


def test_sweep_plot_from_a_run_folder(small_demo_root, tmp_path):
    data = read_subject(small_demo_root, "subj01")
    coords = data.vertex_coords()
    n = len(coords["hemisphere"])
    points = [{"alignment.weight": w} for w in (0.0, 0.01, 0.1, 1.0)]
    sweep = []
    for i, _ in enumerate(points):
        sweep.append(result_dataset(model=f"m@{i}", subject="subj01", vertex_coords=coords,
                                    scores={"noise_normalized": np.full(n, 10.0 * i)},
                                    noise_ceiling=None))
    write_netcdf(combine_sweep(sweep, points, "m"), tmp_path / "models" / "m" / "subj01" / "sweep.nc")
    out = tmp_path / "sweep.png"
    fig = plotting.plot_sweep(tmp_path, dpi=50, out=out)
    assert png_size(out) == expected_pixels(fig, 50)
    ax = fig.axes[0]
    line = [ln for ln in ax.get_lines() if ln.get_label() == "all vertices (mean)"][0]
    np.testing.assert_allclose(line.get_ydata(), [0, 10, 20, 30])
    assert ax.get_xscale() == "symlog" and ax.get_xlabel() == "alignment.weight"


def test_interactive_html_needs_plotly(run, tmp_path, monkeypatch):
    _, truth, _ = run
    ds = truth["good", "subj01"]
    if "plotly" not in sys.modules:
        try:
            import plotly  # noqa: F401
        except ImportError:
            with pytest.raises(ImportError, match="pip install plotly"):
                plotting.surface_html(ds, tmp_path / "x.html")
            return
    out = plotting.surface_html(ds, tmp_path / "x.html", hemisphere="rh")
    assert out.stat().st_size > 10000 and "<html" in out.read_text()[:2000].lower()
    monkeypatch.setitem(sys.modules, "plotly", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install plotly"):
        plotting.surface_html(ds, tmp_path / "y.html")


def test_plot_command(run, tmp_path):
    from neuroenc.cli import app
    from neuroenc.cli.analysis import register

    register(app)
    folder, _, _ = run
    runner = CliRunner()
    out = tmp_path / "cli.png"
    result = runner.invoke(app, ["plot", str(folder), "--model", "good", "--subject", "subj02",
                                 "--view", "lateral", "--rois", "floc-faces", "--dpi", "40",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 3000
    result = runner.invoke(app, ["plot", str(folder), "--kind", "scatter", "--model", "good",
                                 "--minus", "bad", "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["plot", str(folder), "--model", "god"])
    assert result.exit_code == 1 and "did you mean 'good'" in result.output
    result = runner.invoke(app, ["plot", str(folder), "--model", "good", "--var", "noise_normalised"])
    assert result.exit_code == 1 and "did you mean 'noise_normalized'" in result.output
