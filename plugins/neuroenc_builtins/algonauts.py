"""Reader for the Natural Scenes Dataset (NSD) as packaged by the Algonauts 2023 challenge.

The layout (``shared/REFERENCE.md`` section 2; Algonauts 2023 devkit, gifale95/algonauts_2023)
is one folder per subject::

    subjXX/training_split/training_fmri/{lh,rh}_training_fmri.npy   (n_train, n_vertices_hemi)
    subjXX/training_split/training_images/train-0001_nsd-00013.png
    subjXX/test_split/test_images/test-0001_nsd-00845.png
    subjXX/test_split/test_fmri/{lh,rh}_test_fmri.npy               optional (withheld in
                                                                    the challenge; the devkit
                                                                    rebuilds it from NSD)
    subjXX/test_split/noise_ceiling/{lh,rh}_noise_ceiling.npy       optional, fraction in [0, 1]
    subjXX/roi_masks/{lh,rh}.all-vertices_fsaverage_space.npy       0/1 over fsaverage vertices
    subjXX/roi_masks/{lh,rh}.<class>_challenge_space.npy            int label per challenge vertex
    subjXX/roi_masks/{lh,rh}.<class>_fsaverage_space.npy            int label per fsaverage vertex
    subjXX/roi_masks/mapping_<class>.npy                            dict {label: ROI name}

"Challenge space" is the subset of fsaverage vertices selected by the all-vertices mask of
each hemisphere, in fsaverage order; the fMRI columns are challenge-space vertices.

:func:`read_subject` checks the whole folder once and fails with a :class:`DatasetError`
that names the file, what was found and what was expected, so that a broken download is
caught before hours of feature extraction. The fMRI files (up to ~1.5 GB each) are only
ever memory-mapped: shapes are read from the ``.npy`` header and values are checked in
row chunks.
"""

from __future__ import annotations

import os
import re
from functools import partial
from pickle import UnpicklingError
from pathlib import Path
from typing import Any, Literal

import numpy as np

from neuroenc.core.safe_load import UnsafePickleError, load_npy
from neuroenc.data.subject import (FSAVERAGE_MESHES, HEMISPHERES, DatasetError, ResponseBlock,
                                   SubjectData, roi_coordinate)

__all__ = [
    "HEMISPHERES",
    "ROI_CLASSES",
    "ROI_NAMES",
    "FSAVERAGE_MESHES",
    "NSD_VISUAL_FIELD_DEG",
    "DatasetError",
    "AlgonautsSubject",
    "SubjectData",
    "subject_id",
    "available_subjects",
    "read_subject",
]

#: ROI names per class in label order (label k is the k-th name, 0 is 'Unknown'), as in the
#: Algonauts 2023 ``mapping_<class>.npy`` files (REFERENCE.md section 2).
ROI_NAMES: dict[str, tuple[str, ...]] = {
    "prf-visualrois": ("V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"),
    "floc-bodies": ("EBA", "FBA-1", "FBA-2", "mTL-bodies"),
    "floc-faces": ("OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"),
    "floc-places": ("OPA", "PPA", "RSC"),
    "floc-words": ("OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"),
    "streams": ("early", "midventral", "midlateral", "midparietal", "ventral", "lateral", "parietal"),
}
ROI_CLASSES = tuple(ROI_NAMES)
#: Degrees of visual angle the NSD images span (Allen et al. 2022).
NSD_VISUAL_FIELD_DEG = 8.4

Split = Literal["train", "test"]

_SPLITS = ("train", "test")
_HEMISPHERE_WORDS = {"lh": "left hemisphere", "rh": "right hemisphere"}
# split -> (split folder, word used in the folder and file names)
_SPLIT_NAMES = {"train": ("training_split", "training"), "test": ("test_split", "test")}
_IMAGE_NAME = re.compile(r"(train|test)-(\d+)_nsd-(\d+)\.png")
_SUBJECT_FOLDER = re.compile(r"subj\d{2}")
# Chunk size for the NaN/inf scan of memory-mapped fMRI files: large enough to be fast,
# small enough that a 1.5 GB file never sits in RAM at once. Tests shrink it.
_CHECK_CHUNK_BYTES = 64 * 2**20


