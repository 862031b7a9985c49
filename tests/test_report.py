"""The HTML report: self-contained, with the run's tables, figures, sweeps, config, versions."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from neuroenc.evaluation.analysis import challenge_scores, load_results
from neuroenc_builtins.algonauts import read_subject
from neuroenc.viz.report import write_report
from neuroenc.evaluation.results import combine_sweep, result_dataset, write_netcdf
from neuroenc.core.runner import sweep_summary

VOID = {"meta", "img", "br", "hr", "link", "input", "col"}


class Structure(HTMLParser):
    """Checks that tags nest and close, and collects images, links and table cells."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.images, self.links, self.cells = [], [], [], [], []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])
        if tag in ("td", "th"):
            self._in_cell = True
            self.cells.append("")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self._in_cell:
            self.cells[-1] += data.strip()


def make_run(root, folder):
    """A run folder as the runner writes it: two models, a two-point sweep, an extra map."""
    rng = np.random.default_rng(1)
    results = []
    sweep_points = [{"mapper.n_folds": 3}, {"mapper.n_folds": 5}]
    for subject in ("subj01", "subj02"):
        data = read_subject(root, subject)
        coords = data.vertex_coords()
        n = len(coords["hemisphere"])
        per_sweep = []
        for model, offset, point in (("ridge", 50, {}), ("vp", 40, {}),
                                     ("sw@mapper.n_folds=3", 30, sweep_points[0]),
                                     ("sw@mapper.n_folds=5", 35, sweep_points[1])):
            values = np.clip(offset + rng.normal(0, 8, n), 0, 100)
            scores = {"noise_normalized": values, "pearson": values / 110}
            if model == "vp":
                scores["vp_unique_text"] = rng.normal(0.05, 0.02, n)
            base = model.split("@")[0]
            ds = result_dataset(model=model, subject=subject, vertex_coords=coords, scores=scores,
                                noise_ceiling=data.noise_ceiling(),
                                attrs={"split": "test", "fsaverage_mesh": "fsaverage5",
                                       "dataset": "demo", "sweep_base": base,
                                       "sweep_point": point})
            write_netcdf(ds, folder / "models" / model / subject / "scores.nc")
            results.append(ds)
            if point:
                per_sweep.append(ds)
        write_netcdf(combine_sweep(per_sweep, sweep_points, "sw"),
                     folder / "models" / "sw" / subject / "sweep.nc")
    sweep_summary(results, "noise_normalized").to_csv(folder / "sweep_summary.csv")
    config = {"name": "reporttest", "description": "models <compared> & reported", "seed": 7,
              "dataset": {"kind": "demo", "subjects": [1, 2]},
              "models": {"ridge": {"recipe": "frozen-features"}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "environment.json").write_text(json.dumps({
        "versions": {"numpy": "9.9.9-test", "neuroenc": "0.1.0"}, "device": "cpu (test)",
        "platform": "TestOS", "seed": 7, "started": "2026-01-01T00:00:00",
        "finished": "2026-01-01T00:01:00", "timings_s": {"total": 60.0},
        "plugins": {"builtins": "0.1.0"}}))
    return folder


@pytest.fixture(scope="module")
def report(small_demo_root, tmp_path_factory):
    folder = make_run(small_demo_root, tmp_path_factory.mktemp("report") / "run")
    path = write_report(folder, views=("lateral",), max_surface_maps=2, n_boot=50)
    return folder, path, path.read_text(encoding="utf-8")


def test_report_is_valid_self_contained_html(report):
    folder, path, text = report
    assert path == folder / "report.html"
    assert text.startswith("<!DOCTYPE html>") and "<title>neuroenc report: reporttest</title>" in text
    parser = Structure()
    parser.feed(text)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    # every image is an embedded PNG; the only links are anchors inside the page
    assert len(parser.images) >= 8
    for img in parser.images:
        assert img["src"].startswith("data:image/png;base64,") and img.get("alt")
        png = base64.b64decode(img["src"].split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert all(link.startswith("#") for link in parser.links)
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", text)
    # user text is escaped
    assert "models &lt;compared&gt; &amp; reported" in text


def test_report_has_the_tables_of_the_run(report):
    folder, _, text = report
    parser = Structure()
    parser.feed(text)
    scores = challenge_scores(load_results(folder))
    for model, value in scores.items():
        assert model in parser.cells
        assert f"{value:.2f}" in parser.cells
    # per ROI class: mean over subjects +- sem
    assert any(re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", c) for c in parser.cells)
    for section in ("Run", "Summary", "ROI comparisons", "Surface maps", "Extra per-vertex maps",
                    "Sweeps", "Per ROI", "Configuration", "Environment"):
        assert f">{section}</h2>" in text
    assert "mapper.n_folds=3" in text and "vp_unique_text" in text  # sweep table, extra maps
    assert "9.9.9-test" in text and "TestOS" in text  # versions and environment
    assert "recipe: frozen-features" in text  # config.yaml
    assert "Not shown (max_surface_maps)" in text
    assert "FFA-1" in parser.cells and "V1v" in parser.cells  # the per-ROI table


def test_report_without_the_mesh_still_writes_the_tables(small_demo_root, tmp_path, monkeypatch):
    import nilearn.datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(nilearn.datasets, "fetch_surf_fsaverage", offline)
    folder = tmp_path / "run"
    (folder / "models" / "m" / "subj01").mkdir(parents=True)
    coords = read_subject(small_demo_root, "subj01").vertex_coords()
    n = len(coords["hemisphere"])
    ds = result_dataset(model="m", subject="subj01", vertex_coords=coords,
                        scores={"noise_normalized": np.linspace(0, 90, n)}, noise_ceiling=None,
                        attrs={"fsaverage_mesh": "fsaverage"})  # as the Algonauts data
    write_netcdf(ds, folder / "models" / "m" / "subj01" / "scores.nc")
    out = write_report(folder, tmp_path / "r.html", views=("lateral",), n_boot=20)
    text = out.read_text()
    assert "Surface maps left out" in text and "fetch_surf_fsaverage" in text
    assert "45.00" in text  # the challenge-style mean of linspace(0, 90)


def test_report_command(report, tmp_path):
    from neuroenc.cli import app
    from neuroenc.cli.analysis import register

    register(app)
    folder, _, _ = report
    single = tmp_path / "run"
    (single / "models" / "ridge").mkdir(parents=True)
    for subject in ("subj01",):
        src = folder / "models" / "ridge" / subject
        (single / "models" / "ridge" / subject).mkdir()
        (single / "models" / "ridge" / subject / "scores.nc").write_bytes(
            (src / "scores.nc").read_bytes())
    result = CliRunner().invoke(app, ["report", str(single), "--out", str(tmp_path / "r.html"),
                                      "--max-maps", "1", "--view", "ventral"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.html").stat().st_size > 10000
    result = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "no such run folder" in result.output
