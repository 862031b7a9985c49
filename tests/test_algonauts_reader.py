"""Tests of the Algonauts 2023 reader on a tiny synthetic dataset in the exact layout.

Each broken copy asserts the error type and the whole message head: the offending path
(relative to the root), what was found and what was expected.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from algonauts_fixture import ROI_CLASS_NAMES, write_tiny_algonauts

from neuroenc_builtins import algonauts
from neuroenc_builtins.algonauts import (
    FSAVERAGE_MESHES,
    HEMISPHERES,
    ROI_CLASSES,
    DatasetError,
    SubjectData,
    available_subjects,
    read_subject,
    subject_id,
)

N_TRAIN, N_TEST, N_LH, N_RH, N_FS = 12, 5, 200, 230, 642
SUBJ = "subj01"
TRAIN_FMRI = "subj01/training_split/training_fmri/{}_training_fmri.npy"
TEST_FMRI = "subj01/test_split/test_fmri/{}_test_fmri.npy"
NOISE_CEILING = "subj01/test_split/noise_ceiling/{}_noise_ceiling.npy"
MASK = "subj01/roi_masks/{}.all-vertices_fsaverage_space.npy"
TRAIN_IMAGES = "subj01/training_split/training_images"


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, dict]:
    """Root of a fresh one-subject dataset and the arrays written into it."""
    expected = write_tiny_algonauts(
        tmp_path, n_train=N_TRAIN, n_test=N_TEST, n_vertices=(N_LH, N_RH)
    )
    return tmp_path, expected[SUBJ]


def _read_error(root: Path, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        read_subject(root, 1, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- reading


def test_fixture_matches_the_public_constants():
    # The fixture is an independent copy of the layout; it must agree with the module.
    assert tuple(ROI_CLASS_NAMES) == ROI_CLASSES
    assert HEMISPHERES == ("lh", "rh")
    assert FSAVERAGE_MESHES[N_FS] == "fsaverage3" and FSAVERAGE_MESHES[163842] == "fsaverage"


def test_reads_images_ids_masks_and_rois(tiny):
    root, exp = tiny
    data = read_subject(root, 1)

    assert isinstance(data, SubjectData)
    assert data.root == root and data.subject == SUBJ
    assert [p.name for p in data.train_images] == [
        f"train-{i + 1:04d}_nsd-{nsd:05d}.png" for i, nsd in enumerate(exp["train_nsd_ids"])
    ]
    assert [p.name for p in data.test_images] == [
        f"test-{i + 1:04d}_nsd-{nsd:05d}.png" for i, nsd in enumerate(exp["test_nsd_ids"])
    ]
    assert all(p.is_file() and p.parent.parent.parent == root / SUBJ for p in data.train_images)
    np.testing.assert_array_equal(data.train_nsd_ids, exp["train_nsd_ids"])
    np.testing.assert_array_equal(data.test_nsd_ids, exp["test_nsd_ids"])
    assert data.train_nsd_ids.dtype.kind == "i" and data.test_nsd_ids.dtype.kind == "i"

    for h in HEMISPHERES:
        assert data.fsaverage_mask[h].dtype == bool
        np.testing.assert_array_equal(data.fsaverage_mask[h], exp["mask"][h])
    assert data.n_vertices == {"lh": N_LH, "rh": N_RH}
    assert data.fsaverage_mesh == "fsaverage3"
    assert data.has_test_responses and data.has_noise_ceiling

    assert list(data.roi_labels) == list(ROI_CLASSES)
    for cls in ROI_CLASSES:
        assert data.roi_names[cls] == exp["roi_names"][cls]
        assert data.roi_names[cls][0] == "Unknown"
        for h in HEMISPHERES:
            assert data.roi_labels[cls][h].dtype.kind == "i"
            np.testing.assert_array_equal(data.roi_labels[cls][h], exp["roi_challenge"][cls][h])


def test_per_hemisphere_responses_are_read_only_memmaps(tiny):
    root, exp = tiny
    data = read_subject(root, "subj01")
    for split in ("train", "test"):
        for h in HEMISPHERES:
            arr = data.responses(split, h)
            assert isinstance(arr, np.memmap)
            assert not arr.flags.writeable
            np.testing.assert_array_equal(arr, exp[split][h])


def test_both_hemispheres_concatenate_lh_then_rh_as_float32(tiny):
    root, exp = tiny
    data = read_subject(root, "1")
    for split, n_images in (("train", N_TRAIN), ("test", N_TEST)):
        both = data.responses(split)
        assert type(both) is np.ndarray  # in RAM, not a view on a file
        assert both.dtype == np.float32 and both.shape == (n_images, N_LH + N_RH)
        np.testing.assert_array_equal(both[:, :N_LH], exp[split]["lh"])
        np.testing.assert_array_equal(both[:, N_LH:], exp[split]["rh"])


def test_noise_ceiling_per_hemisphere_and_concatenated(tiny):
    root, exp = tiny
    data = read_subject(root, 1)
    for h in HEMISPHERES:
        np.testing.assert_array_equal(data.noise_ceiling(h), exp["noise_ceiling"][h])
    np.testing.assert_array_equal(
        data.noise_ceiling(),
        np.concatenate([exp["noise_ceiling"]["lh"], exp["noise_ceiling"]["rh"]]),
    )


def test_vertex_coords_map_columns_to_fsaverage_vertices_and_roi_names(tiny):
    root, exp = tiny
    data = read_subject(root, 1)
    coords = data.vertex_coords()
    roi_keys = {
        "roi_prf_visualrois",
        "roi_floc_bodies",
        "roi_floc_faces",
        "roi_floc_places",
        "roi_floc_words",
        "roi_streams",
    }
    assert set(coords) == {"hemisphere", "challenge_index", "fsaverage_index"} | roi_keys
    assert all(v.shape == (N_LH + N_RH,) for v in coords.values())

    hemi = coords["hemisphere"]
    assert hemi.dtype.kind == "U"
    assert list(hemi[:N_LH]) == ["lh"] * N_LH and list(hemi[N_LH:]) == ["rh"] * N_RH
    np.testing.assert_array_equal(
        coords["challenge_index"], np.concatenate([np.arange(N_LH), np.arange(N_RH)])
    )
    assert coords["challenge_index"].dtype.kind == "i"
    assert coords["fsaverage_index"].dtype.kind == "i"

    # Independent check of the fsaverage mapping: the fsaverage-space ROI files (which the
    # reader does not return) looked up at fsaverage_index must give the same ROI names.
    both = data.responses("train")
    for k in (0, 1, N_LH - 1, N_LH, N_LH + N_RH - 1):
        h, c, v = hemi[k], coords["challenge_index"][k], coords["fsaverage_index"][k]
        assert exp["mask"][h][v]
        np.testing.assert_array_equal(both[:, k], exp["train"][h][:, c])
    for cls in ROI_CLASSES:
        names = exp["roi_names"][cls]
        fs_labels = np.concatenate(
            [
                exp["roi_fsaverage"][cls][h][coords["fsaverage_index"][hemi == h]]
                for h in HEMISPHERES
            ]
        )
        expected_names = np.array(["" if lab == 0 else names[lab] for lab in fs_labels])
        got = coords["roi_" + cls.replace("-", "_")]
        assert got.dtype.kind == "U"
        np.testing.assert_array_equal(got, expected_names)
        assert (got == "").any() and (got != "").any()


def test_images_sort_by_index_not_by_name(tmp_path):
    write_tiny_algonauts(tmp_path, n_train=12)
    folder = tmp_path / TRAIN_IMAGES
    # Unpadded indices sort "10" before "2" by name; rows follow the index.
    for p in folder.iterdir():
        prefix, rest = p.name.split("_", 1)
        p.rename(folder / f"train-{int(prefix.split('-')[1])}_{rest}")
    (folder / ".DS_Store").write_bytes(b"")  # hidden cruft is ignored
    data = read_subject(tmp_path, 1)
    assert [p.name.split("_")[0] for p in data.train_images] == [f"train-{i}" for i in range(1, 13)]


def test_challenge_era_copy_without_test_fmri_or_noise_ceiling(tmp_path):
    write_tiny_algonauts(tmp_path, with_test_fmri=False, with_noise_ceiling=False)
    data = read_subject(tmp_path, 1)
    assert not data.has_test_responses and not data.has_noise_ceiling
    assert len(data.test_images) == N_TEST
    assert data.noise_ceiling() is None and data.noise_ceiling("lh") is None
    assert data.responses("train").shape == (N_TRAIN, N_LH + N_RH)
    for hemisphere in ("lh", None):
        with pytest.raises(DatasetError) as info:
            data.responses("test", hemisphere)
        assert str(info.value).startswith(
            f"{TEST_FMRI.format('lh')}: not found; this copy has no test responses"
        )


def test_absent_roi_class_is_simply_left_out(tmp_path):
    write_tiny_algonauts(
        tmp_path, roi_classes=("prf-visualrois", "streams"), with_fsaverage_rois=False
    )
    data = read_subject(tmp_path, 1)
    assert list(data.roi_labels) == ["prf-visualrois", "streams"]
    assert list(data.roi_names) == ["prf-visualrois", "streams"]
    assert {k for k in data.vertex_coords() if k.startswith("roi_")} == {
        "roi_prf_visualrois",
        "roi_streams",
    }


def test_repr_is_short(tiny):
    root, _ = tiny
    text = repr(read_subject(root, 1))
    assert "subj01" in text and "n_train=12" in text and len(text) < 500


def test_bad_arguments_name_the_valid_options(tiny):
    data = read_subject(tiny[0], 1)
    with pytest.raises(
        ValueError, match=r"split 'val': unknown split; expected one of \('train', 'test'\)"
    ):
        data.responses("val")
    with pytest.raises(ValueError, match=r"hemisphere 'left': unknown hemisphere"):
        data.responses("train", "left")


# --------------------------------------------------------------------------- memory


def test_reading_memory_maps_fmri_and_scans_values_in_row_chunks(tiny, monkeypatch):
    root, _ = tiny
    loads: list[tuple[str, str | None]] = []
    real_load = np.load

    def spy_load(path, *args, **kwargs):
        loads.append((Path(path).name, kwargs.get("mmap_mode")))
        return real_load(path, *args, **kwargs)

    scanned: list[tuple[int, ...]] = []
    real_isfinite = np.isfinite

    def spy_isfinite(x, *args, **kwargs):
        if np.ndim(x) == 2:
            scanned.append(np.shape(x))
        return real_isfinite(x, *args, **kwargs)

    monkeypatch.setattr(np, "load", spy_load)
    monkeypatch.setattr(np, "isfinite", spy_isfinite)
    # Two rows of the wider hemisphere per chunk.
    monkeypatch.setattr(algonauts, "_CHECK_CHUNK_BYTES", 2 * N_RH * 4)
    data = read_subject(root, 1)

    fmri_loads = [(name, mode) for name, mode in loads if "_fmri" in name]
    assert sorted(name for name, _ in fmri_loads) == sorted(
        f"{h}_{w}_fmri.npy" for h in HEMISPHERES for w in ("training", "test")
    )
    assert all(mode == "r" for _, mode in fmri_loads)
    assert scanned and max(shape[0] for shape in scanned) <= 2
    # Every row of every file was scanned exactly once.
    assert sum(s[0] for s in scanned) == 2 * N_TRAIN + 2 * N_TEST
    assert isinstance(data.responses("train", "rh"), np.memmap)


# --------------------------------------------------------------------------- subjects


@pytest.mark.parametrize("value", [1, "1", "01", "subj01", " subj1 ", np.int64(1)])
def test_subject_id_accepts_numbers_and_folder_names(value):
    assert subject_id(value) == "subj01"


def test_subject_id_pads_two_digits():
    assert subject_id(8) == "subj08" and subject_id("subj12") == "subj12"


@pytest.mark.parametrize("value", [0, -1, 100, "subj", "s01", "subj1x", "", 1.0, True, None])
def test_subject_id_rejects_and_names_the_value(value):
    with pytest.raises(DatasetError) as info:
        subject_id(value)
    assert str(info.value).startswith(f"subject {value!r}: not a subject identifier")


def test_available_subjects_lists_subject_folders_sorted(tmp_path):
    write_tiny_algonauts(tmp_path, subjects=(3, 1), n_train=2, n_test=1)
    (tmp_path / "notes").mkdir()
    (tmp_path / "subj02.zip").write_bytes(b"")
    assert available_subjects(tmp_path) == ["subj01", "subj03"]
    assert read_subject(tmp_path, 3).subject == "subj03"


def test_unknown_subject_lists_available_ones(tiny):
    root, _ = tiny
    with pytest.raises(DatasetError) as info:
        read_subject(root, 2)
    assert str(info.value) == f"subj02: no such subject folder in {root}; available: subj01"


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError) as info:
        read_subject(tmp_path / "nowhere", 1)
    assert str(info.value).startswith(f"{tmp_path / 'nowhere'}: dataset root not found")


# --------------------------------------------------------------------------- broken copies


def test_wrong_training_row_count(tiny):
    root, exp = tiny
    np.save(root / TRAIN_FMRI.format("lh"), exp["train"]["lh"][:-1])
    assert _read_error(root) == f"{TRAIN_FMRI.format('lh')}: 11 rows, but 12 training images"


def test_extra_test_image_breaks_test_row_count(tiny):
    root, _ = tiny
    (root / "subj01/test_split/test_images/test-0006_nsd-00001.png").write_bytes(b"")
    assert _read_error(root) == f"{TEST_FMRI.format('lh')}: 5 rows, but 6 test images"


def test_fmri_columns_must_match_the_mask(tiny):
    root, exp = tiny
    mask = exp["mask"]["rh"].astype(np.int64)
    mask[np.flatnonzero(mask == 0)[0]] = 1
    np.save(root / MASK.format("rh"), mask)
    assert _read_error(root) == (
        f"{TRAIN_FMRI.format('rh')}: 230 columns, but {MASK.format('rh')} selects 231 vertices"
    )


@pytest.mark.parametrize(
    "array, found",
    [
        (np.zeros((12, 200, 1), np.float32), "shape (12, 200, 1), but expected a 2-D array"),
        (np.zeros((12, 200), np.int64), "dtype int64, but expected floating-point responses"),
    ],
)
def test_fmri_must_be_2d_float(tiny, array, found):
    root, _ = tiny
    np.save(root / TRAIN_FMRI.format("lh"), array)
    assert _read_error(root).startswith(f"{TRAIN_FMRI.format('lh')}: {found}")


def test_nan_and_inf_are_counted_with_first_position(tiny):
    root, exp = tiny
    train = exp["train"]["rh"].copy()
    train[3, 7] = np.nan
    train[3, 2] = np.inf  # same row, earlier column: it is the first
    train[10, 0] = np.nan
    np.save(root / TRAIN_FMRI.format("rh"), train)
    assert _read_error(root).startswith(
        f"{TRAIN_FMRI.format('rh')}: 3 non-finite values (2 NaN, 1 inf), "
        "first at row 3, column 2 (0-based); expected finite responses"
    )
    # The value scan is what finds it; shapes alone are fine.
    assert read_subject(root, 1, check_values=False).n_vertices["rh"] == N_RH


def test_nan_found_across_chunks(tiny, monkeypatch):
    root, exp = tiny
    test = exp["test"]["lh"].copy()
    test[2, 5] = np.nan  # second chunk
    test[4, 199] = -np.inf  # third chunk
    np.save(root / TEST_FMRI.format("lh"), test)
    monkeypatch.setattr(algonauts, "_CHECK_CHUNK_BYTES", 2 * N_LH * 4)
    assert _read_error(root).startswith(
        f"{TEST_FMRI.format('lh')}: 2 non-finite values (1 NaN, 1 inf), first at row 2, column 5"
    )


ROI = "subj01/roi_masks"


@pytest.mark.parametrize(
    "deleted, reported, rest",
    [
        (
            TRAIN_FMRI.format("rh"),
            TRAIN_FMRI.format("rh"),
            f"file not found, but {TRAIN_FMRI.format('lh')} exists; expected the training "
            "responses of the right hemisphere "
            "(subj01/training_split/training_fmri holds: lh_training_fmri.npy)",
        ),
        (
            MASK.format("lh"),
            MASK.format("lh"),
            "file not found; expected the 0/1 mask of challenge vertices on fsaverage "
            "(left hemisphere)",
        ),
        (
            ROI,
            ROI,
            "folder not found; expected the ROI masks folder of the subject "
            "(subj01 holds: test_split, training_split)",
        ),
        (
            TRAIN_IMAGES,
            TRAIN_IMAGES,
            "folder not found; expected the training images "
            "(subj01/training_split holds: training_fmri)",
        ),
        (
            "subj01/training_split",
            TRAIN_IMAGES,
            "folder not found; expected the training images "
            "(folder subj01/training_split does not exist)",
        ),
        (
            f"{ROI}/mapping_floc-faces.npy",
            f"{ROI}/mapping_floc-faces.npy",
            "file not found; expected the label -> name mapping of ROI class 'floc-faces'",
        ),
        (
            TEST_FMRI.format("rh"),
            TEST_FMRI.format("rh"),
            f"file not found, but {TEST_FMRI.format('lh')} exists; "
            "expected the test responses of the right hemisphere",
        ),
        (
            NOISE_CEILING.format("lh"),
            NOISE_CEILING.format("lh"),
            f"file not found, but {NOISE_CEILING.format('rh')} exists; "
            "expected the noise ceiling of the left hemisphere",
        ),
        (
            f"{ROI}/rh.streams_challenge_space.npy",
            f"{ROI}/rh.streams_challenge_space.npy",
            f"file not found, but {ROI}/lh.streams_challenge_space.npy exists; "
            "expected the ROI class 'streams' challenge-space labels of the right hemisphere",
        ),
        (
            f"{ROI}/lh.floc-words_fsaverage_space.npy",
            f"{ROI}/lh.floc-words_fsaverage_space.npy",
            f"file not found, but {ROI}/rh.floc-words_fsaverage_space.npy exists",
        ),
    ],
)
def test_missing_file_or_folder_names_the_expected_path(tiny, deleted, reported, rest):
    root, _ = tiny
    target = root / deleted
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    assert _read_error(root).startswith(f"{reported}: {rest}")


@pytest.mark.parametrize(
    "new_name",
    ["train-0003_nsd-13.jpg", "image_3.png", "test-0003_nsd-00013.png", "train-0003-nsd-00013.png"],
)
def test_bad_image_name(tiny, new_name):
    root, _ = tiny
    folder = root / TRAIN_IMAGES
    next(folder.glob("train-0003_*")).rename(folder / new_name)
    assert _read_error(root) == (
        f"{TRAIN_IMAGES}/{new_name}: file name does not match 'train-<index>_nsd-<NSD id>.png'; "
        "expected e.g. 'train-0001_nsd-00013.png'"
    )


def test_image_indices_must_be_contiguous_from_one(tiny):
    root, _ = tiny
    folder = root / TRAIN_IMAGES
    next(folder.glob("train-0005_*")).rename(folder / "train-0013_nsd-00001.png")
    assert _read_error(root) == (
        f"{TRAIN_IMAGES}: 12 images with missing indices 5; indices out of range 13; "
        "expected contiguous indices 1..12"
    )


def test_image_indices_must_not_repeat(tiny):
    root, _ = tiny
    folder = root / TRAIN_IMAGES
    next(folder.glob("train-0005_*")).rename(folder / "train-0004_nsd-00001.png")
    assert _read_error(root) == (
        f"{TRAIN_IMAGES}: 12 images with duplicate indices 4; missing indices 5; "
        "expected contiguous indices 1..12"
    )


def test_empty_training_images_folder(tiny):
    root, _ = tiny
    for p in (root / TRAIN_IMAGES).iterdir():
        p.unlink()
    assert _read_error(root).startswith(f"{TRAIN_IMAGES}: no images; expected files named")


def test_label_missing_from_mapping(tiny):
    root, exp = tiny
    names = dict(exp["roi_names"]["floc-faces"])
    del names[3]
    np.save(root / "subj01/roi_masks/mapping_floc-faces.npy", names)
    n = int((exp["roi_challenge"]["floc-faces"]["lh"] == 3).sum())
    assert n > 0
    assert _read_error(root) == (
        f"subj01/roi_masks/lh.floc-faces_challenge_space.npy: labels 3 on {n} vertices, but "
        "subj01/roi_masks/mapping_floc-faces.npy names only labels 0, 1, 2, 4, 5"
    )


def test_label_missing_from_mapping_in_fsaverage_space(tiny):
    root, exp = tiny
    fs = exp["roi_fsaverage"]["floc-places"]["rh"].copy()
    outside = np.flatnonzero(~exp["mask"]["rh"])[:4]
    fs[outside] = 9  # off the challenge vertices, so only the fsaverage file shows it
    np.save(root / "subj01/roi_masks/rh.floc-places_fsaverage_space.npy", fs)
    assert _read_error(root) == (
        "subj01/roi_masks/rh.floc-places_fsaverage_space.npy: labels 9 on 4 vertices, but "
        "subj01/roi_masks/mapping_floc-places.npy names only labels 0, 1, 2, 3"
    )


def test_mapping_must_be_a_dict(tiny):
    root, _ = tiny
    np.save(root / "subj01/roi_masks/mapping_streams.npy", np.arange(3))
    assert _read_error(root).startswith(
        "subj01/roi_masks/mapping_streams.npy: holds an array of dtype int64 and shape (3,), "
        "but expected a dict {label: ROI name}"
    )


def test_mapping_keys_must_be_integer_labels(tiny):
    root, _ = tiny
    np.save(root / "subj01/roi_masks/mapping_streams.npy", {"early": 1})
    assert _read_error(root).startswith(
        "subj01/roi_masks/mapping_streams.npy: entry 'early': 1, but expected integer labels"
    )


def test_challenge_roi_length_must_match_vertex_count(tiny):
    root, exp = tiny
    np.save(
        root / "subj01/roi_masks/lh.prf-visualrois_challenge_space.npy",
        exp["roi_challenge"]["prf-visualrois"]["lh"][:-1],
    )
    assert _read_error(root) == (
        f"subj01/roi_masks/lh.prf-visualrois_challenge_space.npy: 199 values, but "
        f"{MASK.format('lh')} selects 200 vertices"
    )


def test_fsaverage_roi_length_must_match_mask_length(tiny):
    root, exp = tiny
    np.save(
        root / "subj01/roi_masks/rh.floc-bodies_fsaverage_space.npy",
        exp["roi_fsaverage"]["floc-bodies"]["rh"][:-1],
    )
    assert _read_error(root) == (
        f"subj01/roi_masks/rh.floc-bodies_fsaverage_space.npy: 641 values, but the fsaverage "
        f"mesh of {MASK.format('rh')} has 642 vertices"
    )


def test_float_roi_labels_are_accepted_when_whole(tiny):
    root, exp = tiny
    path = root / "subj01/roi_masks/lh.streams_challenge_space.npy"
    np.save(path, exp["roi_challenge"]["streams"]["lh"].astype(np.float32))
    labels = read_subject(root, 1).roi_labels["streams"]["lh"]
    assert labels.dtype.kind == "i"
    np.save(path, exp["roi_challenge"]["streams"]["lh"] + 0.5)
    assert _read_error(root).startswith(
        "subj01/roi_masks/lh.streams_challenge_space.npy: non-integer values, "
        "but expected integer ROI labels"
    )


def test_noise_ceiling_in_percent_is_recognised(tiny):
    root, exp = tiny
    nc = exp["noise_ceiling"]["rh"] * 100
    np.save(root / NOISE_CEILING.format("rh"), nc)
    assert _read_error(root) == (
        f"{NOISE_CEILING.format('rh')}: values from {nc.min():.4g} to {nc.max():.4g}, but "
        "expected a fraction in [0, 1]; values > 1 look like percent: divide by 100"
    )


def test_noise_ceiling_shape_must_match_vertices(tiny):
    root, exp = tiny
    np.save(root / NOISE_CEILING.format("lh"), exp["noise_ceiling"]["lh"][:-1])
    assert _read_error(root) == (
        f"{NOISE_CEILING.format('lh')}: shape (199,), but {MASK.format('lh')} selects 200 "
        "vertices; expected shape (200,)"
    )


def test_noise_ceiling_negative_has_no_percent_hint(tiny):
    root, exp = tiny
    nc = exp["noise_ceiling"]["lh"].copy()
    nc[0] = -0.5
    np.save(root / NOISE_CEILING.format("lh"), nc)
    message = _read_error(root)
    assert message.startswith(f"{NOISE_CEILING.format('lh')}: values from -0.5 to ")
    assert "percent" not in message


@pytest.mark.parametrize(
    "mask, found",
    [
        (
            np.ones(700, np.int64),
            "700 values, but expected one per vertex of an fsaverage mesh: 642 (fsaverage3)",
        ),
        (np.full(642, 2, np.int64), "values 2, but expected a 0/1 mask"),
        (np.zeros(642, np.int64), "selects no vertex"),
        (np.ones((642, 1), np.int64), "shape (642, 1), but expected a 1-D mask"),
    ],
)
def test_bad_all_vertices_mask(tiny, mask, found):
    root, _ = tiny
    np.save(root / MASK.format("lh"), mask)
    assert _read_error(root).startswith(f"{MASK.format('lh')}: {found}")


def test_hemisphere_masks_must_share_a_mesh(tiny):
    root, exp = tiny
    mask = np.zeros(2562, np.int64)
    mask[np.flatnonzero(exp["mask"]["rh"])] = 1
    np.save(root / MASK.format("rh"), mask)
    assert _read_error(root) == (
        f"{MASK.format('rh')}: 2562 values, but {MASK.format('lh')} has 642; "
        "expected both hemispheres on the same fsaverage mesh"
    )


def test_unreadable_npy_names_the_file(tiny):
    root, _ = tiny
    (root / TRAIN_FMRI.format("lh")).write_bytes(b"not a numpy file")
    assert _read_error(root).startswith(f"{TRAIN_FMRI.format('lh')}: cannot be read as a .npy file")


def test_file_replaced_after_reading_is_caught(tiny):
    root, exp = tiny
    data = read_subject(root, 1)
    np.save(root / TRAIN_FMRI.format("lh"), exp["train"]["lh"][:, :-1])
    with pytest.raises(DatasetError) as info:
        data.responses("train")
    assert str(info.value).startswith(
        f"{TRAIN_FMRI.format('lh')}: shape (12, 199), but expected (12, 200) "
        "as when the subject was read"
    )


def test_paths_may_be_strings(tiny):
    root, _ = tiny
    assert read_subject(os.fspath(root), "subj01").root == root
