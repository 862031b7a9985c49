"""A tiny synthetic Algonauts 2023 dataset in the exact on-disk layout.

Used by the reader's tests and available to any test that needs a dataset on disk::

    from algonauts_fixture import write_tiny_algonauts
    expected = write_tiny_algonauts(tmp_path, subjects=(1, 2))

The layout follows ``shared/REFERENCE.md`` section 2. Hemispheres get different vertex
counts by default so that a swapped lh/rh cannot pass a shape check by accident.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HEMISPHERES = ("lh", "rh")

# ROI names per class, from the Algonauts 2023 mapping files (REFERENCE.md section 2);
# label k is the k-th name, 0 is 'Unknown'.
ROI_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "prf-visualrois": ("V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"),
    "floc-bodies": ("EBA", "FBA-1", "FBA-2", "mTL-bodies"),
    "floc-faces": ("OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"),
    "floc-places": ("OPA", "PPA", "RSC"),
    "floc-words": ("OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"),
    "streams": (
        "early",
        "midventral",
        "midlateral",
        "midparietal",
        "ventral",
        "lateral",
        "parietal",
    ),
}


def write_tiny_algonauts(
    root: str | Path,
    subjects: tuple[int, ...] = (1,),
    n_train: int = 12,
    n_test: int = 5,
    n_fsaverage: int = 642,
    n_vertices: tuple[int, int] = (200, 230),
    *,
    roi_classes: tuple[str, ...] = tuple(ROI_CLASS_NAMES),
    with_test_fmri: bool = True,
    with_noise_ceiling: bool = True,
    with_fsaverage_rois: bool = True,
    image_size: int = 8,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Write a synthetic dataset under ``root`` and return what a reader should find.

    Parameters
    ----------
    root : path
        Dataset root; ``subjXX`` folders are created inside.
    subjects : tuple of int
        Subject numbers to write.
    n_train, n_test : int
        Images (and fMRI rows) per split.
    n_fsaverage : int
        Vertices per hemisphere of the fsaverage mesh (642 is fsaverage3).
    n_vertices : (int, int)
        Challenge-space vertices of lh and rh (1s in the all-vertices masks).
    roi_classes : tuple of str
        ROI classes to write (challenge space, fsaverage space and mapping).
    with_test_fmri, with_noise_ceiling : bool
        False gives a challenge-era copy without test responses / noise ceiling.
    with_fsaverage_rois : bool
        Also write ``<hemi>.<class>_fsaverage_space.npy``.
    image_size : int
        Side of the random RGB PNG stimuli, in pixels.
    seed : int
        Base seed; each subject gets ``seed + subject``.

    Returns
    -------
    expected : dict of str to dict
        Per subject folder name (``"subj01"``): ``train_nsd_ids`` (n_train,),
        ``test_nsd_ids`` (n_test,), ``mask`` {hemi: bool (n_fsaverage,)}, ``train`` and
        ``test`` {hemi: float32 (n_images, n_vertices_hemi)} (``test`` empty without test
        fMRI), ``noise_ceiling`` {hemi: float32 (n_vertices_hemi,)} (empty without),
        ``roi_challenge`` and ``roi_fsaverage`` {class: {hemi: int array}} and
        ``roi_names`` {class: {label: name}}.
    """
    root = Path(root)
    expected: dict[str, dict[str, Any]] = {}
    for number in subjects:
        rng = np.random.default_rng(seed + number)
        sid = f"subj{number:02d}"
        folder = root / sid
        train_dir = folder / "training_split"
        test_dir = folder / "test_split"
        roi_dir = folder / "roi_masks"
        for d in (
            train_dir / "training_fmri",
            train_dir / "training_images",
            test_dir / "test_images",
            roi_dir,
        ):
            d.mkdir(parents=True, exist_ok=True)

        # NSD ids are 0-based and unique across the two splits of one subject.
        nsd_ids = rng.choice(73000, size=n_train + n_test, replace=False)
        train_ids, test_ids = nsd_ids[:n_train], nsd_ids[n_train:]
        for split, word, ids in (("train", "training", train_ids), ("test", "test", test_ids)):
            image_dir = (train_dir if split == "train" else test_dir) / f"{word}_images"
            for i, nsd_id in enumerate(ids):
                pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(
                    image_dir / f"{split}-{i + 1:04d}_nsd-{nsd_id:05d}.png"
                )

        exp: dict[str, Any] = {
            "train_nsd_ids": train_ids,
            "test_nsd_ids": test_ids,
            "mask": {},
            "train": {},
            "test": {},
            "noise_ceiling": {},
            "roi_challenge": {},
            "roi_fsaverage": {},
            "roi_names": {},
        }
        for h, n in zip(HEMISPHERES, n_vertices, strict=True):
            mask = np.zeros(n_fsaverage, dtype=bool)
            mask[rng.choice(n_fsaverage, size=n, replace=False)] = True
            # Stored as int 0/1, as the challenge files are.
            np.save(roi_dir / f"{h}.all-vertices_fsaverage_space.npy", mask.astype(np.int64))
            exp["mask"][h] = mask

            train = rng.standard_normal((n_train, n)).astype(np.float32)
            np.save(train_dir / "training_fmri" / f"{h}_training_fmri.npy", train)
            exp["train"][h] = train
            if with_test_fmri:
                test = rng.standard_normal((n_test, n)).astype(np.float32)
                (test_dir / "test_fmri").mkdir(exist_ok=True)
                np.save(test_dir / "test_fmri" / f"{h}_test_fmri.npy", test)
                exp["test"][h] = test
            if with_noise_ceiling:
                nc = rng.uniform(0, 1, n).astype(np.float32)
                (test_dir / "noise_ceiling").mkdir(exist_ok=True)
                np.save(test_dir / "noise_ceiling" / f"{h}_noise_ceiling.npy", nc)
                exp["noise_ceiling"][h] = nc

        for cls in roi_classes:
            names = {0: "Unknown", **{k + 1: name for k, name in enumerate(ROI_CLASS_NAMES[cls])}}
            np.save(roi_dir / f"mapping_{cls}.npy", names)  # pickled dict, as the challenge's
            exp["roi_names"][cls] = names
            exp["roi_challenge"][cls] = {}
            exp["roi_fsaverage"][cls] = {}
            for h in HEMISPHERES:
                # About half the vertices outside the class (label 0), like real ROIs.
                fs_labels = rng.integers(1, len(names), n_fsaverage)
                fs_labels[rng.random(n_fsaverage) < 0.5] = 0
                challenge = fs_labels[exp["mask"][h]]
                np.save(roi_dir / f"{h}.{cls}_challenge_space.npy", challenge)
                if with_fsaverage_rois:
                    np.save(roi_dir / f"{h}.{cls}_fsaverage_space.npy", fs_labels)
                exp["roi_challenge"][cls][h] = challenge
                exp["roi_fsaverage"][cls][h] = fs_labels
        expected[sid] = exp
    return expected
