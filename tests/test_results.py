"""xarray results: labels, netCDF round trip, submission layout, ROI summaries."""

from __future__ import annotations

import numpy as np
import pytest

from neuroenc.evaluation.results import (export_submission, load_run, read_netcdf, result_dataset,
                              roi_summary, summarize, write_netcdf)


def _coords():
    return {
        "hemisphere": np.array(["lh", "lh", "lh", "rh", "rh"]),
        "challenge_index": np.array([0, 1, 2, 0, 1]),
        "fsaverage_index": np.array([5, 9, 11, 2, 3]),
        "roi_prf_visualrois": np.array(["V1v", "V1v", "", "V2d", ""]),
        "roi_floc_faces": np.array(["", "FFA-1", "FFA-1", "", "OFA"]),
    }


def _result(model="m", subject="subj01", scores=(10.0, 20.0, 30.0, 40.0, 50.0)):
    return result_dataset(model=model, subject=subject, vertex_coords=_coords(),
                          scores={"noise_normalized": np.array(scores), "pearson": np.zeros(5)},
                          noise_ceiling=np.full(5, 0.5),
                          attrs={"model_config": {"recipe": "x"}, "split": "test", "note": None})


def test_dataset_is_labelled_by_vertex_and_roi():
    ds = _result()
    assert ds.sizes == {"vertex": 5}
    assert set(ds.data_vars) == {"noise_normalized", "pearson", "noise_ceiling"}
    sel = ds.where(ds.roi_floc_faces == "FFA-1", drop=True)
    np.testing.assert_allclose(sel.noise_normalized, [20.0, 30.0])
    assert ds.attrs["model"] == "m" and ds.attrs["model_config"] == '{"recipe": "x"}'


def test_netcdf_round_trip(tmp_path):
    ds = _result()
    path = write_netcdf(ds, tmp_path / "a" / "scores.nc")
    back = read_netcdf(path)
    assert back.identical(ds)
    assert list(back.hemisphere.values) == ["lh", "lh", "lh", "rh", "rh"]
    assert not list(tmp_path.glob("a/.*"))  # no temporary file left behind


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_netcdf(_result(), tmp_path / "scores.nc")
    before = path.read_bytes()
    import xarray as xr

    def crash(self, *a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(xr.Dataset, "to_netcdf", crash)
    with pytest.raises(OSError):
        write_netcdf(_result(scores=(1, 2, 3, 4, 5)), path)
    assert path.read_bytes() == before


def test_mismatched_metric_length():
    with pytest.raises(ValueError, match=r"metric 'r' has shape \(3,\), expected \(5,\)"):
        result_dataset(model="m", subject="s", vertex_coords=_coords(), scores={"r": np.zeros(3)},
                       noise_ceiling=None)


def test_submission_layout(tmp_path):
    pred = np.arange(4 * 5, dtype=np.float64).reshape(4, 5)
    paths = export_submission(pred, {"lh": 3, "rh": 2}, tmp_path / "subj01")
    assert [p.name for p in paths] == ["lh_pred_test.npy", "rh_pred_test.npy"]
    lh, rh = (np.load(p) for p in paths)
    assert lh.dtype == np.float32 and lh.shape == (4, 3) and rh.shape == (4, 2)
    np.testing.assert_array_equal(rh, pred[:, 3:])
    with pytest.raises(ValueError, match="5 vertices, expected 6"):
        export_submission(pred, {"lh": 3, "rh": 3}, tmp_path / "x")


def test_roi_summary_medians_and_challenge_mean():
    table = roi_summary(_result(), "noise_normalized").set_index(["roi_class", "roi"])
    assert table.loc[("all", "all vertices"), "mean"] == pytest.approx(30.0)
    assert table.loc[("prf-visualrois", "V1v"), "median"] == pytest.approx(15.0)
    assert table.loc[("floc-faces", "FFA-1"), "n_vertices"] == 2
    assert table.loc[("floc-faces", "OFA"), "median"] == pytest.approx(50.0)
    assert ("prf-visualrois", "") not in table.index


def test_summarize_many_and_load_run(tmp_path):
    for model in ("a", "b"):
        for subject in ("subj01", "subj02"):
            write_netcdf(_result(model, subject), tmp_path / "models" / model / subject / "scores.nc")
    runs = load_run(tmp_path)
    assert sorted(runs) == [("a", "subj01"), ("a", "subj02"), ("b", "subj01"), ("b", "subj02")]
    table = summarize(runs.values())
    assert table.attrs["variable"] == "noise_normalized"
    assert set(table.model) == {"a", "b"} and len(table) == 4 * 5  # all + V1v, V2d, FFA-1, OFA
    with pytest.raises(FileNotFoundError, match="no results"):
        load_run(tmp_path / "empty")
