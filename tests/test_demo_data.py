"""Tests of the embedded demo dataset generator (neuroenc_builtins.demo).

One small dataset (2 subjects x (60 + 20) images of 64 px) is generated per session and
checked for the Algonauts 2023 layout and for the properties of its ground truth that the
rest of neuroenc relies on. The ground-truth checks recompute stimulus properties from
the written PNGs with their own code, so they fail if the generator's maps, pRFs or
category responses break.
"""

from __future__ import annotations

import csv
import filecmp
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from neuroenc_builtins import demo
from neuroenc_builtins.demo import DEMO_GENERATOR_VERSION, ensure_demo_dataset, generate_demo_dataset

SMALL = dict(subjects=(1, 2), n_train=60, n_test=20, image_size=64, seed=0)
TINY = dict(subjects=(1,), n_train=6, n_test=4, image_size=32, seed=3)
SUBJECTS = ("subj01", "subj02")
HEMIS = ("lh", "rh")
N_FSAVERAGE5 = 10242
ROI_NAMES = {
    "prf-visualrois": ["V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"],
    "floc-bodies": ["EBA", "FBA-1", "FBA-2", "mTL-bodies"],
    "floc-faces": ["OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"],
    "floc-places": ["OPA", "PPA", "RSC"],
    "floc-words": ["OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"],
    "streams": ["early", "midventral", "midlateral", "midparietal", "ventral", "lateral", "parietal"],
}
# Words a caption must use for each category drawn (written here, not imported, so a
# renamed phrase in the generator is caught).
CATEGORY_WORDS = {
    "face": r"\bfaces?\b",
    "body": r"\b(person|people)\b",
    "place": r"\b(house|building|field|mountains?|beach|room|landscape)\b",
    "word": r"\bword\b",
    "vehicle": r"\b(car|bus|sailboat)\b",
    "food": r"\b(apple|lemon|pizza|cake|banana)\b",
    "animal": r"\b(cat|dog|bird|fish)\b",
}
IMAGE_NAME = {
    "train": re.compile(r"^train-(\d{4})_nsd-(\d{5})\.png$"),
    "test": re.compile(r"^test-(\d{4})_nsd-(\d{5})\.png$"),
}


@pytest.fixture(scope="session")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "data", **SMALL)


def image_files(root: Path, subject: str, split: str) -> list[Path]:
    folder = "training_split/training_images" if split == "train" else "test_split/test_images"
    return sorted((root / subject / folder).glob("*.png"))


def nsd_ids(paths: list[Path]) -> list[int]:
    return [int(re.search(r"nsd-(\d{5})", p.name).group(1)) for p in paths]


def responses(root: Path, subject: str, hemi: str) -> np.ndarray:
    """Training and test responses stacked, shape (n_train + n_test, n_vertices)."""
    train = np.load(root / subject / "training_split/training_fmri" / f"{hemi}_training_fmri.npy")
    test = np.load(root / subject / "test_split/test_fmri" / f"{hemi}_test_fmri.npy")
    return np.concatenate([train, test])


def roi(root: Path, subject: str, hemi: str, cls: str) -> np.ndarray:
    return np.load(root / subject / "roi_masks" / f"{hemi}.{cls}_challenge_space.npy")


def image_content(root: Path) -> dict[int, dict[str, float]]:
    with open(root / "demo_ground_truth" / "images.csv", newline="") as f:
        return {int(r["nsd_id"]): {c: float(r[c]) for c in CATEGORY_WORDS} for r in csv.DictReader(f)}