def subject_id(subject: int | str) -> str:
    """Return the subject folder name, e.g. ``"subj01"``.

    Parameters
    ----------
    subject : int or str
        A subject number (``1``), its string (``"1"``, ``"01"``) or the folder name
        (``"subj01"``).

    Raises
    ------
    DatasetError
        If ``subject`` is none of these forms; the message names the value.
    """
    number: int | None = None
    # bool is an int subclass; True meaning subj01 would hide a bug at the call site.
    if isinstance(subject, (int, np.integer)) and not isinstance(subject, (bool, np.bool_)):
        number = int(subject)
    elif isinstance(subject, str):
        match = re.fullmatch(r"(?:subj)?0*(\d{1,2})", subject.strip())
        if match is not None:
            number = int(match.group(1))
    if number is None or not 1 <= number <= 99:
        raise DatasetError(
            f"subject {subject!r}: not a subject identifier; expected a number from 1 to 99 "
            "or a folder name, e.g. 1, '1' or 'subj01'"
        )
    return f"subj{number:02d}"


def available_subjects(root: str | os.PathLike[str]) -> list[str]:
    """Return the ``subjXX`` folder names present in ``root``, sorted.

    Raises
    ------
    DatasetError
        If ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"{root}: dataset root not found; expected a folder holding subj01 ... subj08"
        )
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and _SUBJECT_FOLDER.fullmatch(p.name)
    )


class AlgonautsSubject(SubjectData):
    """One subject of the Algonauts 2023 dataset, checked and ready to read.

    A :class:`neuroenc.data.subject.SubjectData` (what every model sees) with the
    challenge's own views on top: per-hemisphere responses and noise ceilings, the
    fsaverage masks, integer ROI labels and their mappings, NSD ids.

    Images are listed and small arrays (masks, ROI labels) are held in memory; fMRI
    responses are read from disk on request by :meth:`responses`.

    Attributes
    ----------
    root : Path
        Dataset root (the folder holding ``subjXX``).
    subject : str
        Subject folder name, e.g. ``"subj01"``.
    train_images, test_images : list of Path
        Stimulus images sorted by challenge index (row ``i`` of the responses is image
        ``i``). ``test_images`` is empty if the copy has no ``test_split/test_images``.
    train_nsd_ids, test_nsd_ids : ndarray of int of shape (n_train,) / (n_test,)
        0-based NSD image ids parsed from the file names (also ``image_ids[split]``).
    fsaverage_mask : dict of str to ndarray of bool of shape (n_fsaverage,)
        Per hemisphere, which fsaverage vertices are challenge vertices.
    roi_labels : dict of str to dict of str to ndarray of int of shape (n_vertices_hemi,)
        ROI class -> hemisphere -> challenge-space label (0: not in this class). Only the
        classes present in the copy.
    roi_names : dict of str to dict of int to str
        ROI class -> {label: ROI name}, as in ``mapping_<class>.npy`` (0: ``'Unknown'``).
    """

    def __init__(self, *, root: Path, subject: str, train_images: list[Path],
                 test_images: list[Path], train_nsd_ids: np.ndarray, test_nsd_ids: np.ndarray,
                 fsaverage_mask: dict[str, np.ndarray],
                 roi_labels: dict[str, dict[str, np.ndarray]],
                 roi_names: dict[str, dict[int, str]],
                 fmri_files: dict[tuple[str, str], Path],
                 noise_ceiling_files: dict[str, Path],
                 metadata: dict[str, Any] | None = None) -> None:
        self.train_nsd_ids = train_nsd_ids
        self.test_nsd_ids = test_nsd_ids
        self.fsaverage_mask = fsaverage_mask
        self.roi_labels = roi_labels
        self.roi_names = roi_names
        # (split, hemisphere) -> fMRI file; a test entry exists only if the copy has test fMRI.
        self._fmri_files = fmri_files
        # hemisphere -> noise-ceiling file; empty if the copy has none.
        self._noise_ceiling_files = noise_ceiling_files
        n_images = {"train": len(train_images), "test": len(test_images)}
        blocks = {}
        for split in _SPLITS:
            if all((split, h) in fmri_files for h in HEMISPHERES):
                blocks[split] = [
                    ResponseBlock(open=partial(self._open_fmri, split, h, n_images[split]),
                                  n_units=self.n_vertices[h], file=fmri_files[split, h])
                    for h in HEMISPHERES]
        mesh = FSAVERAGE_MESHES[len(fsaverage_mask[HEMISPHERES[0]])]
        super().__init__(
            subject=subject,
            images={"train": train_images, "test": test_images},
            responses_blocks=blocks,
            unit_coords=self._unit_coords(),
            image_ids={"train": train_nsd_ids, "test": test_nsd_ids},
            noise_ceiling_source=(self._read_noise_ceiling
                                  if all(h in noise_ceiling_files for h in HEMISPHERES) else None),
            roi_order={cls: [names[k] for k in sorted(names) if k != 0]
                       for cls, names in roi_names.items()},
            metadata={"dataset": "algonauts2023", "space": mesh, "fsaverage_mesh": mesh,
                      "visual_field_deg": NSD_VISUAL_FIELD_DEG, **(metadata or {})},
            root=root,
        )

    @property
    def n_vertices(self) -> dict[str, int]:
        """Number of challenge-space vertices per hemisphere (fMRI columns)."""
        return {h: int(self.fsaverage_mask[h].sum()) for h in HEMISPHERES}

    @property
    def fsaverage_mesh(self) -> str:
        """Name of the fsaverage mesh the mask lives on, e.g. ``"fsaverage"``."""
        return FSAVERAGE_MESHES[len(self.fsaverage_mask[HEMISPHERES[0]])]

    def responses(self, split: Split, hemisphere: str | None = None) -> np.ndarray:
        """Return the fMRI responses of one split.

        Parameters
        ----------
        split : {"train", "test"}
        hemisphere : {"lh", "rh"} or None
            One hemisphere, or None for both.

        Returns
        -------
        responses : ndarray of shape (n_images, n_vertices)
            With ``hemisphere`` given: a read-only ``np.memmap`` of shape
            (n_images, n_vertices_hemi), nothing loaded yet. With None: float32 in RAM,
            shape (n_images, n_lh + n_rh), left-hemisphere columns first (the order of
            :meth:`vertex_coords`).

        Raises
        ------
        DatasetError
            If the split has no fMRI in this copy, or a file changed shape since
            :func:`read_subject` checked it.
        """
        hemispheres = _check_hemisphere(hemisphere)
        if split not in _SPLITS:
            raise ValueError(f"split {split!r}: unknown split; expected one of {_SPLITS}")
        n_images = len(self.train_images if split == "train" else self.test_images)
        if hemisphere is not None:
            return self._open_fmri(split, hemispheres[0], n_images)
        if not self.has_responses(split):
            self._open_fmri(split, next(h for h in HEMISPHERES if (split, h) not in self._fmri_files),
                            n_images)  # raises the file-naming error
        return super().responses(split)

    def fmri_files(self, split: Split) -> dict[str, Path]:
        """Return ``{hemisphere: path}`` of a split's fMRI files (empty when absent)."""
        return {h: self._fmri_files[split, h] for h in HEMISPHERES if (split, h) in self._fmri_files}

    def noise_ceiling(self, hemisphere: str | None = None) -> np.ndarray | None:
        """Return the noise ceiling as a fraction in [0, 1], or None if the copy has none.

        Parameters
        ----------
        hemisphere : {"lh", "rh"} or None
            One hemisphere, or None for both (left-hemisphere vertices first).

        Returns
        -------
        noise_ceiling : ndarray of float of shape (n_vertices,) or None
            Shape (n_vertices_hemi,) for one hemisphere, (n_lh + n_rh,) for both.
        """
        if not self.has_noise_ceiling:
            return None
        if hemisphere is None:
            return self._read_noise_ceiling()
        return np.load(self._noise_ceiling_files[_check_hemisphere(hemisphere)[0]])

    def _read_noise_ceiling(self) -> np.ndarray:
        return np.concatenate([np.load(self._noise_ceiling_files[h]) for h in HEMISPHERES])

    def _unit_coords(self) -> dict[str, np.ndarray]:
        """Coordinates of the concatenated vertex axis (left hemisphere first).

        ``"hemisphere"`` (str ``'lh'``/``'rh'``); ``"challenge_index"`` (int, index within
        the hemisphere's challenge space, i.e. fMRI column of that hemisphere);
        ``"fsaverage_index"`` (int, vertex of the hemisphere's fsaverage mesh, through
        the all-vertices mask); and for every ROI class present
        ``"roi_" + cls.replace("-", "_")`` (str ROI name, ``""`` where the label is 0).
        """
        n = self.n_vertices
        coords: dict[str, np.ndarray] = {
            "hemisphere": np.concatenate([np.full(n[h], h) for h in HEMISPHERES]),
            "challenge_index": np.concatenate([np.arange(n[h]) for h in HEMISPHERES]),
            "fsaverage_index": np.concatenate(
                [np.flatnonzero(self.fsaverage_mask[h]) for h in HEMISPHERES]
            ),
        }
        for cls, labels in self.roi_labels.items():
            all_labels = np.concatenate([labels[h] for h in HEMISPHERES])
            used, inverse = np.unique(all_labels, return_inverse=True)
            # Label 0 means "not in this class"; '' keeps the coordinate a plain string
            # array (xarray/netCDF friendly) while testing falsy.
            names = [self.roi_names[cls][int(label)] if label != 0 else "" for label in used]
            coords[roi_coordinate(cls)] = np.array(names, dtype=str)[inverse]
        return coords

    def _open_fmri(self, split: str, hemisphere: str, n_images: int) -> np.ndarray:
        path = self._fmri_files.get((split, hemisphere))
        if path is None:
            folder, word = _SPLIT_NAMES[split]
            expected = (
                self.root / self.subject / folder / f"{word}_fmri" / f"{hemisphere}_{word}_fmri.npy"
            )
            raise DatasetError(
                f"{_relative(expected, self.root)}: not found; this copy has no {split} "
                "responses (challenge-era copies withhold the test fMRI; the Algonauts "
                "2023 devkit rebuilds it from NSD)"
            )
        array = np.load(path, mmap_mode="r")
        expected_shape = (n_images, self.n_vertices[hemisphere])
        # Cheap (header only) guard against a file replaced after read_subject checked it.
        if array.shape != expected_shape:
            raise DatasetError(
                f"{_relative(path, self.root)}: shape {array.shape}, but expected "
                f"{expected_shape} as when the subject was read; re-run read_subject"
            )
        return array




