"""One subject's data in the field's general terms: what every dataset reader produces.

A dataset plugin (Algonauts 2023, the embedded demo, the generic ``folder`` layout, or a
lab's own reader) returns a :class:`SubjectData`. Nothing downstream knows how the files
were laid out: models see stimuli and responses per split; results are labelled with
the unit coordinates; plots choose the surface or the volume from them.

Terms
-----
unit
    One measured time series: a surface vertex or a volume voxel. The results' axis is
    named ``vertex`` for both (the name analysis code has relied on since 0.1).
splits
    ``"train"`` (what models are fitted on) and ``"test"`` (scored once, when it has
    responses). Row ``i`` of a split's responses is the split's image ``i``.
unit coordinates
    Arrays of shape (n_units,), any of: ``hemisphere`` (``'lh'`` / ``'rh'``),
    ``fsaverage_index`` (vertex of the fsaverage mesh named by ``metadata['fsaverage_mesh']``),
    ``voxel_i`` / ``voxel_j`` / ``voxel_k`` (indices into a volume of shape
    ``metadata['volume_shape']`` with ``metadata['affine']`` to world space),
    ``mni_x`` / ``mni_y`` / ``mni_z`` (mm), one ``roi_<class>`` per ROI class (the ROI
    name, ``""`` outside the class), and any dataset-specific extra (e.g. Algonauts'
    ``challenge_index``).
metadata
    ``dataset`` (reader name), ``space`` (``'fsaverage5'``, ``'MNI152NLin2009cAsym'``,
    ``'native'`` ...), ``visual_field_deg`` (degrees of visual angle the images span,
    where known; NSD's span 8.4), and the keys named above.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "SPLITS",
    "HEMISPHERES",
    "FSAVERAGE_MESHES",
    "ROI_PREFIX",
    "DatasetError",
    "ResponseBlock",
    "SubjectData",
    "roi_coordinate",
    "check_unit_coords",
]

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")
HEMISPHERES = ("lh", "rh")
ROI_PREFIX = "roi_"
# Vertices per hemisphere of the icosahedral fsaverage meshes (FreeSurfer): the number
# of values of a surface map tells which mesh it lives on.
FSAVERAGE_MESHES = {
    642: "fsaverage3",
    2562: "fsaverage4",
    10242: "fsaverage5",
    40962: "fsaverage6",
    163842: "fsaverage",
}
_VOXEL = ("voxel_i", "voxel_j", "voxel_k")
_MNI = ("mni_x", "mni_y", "mni_z")


class DatasetError(ValueError):
    """A dataset does not have the expected layout or contents.

    The message starts with the offending path (relative to the dataset root where
    possible) or registry field, then says what was found, then what was expected, e.g.
    ``subj03/training_split/training_fmri/lh_training_fmri.npy: 9082 rows, but 9081
    training images``.
    """


def roi_coordinate(roi_class: str) -> str:
    """Return the coordinate name of an ROI class, e.g. ``'floc-faces'`` -> ``'roi_floc_faces'``."""
    return ROI_PREFIX + re.sub(r"[^0-9A-Za-z_]", "_", roi_class)


@dataclass(frozen=True)
class ResponseBlock:
    """A block of columns of one split's responses, opened on request.

    Parameters
    ----------
    open : callable
        ``open()`` returns an array-like of shape (n_images, n_block_units) that supports
        row slicing: a ``np.memmap``, an ``h5py.Dataset`` or an ndarray. Called each time
        responses are read, so large files are never held open or in RAM in between.
    n_units : int
        Columns of the block (checked when it is opened).
    file : Path or None
        The file it comes from (part of cache keys; None for in-memory data).
    """

    open: Callable[[], Any]
    n_units: int
    file: Path | None = None


@dataclass(eq=False, repr=False)
class SubjectData:
    """One subject's stimuli, responses, unit coordinates, ROIs and noise ceiling.

    Parameters
    ----------
    subject : str
        The subject id the reader serves, e.g. ``"subj01"`` or ``"sub-03"``.
    images : mapping of split to list of Path
        Stimulus image files per split, in response-row order. ``"train"`` is required;
        ``"test"`` may be empty (or absent).
    responses_blocks : mapping of split to list of ResponseBlock
        Per split with measured responses, the blocks whose columns, concatenated in
        order, give the (n_images, n_units) responses. A test split without entry has
        images but no responses (e.g. the challenge-era Algonauts download).
    unit_coords : mapping of str to ndarray of shape (n_units,)
        See the module docstring. Copied on :meth:`vertex_coords`.
    image_ids : mapping of split to ndarray of shape (n_images,)
        Stimulus ids (NSD ids, file stems ...). Default: the file stems.
    noise_ceiling : ndarray of shape (n_units,) or callable returning one, or None
        Fraction of explainable variance in [0, 1] of the test split's responses.
    trial_responses : mapping of split to callable, optional
        ``trial_responses[split]()`` returns single-trial responses of shape
        (n_repeats, n_images, n_units), NaN where an image had fewer repeats.
    roi_order : mapping of ROI class to sequence of str
        ROI names of each class in their conventional (label) order, for tables.
    metadata : dict
        See the module docstring.
    root : Path or None
        Dataset root, for messages.
    """

    subject: str
    images: Mapping[str, Sequence[Path]]
    responses_blocks: Mapping[str, Sequence[ResponseBlock]]
    unit_coords: Mapping[str, np.ndarray]
    image_ids: Mapping[str, np.ndarray] = field(default_factory=dict)
    noise_ceiling_source: np.ndarray | Callable[[], np.ndarray] | None = None
    trial_responses: Mapping[str, Callable[[], np.ndarray]] = field(default_factory=dict)
    roi_order: Mapping[str, Sequence[str]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None

    def __post_init__(self) -> None:
        if "train" not in self.images:
            raise DatasetError(f"{self.subject}: no training images; every subject needs a "
                               "'train' split")
        self.images = {s: list(self.images.get(s, [])) for s in SPLITS}
        self.unit_coords = check_unit_coords(self.unit_coords, self.subject)
        n_units = self.n_units
        for split, blocks in self.responses_blocks.items():
            if split not in SPLITS:
                raise DatasetError(f"{self.subject}: responses for unknown split {split!r}; "
                                   f"expected one of {SPLITS}")
            total = sum(b.n_units for b in blocks)
            if total != n_units:
                raise DatasetError(f"{self.subject}: {split} responses have {total} units, but "
                                   f"the unit coordinates describe {n_units}")
        ids = {}
        for split in SPLITS:
            given = self.image_ids.get(split)
            ids[split] = (np.asarray([p.stem for p in self.images[split]], dtype=str)
                          if given is None else np.asarray(given))
            if len(ids[split]) != len(self.images[split]):
                raise DatasetError(f"{self.subject}: {len(ids[split])} {split} image ids for "
                                   f"{len(self.images[split])} images")
        self.image_ids = ids

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(subject={self.subject!r}, n_train={len(self.train_images)}, "
                f"n_test={len(self.test_images)}, n_units={self.n_units}, "
                f"space={self.metadata.get('space')!r}, roi_classes={list(self.roi_classes)}, "
                f"has_test_responses={self.has_test_responses}, "
                f"has_noise_ceiling={self.has_noise_ceiling})")

    # ---- stimuli

    @property
    def train_images(self) -> list[Path]:
        """Training images in response-row order."""
        return self.images["train"]

    @property
    def test_images(self) -> list[Path]:
        """Test images in response-row order (empty if the dataset has none)."""
        return self.images["test"]

    # ---- units

    @property
    def n_units(self) -> int:
        """Number of units (vertices or voxels): the responses' columns."""
        return len(next(iter(self.unit_coords.values())))

    def vertex_coords(self) -> dict[str, np.ndarray]:
        """Return a copy of the unit coordinates, arrays of shape (n_units,)."""
        return {k: v.copy() for k, v in self.unit_coords.items()}

    @property
    def roi_classes(self) -> dict[str, str]:
        """Return ``{ROI class: coordinate name}`` for the classes this subject has."""
        named = {roi_coordinate(cls): cls for cls in self.roi_order}
        return {named.get(c, c[len(ROI_PREFIX):].replace("_", "-")): c
                for c in self.unit_coords if c.startswith(ROI_PREFIX)}

    def unit_blocks(self) -> dict[str, int]:
        """Return contiguous unit groups: ``{'lh': n_lh, 'rh': n_rh}`` or ``{'all': n}``.

        Surface data is grouped by hemisphere (left first, as the responses' columns);
        anything else is one group. Heads that fit each hemisphere separately use it.
        """
        hemi = self.unit_coords.get("hemisphere")
        if hemi is None:
            return {"all": self.n_units}
        groups: dict[str, int] = {}
        for value in hemi:
            groups[str(value)] = groups.get(str(value), 0) + 1
        order = list(dict.fromkeys(str(v) for v in hemi))
        bounds = np.cumsum([0] + [groups[g] for g in order])
        for g, start, stop in zip(order, bounds[:-1], bounds[1:]):
            if not (hemi[start:stop] == g).all():
                raise DatasetError(f"{self.subject}: hemisphere {g!r} units are not contiguous; "
                                   "readers must order units hemisphere by hemisphere")
        return {g: groups[g] for g in order}

    # ---- responses

    @property
    def has_test_responses(self) -> bool:
        """Whether the test split has measured responses (challenge-era copies do not)."""
        return bool(self.responses_blocks.get("test")) and bool(self.test_images)

    def has_responses(self, split: Split) -> bool:
        """Whether ``split`` has measured responses."""
        return bool(self.responses_blocks.get(split))

    def response_files(self, split: Split) -> list[Path]:
        """Return the files the split's responses are read from (for cache keys)."""
        return [b.file for b in self.responses_blocks.get(split, ()) if b.file is not None]

    def responses_identity(self, split: Split) -> list:
        """Return what identifies a split's responses, for cache keys of trained models.

        Files by path, size and modification time (hashing gigabytes of fMRI per fit
        would cost more than the fit); in-memory blocks by a digest of their bytes.
        """
        out: list = []
        for block in self.responses_blocks.get(split, ()):
            if block.file is not None:
                stat = Path(block.file).stat()
                out.append([str(block.file), stat.st_size, stat.st_mtime_ns])
            else:
                array = np.ascontiguousarray(block.open())
                out.append(hashlib.sha256(array.view(np.uint8)).hexdigest()[:32])
        return out

    def responses(self, split: Split) -> np.ndarray:
        """Return a split's responses, float32 in RAM, shape (n_images, n_units).

        Raises
        ------
        DatasetError
            The split has no responses, or a file changed shape since it was checked.
        """
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: unknown split; expected one of {SPLITS}")
        blocks = self.responses_blocks.get(split)
        if not blocks:
            raise DatasetError(f"{self.subject}: the {split} split has no responses in this "
                               "dataset")
        n_images = len(self.images[split])
        # Fill a preallocated array rather than concatenating float32 copies: one pass
        # over each (memory-mapped) block and no temporary of the full size.
        out = np.empty((n_images, self.n_units), dtype=np.float32)
        start = 0
        for block in blocks:
            array = block.open()
            if tuple(array.shape) != (n_images, block.n_units):
                where = block.file or f"{self.subject} {split} responses"
                raise DatasetError(f"{where}: shape {tuple(array.shape)}, but expected "
                                   f"{(n_images, block.n_units)} as when the subject was read")
            out[:, start:start + block.n_units] = array[:]
            start += block.n_units
        return out

    @property
    def has_noise_ceiling(self) -> bool:
        """Whether a noise ceiling is known for the test split."""
        return self.noise_ceiling_source is not None

    def noise_ceiling(self) -> np.ndarray | None:
        """Return the test split's noise ceiling, a fraction in [0, 1], shape (n_units,)."""
        source = self.noise_ceiling_source
        if source is None:
            return None
        values = np.asarray(source() if callable(source) else source, dtype=np.float64)
        if values.shape != (self.n_units,):
            raise DatasetError(f"{self.subject}: noise ceiling of shape {values.shape}, "
                               f"expected ({self.n_units},)")
        return values

    # ---- what results inherit

    def result_attrs(self) -> dict[str, Any]:
        """Return the metadata every result of this subject carries (netCDF-safe values)."""
        keys = ("dataset", "space", "fsaverage_mesh", "volume_shape", "affine", "visual_field_deg")
        attrs = {k: self.metadata[k] for k in keys if self.metadata.get(k) is not None}
        if self.roi_order:
            attrs["roi_order"] = {k: list(v) for k, v in self.roi_order.items()}
        classes = self.roi_classes
        if classes:
            attrs["roi_classes"] = {coord: cls for cls, coord in classes.items()}
        return attrs