def captions(root: Path) -> dict[int, str]:
    with open(root / "demo_captions.csv", newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        assert next(reader) == ["nsd_id", "caption"]
        return {int(i): c for i, c in reader}


# --- layout -------------------------------------------------------------------------------


def test_fmri_and_noise_ceiling_files_have_algonauts_shapes_and_dtypes(root: Path) -> None:
    for s in SUBJECTS:
        n_train, n_test = len(image_files(root, s, "train")), len(image_files(root, s, "test"))
        assert (n_train, n_test) == (SMALL["n_train"], SMALL["n_test"])
        for h in HEMIS:
            mask = np.load(root / s / "roi_masks" / f"{h}.all-vertices_fsaverage_space.npy")
            assert mask.shape == (N_FSAVERAGE5,) and mask.dtype.kind == "i"
            assert set(np.unique(mask)) == {0, 1}
            n_v = int(mask.sum())
            assert 1000 < n_v < 5000, f"{s} {h}: {n_v} challenge vertices; expected a few thousand"
            train = np.load(root / s / "training_split/training_fmri" / f"{h}_training_fmri.npy")
            test = np.load(root / s / "test_split/test_fmri" / f"{h}_test_fmri.npy")
            nc = np.load(root / s / "test_split/noise_ceiling" / f"{h}_noise_ceiling.npy")
            assert train.dtype == test.dtype == nc.dtype == np.float32
            assert train.shape == (n_train, n_v) and test.shape == (n_test, n_v) and nc.shape == (n_v,)
            assert np.isfinite(train).all() and np.isfinite(test).all()
            assert (nc >= 0).all() and (nc <= 1).all() and nc.std() > 0.01


def test_roi_masks_match_algonauts_conventions(root: Path) -> None:
    for s in SUBJECTS:
        for cls, names in ROI_NAMES.items():
            mapping = np.load(root / s / "roi_masks" / f"mapping_{cls}.npy", allow_pickle=True).item()
            assert mapping == {0: "Unknown", **dict(enumerate(names, start=1))}
            assert all(type(k) is int for k in mapping)
        for h in HEMIS:
            mask = np.load(root / s / "roi_masks" / f"{h}.all-vertices_fsaverage_space.npy").astype(bool)
            streams = roi(root, s, h, "streams")
            assert (streams > 0).all(), "the streams tile the challenge space"
            for cls, names in ROI_NAMES.items():
                fs = np.load(root / s / "roi_masks" / f"{h}.{cls}_fsaverage_space.npy")
                ch = roi(root, s, h, cls)
                assert fs.shape == (N_FSAVERAGE5,) and fs.dtype.kind == "i" and ch.dtype.kind == "i"
                np.testing.assert_array_equal(ch, fs[mask])
                assert not fs[~mask].any(), f"{cls}: labels outside the challenge space"
                counts = np.bincount(ch, minlength=len(names) + 1)
                assert len(counts) == len(names) + 1, f"{cls}: label beyond {len(names)}"
                empty = [names[k - 1] for k in range(1, len(names) + 1) if counts[k] == 0]
                assert not empty, f"{s} {h} {cls}: empty ROIs {empty}"


def test_roi_classes_overlap_across_classes(root: Path) -> None:
    # As in NSD, category ROIs overlap each other and the streams (one label per class).
    faces, bodies = roi(root, "subj01", "lh", "floc-faces"), roi(root, "subj01", "lh", "floc-bodies")
    words = roi(root, "subj01", "lh", "floc-words")
    assert ((faces > 0) & ((bodies > 0) | (words > 0))).any()


def test_subjects_differ_in_vertex_count(root: Path) -> None:
    counts = {
        s: tuple(int(np.load(root / s / "roi_masks" / f"{h}.all-vertices_fsaverage_space.npy").sum()) for h in HEMIS)
        for s in SUBJECTS
    }
    assert counts["subj01"] != counts["subj02"]


def test_images_are_named_ordered_rgb_and_shared_like_nsd(root: Path) -> None:
    by_id: dict[int, bytes] = {}
    for s in SUBJECTS:
        for split in ("train", "test"):
            paths = image_files(root, s, split)
            matches = [IMAGE_NAME[split].match(p.name) for p in paths]
            assert all(matches), [p.name for p, m in zip(paths, matches) if not m]
            assert [int(m.group(1)) for m in matches] == list(range(1, len(paths) + 1))
            ids = [int(m.group(2)) for m in matches]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
            for p, i in zip(paths, ids):
                with Image.open(p) as im:
                    assert im.format == "PNG" and im.mode == "RGB" and im.size == (64, 64)
                data = p.read_bytes()
                assert by_id.setdefault(i, data) == data, f"nsd id {i} names two different images"
    # Distinct images have distinct pictures.
    assert len(set(by_id.values())) == len(by_id)
    test_ids = [set(nsd_ids(image_files(root, s, "test"))) for s in SUBJECTS]
    train_ids = [set(nsd_ids(image_files(root, s, "train"))) for s in SUBJECTS]
    assert test_ids[0] == test_ids[1], "test images are shared between subjects"
    overlap = len(train_ids[0] & train_ids[1])
    assert 0 < overlap < 0.5 * SMALL["n_train"], "training images: mostly distinct, some shared"
    assert not (train_ids[0] | train_ids[1]) & test_ids[0]
    assert set(captions(root)) == set(by_id), "one caption per distinct image"


def test_demo_info_records_version_params_and_ground_truth(root: Path) -> None:
    info = json.loads((root / "demo_info.json").read_text())
    assert info["generator_version"] == DEMO_GENERATOR_VERSION
    assert info["params"] == {**SMALL, "subjects": list(SMALL["subjects"])}
    assert "pRF" in info["ground_truth"] and "ncsnr" in info["ground_truth"]
    for s in SUBJECTS:
        reps = info["subjects"][s]["test_images_by_repeats"]
        assert sum(reps.values()) == SMALL["n_test"] and reps["3"] > reps["2"] + reps["1"]


# --- determinism --------------------------------------------------------------------------


def test_same_seed_gives_identical_files_and_other_seed_differs(root: Path, tmp_path: Path) -> None:
    again = generate_demo_dataset(tmp_path / "again", **SMALL)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    different = [str(f) for f in files if not filecmp.cmp(root / f, again / f, shallow=False)]
    assert not different, f"not reproducible: {different[:5]}"

    other = generate_demo_dataset(tmp_path / "other", **{**SMALL, "seed": 1})
    fmri = "subj01/training_split/training_fmri/lh_training_fmri.npy"
    assert not np.array_equal(np.load(root / fmri), np.load(other / fmri))
    pngs = {p.read_bytes() for p in (root / "subj01").rglob("*.png")}
    assert not pngs & {p.read_bytes() for p in (other / "subj01").rglob("*.png")}


# --- captions -----------------------------------------------------------------------------


def test_captions_mention_exactly_the_categories_drawn(root: Path) -> None:
    content, caps = image_content(root), captions(root)
    assert set(content) == set(caps)
    for nsd_id, caption in caps.items():
        assert caption[0].isupper() and caption.endswith(".") and len(caption.split()) >= 5
        for category, pattern in CATEGORY_WORDS.items():
            drawn = content[nsd_id][category] > 0
            said = re.search(pattern, caption, flags=re.IGNORECASE) is not None
            assert drawn == said, f"nsd {nsd_id}: {category} drawn={drawn} but caption: {caption!r}"
    # Every category appears somewhere, and captions are not one template.
    assert all(any(c[k] > 0 for c in content.values()) for k in CATEGORY_WORDS)
    assert len({c.split()[0] for c in caps.values()}) >= 4


def test_captions_name_written_words_that_are_drawn() -> None:
    # Over many scenes: every word drawn is quoted, verbatim, in the caption.
    for nsd_id in range(200):
        _, scene, _ = demo.writer._render_image(0, nsd_id, 64)
        words = [o for o in scene.objects if o.category == "word"]
        for o in words:
            quoted = re.search(r"'([A-Z]+)'", o.phrase).group(1)
            assert f"'{quoted}'" in scene.caption


# --- ground truth: noise ceiling, retinotopy, category selectivity ------------------------


def test_noise_ceiling_follows_the_generators_snr(root: Path) -> None:
    info = json.loads((root / "demo_info.json").read_text())
    for s in SUBJECTS:
        reps = info["subjects"][s]["test_images_by_repeats"]
        n_trials = np.repeat([1, 2, 3], [reps["1"], reps["2"], reps["3"]])
        for h in HEMIS:
            gt = np.load(root / "demo_ground_truth" / f"{s}_{h}.npz")
            nc = np.load(root / s / "test_split/noise_ceiling" / f"{h}_noise_ceiling.npy")
            assert spearmanr(gt["snr"], nc)[0] > 0.8
            # Single-trial SNR s gives ncsnr ~ s after z-scoring, so NC ~ s^2 / (s^2 + mean(1/n)).
            expected = gt["snr"] ** 2 / (gt["snr"] ** 2 + np.mean(1.0 / n_trials))
            assert np.median(np.abs(nc - expected)) < 0.1


def _contrast_energy(paths: list[Path]) -> np.ndarray:
    """Squared luminance gradient of each image, shape (n_images, size, size)."""
    out = []
    for p in paths:
        with Image.open(p) as im:
            g = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
        gy, gx = np.gradient(g)
        out.append(gx**2 + gy**2)
    return np.stack(out)


def _prf_pooled(energy: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Gaussian-pRF-weighted energy, shape (n_images, n_vertices); images span 8.4 deg."""
    n = energy.shape[1]
    c = (np.arange(n) + 0.5) / n * 8.4 - 4.2
    gx, gy = np.meshgrid(c, -c)  # image row 0 is the top of the visual field
    w = np.exp(-((gx.ravel()[:, None] - x) ** 2 + (gy.ravel()[:, None] - y) ** 2) / (2 * sigma**2))
    return energy.reshape(len(energy), -1) @ w


def _column_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = (a - a.mean(0)) / a.std(0)
    b = (b - b.mean(0)) / b.std(0)
    return (a * b).mean(0)


@pytest.mark.parametrize("subject", SUBJECTS)
def test_early_visual_vertices_track_contrast_in_their_contralateral_prf(root: Path, subject: str) -> None:
    paths = image_files(root, subject, "train") + image_files(root, subject, "test")
    energy = _contrast_energy(paths)
    for h in HEMIS:
        y_resp = responses(root, subject, h)
        gt = np.load(root / "demo_ground_truth" / f"{subject}_{h}.npz")
        x, y, sigma = gt["prf_x_deg"], gt["prf_y_deg"], gt["prf_sigma_deg"]
        visual = roi(root, subject, h, "prf-visualrois")
        # Contralateral: the left hemisphere maps the right visual field, and vice versa.
        sign = 1 if h == "lh" else -1
        v1v = visual == 1
        assert (sign * x[(visual >= 1) & (visual <= 6)] > -0.05).all()
        # Ventral V1 maps the upper field, dorsal V1 the lower field.
        assert (y[v1v] >= -0.05).all() and (y[visual == 2] <= 0.05).all()
        # pRFs grow from V1 to hV4.
        assert np.median(sigma[visual == 7]) > np.median(sigma[(visual == 1) | (visual == 2)])
        early = (visual >= 1) & (visual <= 4) & (np.abs(x) < 3.5) & (np.abs(y) < 3.5)
        faces = roi(root, subject, h, "floc-faces") > 0
        own = _column_corr(y_resp, _prf_pooled(energy, x, y, sigma))
        mirrored = _column_corr(y_resp, _prf_pooled(energy, -x, y, sigma))
        assert early.sum() > 50
        assert own[early].mean() > 0.4
        assert own[early].mean() > mirrored[early].mean() + 0.15, "pRF not at the mapped position"
        assert own[early].mean() > own[faces].mean() + 0.1, "face ROI as contrast-driven as V1-V2"


@pytest.mark.parametrize(
    "cls,category", [("floc-faces", "face"), ("floc-bodies", "body"), ("floc-places", "place"), ("floc-words", "word")]
)
def test_category_rois_respond_more_to_their_category(root: Path, cls: str, category: str) -> None:
    content = image_content(root)
    for s in SUBJECTS:
        paths = image_files(root, s, "train") + image_files(root, s, "test")
        has = np.array([content[i][category] > 0 for i in nsd_ids(paths)])
        assert 5 < has.sum() < len(has) - 5
        for h in HEMIS:
            z = responses(root, s, h)
            z = (z - z.mean(0)) / z.std(0)
            effect = z[has].mean(0) - z[~has].mean(0)  # per vertex, in sd units
            in_roi = roi(root, s, h, cls) > 0
            # Other category ROIs: same distance from early visual cortex, other preference.
            others = np.zeros_like(in_roi)
            for other in ("floc-faces", "floc-bodies", "floc-places", "floc-words"):
                others |= roi(root, s, h, other) > 0
            others &= ~in_roi
            v1 = np.isin(roi(root, s, h, "prf-visualrois"), (1, 2))
            assert effect[in_roi].mean() > 0.3, f"{s} {h} {cls}: weak {category} preference"
            assert effect[in_roi].mean() > effect[others].mean() + 0.25, f"{s} {h} {cls}: not {category}-specific"
            assert effect[in_roi].mean() > effect[v1].mean() + 0.15


# --- caching and atomic writing -----------------------------------------------------------


def test_ensure_generates_once_then_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ensure_demo_dataset(tmp_path, **TINY)
    assert first.parent == tmp_path and re.fullmatch(r"demo-[0-9a-f]{8,}", first.name)
    assert (first / "demo_info.json").is_file() and (first / "subj01").is_dir()
    stamp = (first / "demo_info.json").stat().st_mtime_ns

    def fail(*args: object, **kwargs: object) -> Path:
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(demo.writer, "generate_demo_dataset", fail)
    assert ensure_demo_dataset(tmp_path, **TINY) == first
    assert ensure_demo_dataset(tmp_path, progress=True, **TINY) == first, "progress is not part of the key"
    assert (first / "demo_info.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name], "no leftovers next to the dataset"


def test_cache_key_covers_params_and_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Path] = []

    def fake(root: Path, **params: object) -> Path:
        made.append(root)
        root.mkdir(parents=True)
        (root / "demo_info.json").write_text("{}")
        return root

    monkeypatch.setattr(demo.writer, "generate_demo_dataset", fake)
    monkeypatch.setenv("NEUROENC_CACHE_DIR", str(tmp_path / "cache"))
    default = ensure_demo_dataset()
    assert default.parent == tmp_path / "cache" / "demo-data"
    assert ensure_demo_dataset(n_train=1000) == default, "explicit defaults share the cache entry"
    assert ensure_demo_dataset(seed=1) != default
    assert ensure_demo_dataset(image_size=64) != default
    monkeypatch.setattr(demo.writer, "DEMO_GENERATOR_VERSION", DEMO_GENERATOR_VERSION + "-next")
    assert ensure_demo_dataset() != default, "a new generator version must not reuse old data"
    assert len(made) == 4
    with pytest.raises(TypeError, match="n_images"):
        ensure_demo_dataset(n_images=5)


def test_interrupted_generation_leaves_no_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = demo.writer._simulate_trials

    def interrupt_in_second_hemisphere(*args: object, **kwargs: object):  # noqa: ANN202
        calls["n"] += 1
        if calls["n"] == 2:  # after the first hemisphere's files are written
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(demo.writer, "_simulate_trials", interrupt_in_second_hemisphere)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_dataset(tmp_path, **TINY)
    assert calls["n"] == 2
    assert list(tmp_path.iterdir()) == [], "a partial dataset or temporary folder was left behind"

    monkeypatch.setattr(demo.writer, "_simulate_trials", real)
    root = ensure_demo_dataset(tmp_path, **TINY)
    assert (root / "demo_info.json").is_file()


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        generate_demo_dataset(tmp_path / "data", **TINY)
    assert (tmp_path / "data" / "keep.txt").read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    # An empty folder is fine: it is replaced by the dataset.
    (tmp_path / "empty").mkdir()
    assert (generate_demo_dataset(tmp_path / "empty", **TINY) / "demo_info.json").is_file()


def test_invalid_parameters_are_rejected_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="subjects"):
        generate_demo_dataset(tmp_path / "a", subjects=(1, 1))
    with pytest.raises(ValueError, match="n_train"):
        generate_demo_dataset(tmp_path / "b", n_train=1)
    with pytest.raises(ValueError, match="image_size"):
        generate_demo_dataset(tmp_path / "c", image_size=8)
    assert not any(tmp_path.iterdir())