def read_subject(
    root: str | os.PathLike[str], subject: int | str, *, check_values: bool = True,
    metadata: dict[str, Any] | None = None,
) -> AlgonautsSubject:
    """Return one subject of the Algonauts 2023 dataset after checking its files.

    Parameters
    ----------
    root : path
        Dataset root, the folder holding ``subj01`` ... ``subj08``.
    subject : int or str
        ``1``, ``"1"`` or ``"subj01"``.
    check_values : bool, default True
        Scan every fMRI file for NaN/inf (in row chunks on the memmap). This reads the
        whole files once (~several GB per subject); set False to check shapes only.
        Masks, ROI labels and noise ceilings are small and always checked.
    metadata : dict, optional
        Overrides of the subject's metadata (e.g. the demo's ``dataset`` name and
        ``visual_field_deg``).

    Returns
    -------
    data : AlgonautsSubject

    Raises
    ------
    DatasetError
        On the first inconsistency: missing subject folder (available ones listed),
        missing required file or folder (``training_split`` and ``roi_masks`` are
        required; test fMRI, noise ceiling and each ROI class are optional), image
        names not ``train-0001_nsd-00013.png`` or indices not contiguous from 1, fMRI
        not 2-D float or rows != images or columns != mask vertices, NaN/inf in fMRI,
        ROI arrays of the wrong length or with labels missing from the mapping, an ROI
        class or optional file present for one hemisphere only, noise ceiling of the
        wrong shape or outside [0, 1].
    """
    root = Path(root)
    sid = subject_id(subject)
    present = available_subjects(root)
    if sid not in present:
        raise DatasetError(
            f"{sid}: no such subject folder in {root}; available: "
            f"{', '.join(present) if present else 'none'}"
        )
    checker = _SubjectChecker(root, sid, check_values)

    masks = checker.read_masks()
    n_vertices = {h: int(masks[h].sum()) for h in HEMISPHERES}
    train_images, train_ids = checker.read_images("train", required=True)
    test_images, test_ids = checker.read_images("test", required=False)
    n_images = {"train": len(train_images), "test": len(test_images)}

    fmri_files: dict[tuple[str, str], Path] = {}
    for split in _SPLITS:
        paths = checker.both_or_none(
            {h: checker.fmri_path(split, h) for h in HEMISPHERES},
            required=split == "train",
            what=f"{_SPLIT_NAMES[split][1]} responses",
        )
        for h, path in paths.items():
            checker.check_fmri(path, split, h, n_images[split], n_vertices[h])
            fmri_files[(split, h)] = path

    roi_labels, roi_names = checker.read_rois(masks, n_vertices)
    noise_ceiling_files = checker.check_noise_ceiling(n_vertices)

    return AlgonautsSubject(
        root=root,
        subject=sid,
        train_images=train_images,
        test_images=test_images,
        train_nsd_ids=train_ids,
        test_nsd_ids=test_ids,
        fsaverage_mask=masks,
        roi_labels=roi_labels,
        roi_names=roi_names,
        fmri_files=fmri_files,
        noise_ceiling_files=noise_ceiling_files,
        metadata=metadata,
    )