def check_unit_coords(coords: Mapping[str, Any], subject: str) -> dict[str, np.ndarray]:
    """Return the unit coordinates as arrays after checking their lengths and kinds.

    Raises
    ------
    DatasetError
        Empty coordinates, different lengths, a hemisphere other than lh / rh, or an
        incomplete voxel / MNI triple.
    """
    if not coords:
        raise DatasetError(f"{subject}: no unit coordinates; a reader must give at least one "
                           "coordinate of shape (n_units,)")
    out = {str(k): np.asarray(v) for k, v in coords.items()}
    lengths = {k: v.shape for k, v in out.items()}
    if len({v.shape for v in out.values()}) != 1 or any(v.ndim != 1 for v in out.values()):
        raise DatasetError(f"{subject}: unit coordinates of different shapes {lengths}; "
                           "expected one value per unit each")
    if "hemisphere" in out:
        bad = sorted(set(out["hemisphere"].astype(str)) - set(HEMISPHERES))
        if bad:
            raise DatasetError(f"{subject}: hemisphere values {bad}; expected 'lh' or 'rh'")
        out["hemisphere"] = out["hemisphere"].astype(str)
    for triple in (_VOXEL, _MNI):
        present = [c for c in triple if c in out]
        if present and len(present) != 3:
            raise DatasetError(f"{subject}: unit coordinates {present} without "
                               f"{sorted(set(triple) - set(present))}; expected all of {triple}")
    for name in out:
        if name.startswith(ROI_PREFIX):
            out[name] = out[name].astype(str)
    return out