# --------------------------------------------------------------------------- helpers


def _check_hemisphere(hemisphere: str | None) -> tuple[str, ...]:
    if hemisphere is None:
        return HEMISPHERES
    if hemisphere not in HEMISPHERES:
        raise ValueError(
            f"hemisphere {hemisphere!r}: unknown hemisphere; expected one of {HEMISPHERES} or None"
        )
    return (hemisphere,)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _listing(folder: Path, limit: int = 8) -> str:
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return "nothing"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} entries)" if len(names) > limit else "")


def _describe(obj: Any) -> str:
    if isinstance(obj, np.ndarray):
        return f"an array of dtype {obj.dtype} and shape {obj.shape}"
    return f"a {type(obj).__name__}"


def _format_labels(labels: Any, limit: int = 12) -> str:
    labels = [int(v) for v in labels]
    shown = ", ".join(str(v) for v in labels[:limit])
    return shown + (", ..." if len(labels) > limit else "")


class _SubjectChecker:
    """Checks one subject folder; every error names its path relative to the root."""

    def __init__(self, root: Path, subject: str, check_values: bool) -> None:
        self.root = root
        self.folder = root / subject
        self.check_values = check_values
        self.roi_folder = self.folder / "roi_masks"

    def rel(self, path: Path) -> str:
        return _relative(path, self.root)

    # ---- existence and loading

    def missing(self, path: Path, what: str, note: str = "") -> DatasetError:
        """Error for an expected path that does not exist, with what its folder holds."""
        parent = path.parent
        while not parent.is_dir() and parent != self.root:
            parent = parent.parent
        # Point at the highest missing folder, or list the folder that does exist, so a
        # misnamed file or a folder unpacked one level too deep is visible at once.
        if parent == path.parent:
            where = f"{self.rel(parent)} holds: {_listing(parent)}"
        else:
            first_missing = path.relative_to(parent).parts[0]
            where = f"folder {self.rel(parent / first_missing)} does not exist"
        kind = "folder" if path.suffix == "" else "file"
        return DatasetError(f"{self.rel(path)}: {kind} not found{note}; expected {what} ({where})")

    def require(self, path: Path, what: str) -> Path:
        if not path.exists():
            raise self.missing(path, what)
        return path

    def both_or_none(self, paths: dict[str, Path], *, required: bool, what: str) -> dict[str, Path]:
        """Return the per-hemisphere paths, all of them or none (if not required)."""
        present = {h: p for h, p in paths.items() if p.exists()}
        if required or present:
            for h, path in paths.items():
                if h not in present:
                    other = next(iter(present.values()), None)
                    note = f", but {self.rel(other)} exists" if other is not None else ""
                    raise self.missing(path, f"the {what} of the {_HEMISPHERE_WORDS[h]}", note)
        return present

    def load(self, path: Path, what: str, *, mmap: bool = False, pickle: bool = False) -> Any:
        try:
            if pickle:  # object arrays through an allow-list: a dataset must not run code
                obj = load_npy(path, mmap_mode="r" if mmap else None)
            else:
                obj = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except UnsafePickleError as err:
            raise DatasetError(
                f"{self.rel(path)}: refused to load: {err}; expected {what}. Loading it "
                "would have run code named in the file: delete it and take the file from "
                "the challenge release"
            ) from None
        except (OSError, ValueError, EOFError, UnpicklingError) as err:
            raise DatasetError(
                f"{self.rel(path)}: cannot be read as a .npy file ({err}); expected {what}"
            ) from err
        if not isinstance(obj, np.ndarray):  # e.g. an .npz archive saved under .npy
            raise DatasetError(
                f"{self.rel(path)}: holds {_describe(obj)}; expected {what} saved with np.save"
            )
        return obj

    # ---- masks

    def read_masks(self) -> dict[str, np.ndarray]:
        self.require(self.roi_folder, "the ROI masks folder of the subject")
        masks: dict[str, np.ndarray] = {}
        for h in HEMISPHERES:
            path = self.require(
                self.roi_folder / f"{h}.all-vertices_fsaverage_space.npy",
                f"the 0/1 mask of challenge vertices on fsaverage ({_HEMISPHERE_WORDS[h]})",
            )
            masks[h] = self.read_mask(path)
        lh, rh = (self.roi_folder / f"{h}.all-vertices_fsaverage_space.npy" for h in HEMISPHERES)
        if len(masks["lh"]) != len(masks["rh"]):
            raise DatasetError(
                f"{self.rel(rh)}: {len(masks['rh'])} values, but {self.rel(lh)} has "
                f"{len(masks['lh'])}; expected both hemispheres on the same fsaverage mesh"
            )
        return masks

    def read_mask(self, path: Path) -> np.ndarray:
        mask = self.load(path, "a 0/1 mask over fsaverage vertices")
        if mask.ndim != 1:
            raise DatasetError(
                f"{self.rel(path)}: shape {mask.shape}, but expected a 1-D mask with one "
                "value per fsaverage vertex"
            )
        if len(mask) not in FSAVERAGE_MESHES:
            meshes = ", ".join(f"{n} ({name})" for n, name in FSAVERAGE_MESHES.items())
            raise DatasetError(
                f"{self.rel(path)}: {len(mask)} values, but expected one per vertex of an "
                f"fsaverage mesh: {meshes}"
            )
        if mask.dtype != bool:
            if not (
                np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)
            ):
                raise DatasetError(
                    f"{self.rel(path)}: dtype {mask.dtype}, but expected a 0/1 integer mask"
                )
            bad = np.unique(mask[(mask != 0) & (mask != 1)])
            if bad.size:
                raise DatasetError(
                    f"{self.rel(path)}: values {', '.join(str(v) for v in bad[:5])}, but "
                    "expected a 0/1 mask"
                )
        mask = mask.astype(bool)
        if not mask.any():
            raise DatasetError(
                f"{self.rel(path)}: selects no vertex; expected a 0/1 mask with the "
                "challenge vertices set to 1"
            )
        return mask

    # ---- images

    def read_images(self, split: str, *, required: bool) -> tuple[list[Path], np.ndarray]:
        folder_name, word = _SPLIT_NAMES[split]
        folder = self.folder / folder_name / f"{word}_images"
        if not folder.is_dir():
            if required:
                raise self.missing(folder, f"the {word} images")
            return [], np.zeros(0, dtype=np.int64)
        # Hidden files (.DS_Store, ._x.png from macOS archives) are cruft, not images.
        files = [p for p in folder.iterdir() if not p.name.startswith(".")]
        if not files and required:
            raise DatasetError(
                f"{self.rel(folder)}: no images; expected files named "
                f"'{split}-0001_nsd-00013.png' (index from 1, 0-based NSD id)"
            )
        indices, nsd_ids = [], []
        for path in files:
            match = _IMAGE_NAME.fullmatch(path.name)
            if match is None or match.group(1) != split:
                raise DatasetError(
                    f"{self.rel(path)}: file name does not match "
                    f"'{split}-<index>_nsd-<NSD id>.png'; expected e.g. "
                    f"'{split}-0001_nsd-00013.png'"
                )
            indices.append(int(match.group(2)))
            nsd_ids.append(int(match.group(3)))
        order = np.argsort(indices, kind="stable")
        index_array = np.asarray(indices, dtype=np.int64)[order]
        expected = np.arange(1, len(files) + 1)
        if not np.array_equal(index_array, expected):
            # Row i of the fMRI is image i+1; a gap or a duplicate would shift every
            # later row onto the wrong image, silently.
            values, counts = np.unique(index_array, return_counts=True)
            problems = []
            duplicates = values[counts > 1]
            if duplicates.size:
                problems.append(f"duplicate indices {_format_labels(duplicates)}")
            absent = np.setdiff1d(expected, values)
            if absent.size:
                problems.append(f"missing indices {_format_labels(absent)}")
            beyond = values[(values < 1) | (values > len(files))]
            if beyond.size:
                problems.append(f"indices out of range {_format_labels(beyond)}")
            raise DatasetError(
                f"{self.rel(folder)}: {len(files)} images with {'; '.join(problems)}; "
                f"expected contiguous indices 1..{len(files)}"
            )
        images = [files[i] for i in order]
        return images, np.asarray(nsd_ids, dtype=np.int64)[order]

    # ---- fMRI

    def fmri_path(self, split: str, hemisphere: str) -> Path:
        folder, word = _SPLIT_NAMES[split]
        return self.folder / folder / f"{word}_fmri" / f"{hemisphere}_{word}_fmri.npy"

    def check_fmri(
        self, path: Path, split: str, hemisphere: str, n_images: int, n_vertices: int
    ) -> None:
        word = _SPLIT_NAMES[split][1]
        # mmap: only the header is read here; values are scanned chunk by chunk below.
        array = self.load(path, "a float32 array (n_images, n_vertices)", mmap=True)
        rel = self.rel(path)
        if array.ndim != 2:
            raise DatasetError(
                f"{rel}: shape {array.shape}, but expected a 2-D array (n_images, n_vertices)"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise DatasetError(
                f"{rel}: dtype {array.dtype}, but expected floating-point responses (float32)"
            )
        if array.shape[0] != n_images:
            raise DatasetError(f"{rel}: {array.shape[0]} rows, but {n_images} {word} images")
        if array.shape[1] != n_vertices:
            mask = self.roi_folder / f"{hemisphere}.all-vertices_fsaverage_space.npy"
            raise DatasetError(
                f"{rel}: {array.shape[1]} columns, but {self.rel(mask)} selects "
                f"{n_vertices} vertices"
            )
        if self.check_values:
            self.check_finite(array, rel)

    @staticmethod
    def check_finite(array: np.ndarray, rel: str) -> None:
        n_rows, n_cols = array.shape
        step = max(1, _CHECK_CHUNK_BYTES // max(1, n_cols * array.dtype.itemsize))
        n_nan = n_inf = 0
        first: tuple[int, int] | None = None
        for start in range(0, n_rows, step):
            chunk = np.asarray(array[start : start + step])
            bad = ~np.isfinite(chunk)
            if not bad.any():
                continue
            nan = int(np.isnan(chunk).sum())
            n_nan += nan
            n_inf += int(bad.sum()) - nan
            if first is None:
                # argmax over the C-order ravel: the first bad value in row-major order.
                row, col = divmod(int(np.argmax(bad)), n_cols)
                first = (start + row, col)
        if first is not None:
            raise DatasetError(
                f"{rel}: {n_nan + n_inf} non-finite values ({n_nan} NaN, {n_inf} inf), "
                f"first at row {first[0]}, column {first[1]} (0-based); expected finite "
                "responses (read_subject(..., check_values=False) skips this check)"
            )

    # ---- ROIs

    def read_rois(
        self, masks: dict[str, np.ndarray], n_vertices: dict[str, int]
    ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[int, str]]]:
        roi_labels: dict[str, dict[str, np.ndarray]] = {}
        roi_names: dict[str, dict[int, str]] = {}
        for cls in ROI_CLASSES:
            challenge = {h: self.roi_folder / f"{h}.{cls}_challenge_space.npy" for h in HEMISPHERES}
            fsaverage = {h: self.roi_folder / f"{h}.{cls}_fsaverage_space.npy" for h in HEMISPHERES}
            if not any(p.exists() for p in (*challenge.values(), *fsaverage.values())):
                continue  # class absent from this copy: allowed
            what = f"ROI class '{cls}' challenge-space labels"
            challenge = self.both_or_none(challenge, required=True, what=what)
            what = f"ROI class '{cls}' fsaverage-space labels"
            fsaverage = self.both_or_none(fsaverage, required=False, what=what)
            mapping_path = self.require(
                self.roi_folder / f"mapping_{cls}.npy",
                f"the label -> name mapping of ROI class '{cls}' "
                f"(present: {self.rel(challenge['lh'])})",
            )
            names = self.read_mapping(mapping_path)
            labels: dict[str, np.ndarray] = {}
            for h in HEMISPHERES:
                mask_rel = self.rel(self.roi_folder / f"{h}.all-vertices_fsaverage_space.npy")
                labels[h] = self.read_labels(
                    challenge[h], n_vertices[h], f"{mask_rel} selects", names, mapping_path
                )
                if h in fsaverage:
                    self.read_labels(
                        fsaverage[h],
                        len(masks[h]),
                        f"the fsaverage mesh of {mask_rel} has",
                        names,
                        mapping_path,
                    )
            roi_labels[cls] = labels
            roi_names[cls] = names
        return roi_labels, roi_names

    def read_mapping(self, path: Path) -> dict[int, str]:
        what = "a dict {label: ROI name}"
        # The challenge ships the mapping as a pickled dict inside a 0-d object array.
        obj = self.load(path, what, pickle=True)
        if obj.dtype == object and obj.shape == ():
            obj = obj.item()
        if not isinstance(obj, dict):
            raise DatasetError(
                f"{self.rel(path)}: holds {_describe(obj)}, but expected {what} "
                "(np.save(path, mapping))"
            )
        names: dict[int, str] = {}
        for key, name in obj.items():
            try:
                label = int(key)
            except (TypeError, ValueError):
                label = None
            if label is None or label != key or not isinstance(name, str):
                raise DatasetError(
                    f"{self.rel(path)}: entry {key!r}: {name!r}, but expected integer labels "
                    "mapped to ROI names (str)"
                )
            names[label] = str(name)
        return names

    def read_labels(
        self,
        path: Path,
        n_expected: int,
        expected_source: str,
        names: dict[int, str],
        mapping_path: Path,
    ) -> np.ndarray:
        rel = self.rel(path)
        array = self.load(path, "integer ROI labels, one per vertex")
        if array.ndim != 1:
            raise DatasetError(
                f"{rel}: shape {array.shape}, but expected a 1-D array of labels, one per vertex"
            )
        if len(array) != n_expected:
            raise DatasetError(
                f"{rel}: {len(array)} values, but {expected_source} {n_expected} vertices"
            )
        # Some copies store labels as floats; accept them only when they are whole numbers.
        if np.issubdtype(array.dtype, np.floating):
            if not (np.isfinite(array).all() and (array == np.round(array)).all()):
                raise DatasetError(f"{rel}: non-integer values, but expected integer ROI labels")
        elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            raise DatasetError(f"{rel}: dtype {array.dtype}, but expected integer ROI labels")
        labels = array.astype(np.int64)
        used, counts = np.unique(labels, return_counts=True)
        unknown = ~np.isin(used, list(names))
        if unknown.any():
            raise DatasetError(
                f"{rel}: labels {_format_labels(used[unknown])} on {int(counts[unknown].sum())} "
                f"vertices, but {self.rel(mapping_path)} names only labels "
                f"{_format_labels(sorted(names))}"
            )
        return labels

    # ---- noise ceiling

    def check_noise_ceiling(self, n_vertices: dict[str, int]) -> dict[str, Path]:
        folder = self.folder / "test_split" / "noise_ceiling"
        paths = self.both_or_none(
            {h: folder / f"{h}_noise_ceiling.npy" for h in HEMISPHERES},
            required=False,
            what="noise ceiling",
        )
        for h, path in paths.items():
            rel = self.rel(path)
            nc = self.load(path, "the noise ceiling per vertex, a fraction in [0, 1]")
            if nc.shape != (n_vertices[h],):
                mask = self.roi_folder / f"{h}.all-vertices_fsaverage_space.npy"
                raise DatasetError(
                    f"{rel}: shape {nc.shape}, but {self.rel(mask)} selects {n_vertices[h]} "
                    f"vertices; expected shape ({n_vertices[h]},)"
                )
            if not (np.issubdtype(nc.dtype, np.floating) or np.issubdtype(nc.dtype, np.integer)):
                raise DatasetError(f"{rel}: dtype {nc.dtype}, but expected a float noise ceiling")
            n_bad = int((~np.isfinite(nc)).sum())
            if n_bad:
                raise DatasetError(
                    f"{rel}: {n_bad} non-finite values (NaN or inf); expected a fraction in "
                    "[0, 1] per vertex"
                )
            low, high = float(nc.min()), float(nc.max())
            if low < 0 or high > 1:
                # Percent is the common mix-up (the challenge score is in percent).
                hint = (
                    "; values > 1 look like percent: divide by 100"
                    if low >= 0 and high <= 100
                    else ""
                )
                raise DatasetError(
                    f"{rel}: values from {low:.4g} to {high:.4g}, but expected a fraction "
                    f"in [0, 1]{hint}"
                )
        return paths
