"""The ``folder`` dataset: any lab's data in a small documented layout (docs/datasets.md).

::

    <root>/
      dataset.json                   optional: {"space": "MNI152NLin2009cAsym",
                                     "visual_field_deg": 8.4, "volume_shape": [x, y, z],
                                     "affine": 4x4 list, "fsaverage_mesh": "fsaverage5"}
      <subject>/                     one folder per subject (any name), holding responses/
        images/train/*.png|jpg ...   stimuli; row order = file names sorted, or the order
        images/test/...              listed in images/<split>.txt (one file name a line)
        responses/train.npy          (n_images, n_units) float; or .h5 (dataset
        responses/test.npy           'responses') or .nc (variable 'responses'); test optional
        trials/test.npy              optional single trials (n_repeats, n_images, n_units),
                                     NaN where an image had fewer repeats: the noise
                                     ceiling is computed from them with NSD's ncsnr
        noise_ceiling.npy            optional (n_units,) fraction in [0, 1] (instead of trials)
        units.tsv                    optional: one row per unit; columns among hemisphere,
                                     fsaverage_index, voxel_i/j/k, mni_x/y/z, and any other
        rois/<class>.npy             optional int labels (n_units,), 0 = outside the class
        rois/<class>.json | .tsv     {label: name} / "label<TAB>name" rows for that class

Everything is checked when a subject is read, and each problem is reported as
``<path>: <what was found>, but <what was expected>``. Response files are opened
memory-mapped (.npy) or lazily (.h5, .nc); nothing is unpickled.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from neuroenc.data.subject import (FSAVERAGE_MESHES, SPLITS, DatasetError, ResponseBlock,
                                   SubjectData, roi_coordinate)
from neuroenc.evaluation.metrics import noise_ceiling_from_trials

__all__ = ["IMAGE_SUFFIXES", "RESPONSE_SUFFIXES", "FolderDataset", "read_folder_subject"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
RESPONSE_SUFFIXES = (".npy", ".h5", ".hdf5", ".nc")
_NUMERIC_COORDS = ("fsaverage_index", "voxel_i", "voxel_j", "voxel_k", "mni_x", "mni_y", "mni_z")
_METADATA_KEYS = {"space": str, "visual_field_deg": float, "volume_shape": list, "affine": list,
                  "fsaverage_mesh": str, "name": str, "description": str}


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


class FolderDataset:
    """Reads subjects laid out as the module docstring shows."""

    def __init__(self, root: str | Path, check_values: bool = True):
        self.root = Path(root)
        self.check_values = check_values
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset root not found; expected a folder with one "
                               "folder per subject, each holding responses/ and images/ "
                               "(docs/datasets.md)")
        self.metadata = self._read_metadata()

    def subjects(self) -> list[str]:
        """Return the subject folders (those holding a responses/ folder), sorted."""
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / "responses").is_dir())

    def resolve_subject(self, value: Any) -> str:
        """Return the folder name for a registry ``subjects:`` entry (names are used as is)."""
        return str(value)

    def load(self, subject: str) -> SubjectData:
        return read_folder_subject(self.root, subject, check_values=self.check_values,
                                   metadata=self.metadata)

    def _read_metadata(self) -> dict[str, Any]:
        path = self.root / "dataset.json"
        if not path.is_file():
            return {"dataset": "folder"}
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DatasetError(f"{path}: cannot be read as JSON ({err}); expected an object "
                               "with keys among " + ", ".join(_METADATA_KEYS)) from err
        if not isinstance(raw, dict):
            raise DatasetError(f"{path}: holds a {type(raw).__name__}; expected a JSON object")
        unknown = sorted(set(raw) - set(_METADATA_KEYS))
        if unknown:
            raise DatasetError(f"{path}: unknown keys {unknown}; expected keys among "
                               + ", ".join(_METADATA_KEYS))
        for key, kind in _METADATA_KEYS.items():
            if key in raw and not isinstance(raw[key], (kind, int) if kind is float else kind):
                raise DatasetError(f"{path}: {key} is {raw[key]!r}; expected a {kind.__name__}")
        if "affine" in raw and np.asarray(raw["affine"], dtype=float).shape != (4, 4):
            raise DatasetError(f"{path}: affine of shape {np.asarray(raw['affine']).shape}; "
                               "expected a 4 x 4 matrix (voxel indices -> mm)")
        if "volume_shape" in raw and (len(raw["volume_shape"]) != 3
                                      or not all(isinstance(v, int) and v > 0 for v in raw["volume_shape"])):
            raise DatasetError(f"{path}: volume_shape {raw['volume_shape']}; expected three "
                               "positive integers")
        if "fsaverage_mesh" in raw and raw["fsaverage_mesh"] not in FSAVERAGE_MESHES.values():
            raise DatasetError(f"{path}: fsaverage_mesh {raw['fsaverage_mesh']!r}; expected one of "
                               + ", ".join(FSAVERAGE_MESHES.values()))
        return {"dataset": raw.get("name", "folder"), **raw}


def read_folder_subject(root: str | Path, subject: str, *, check_values: bool = True,
                        metadata: dict[str, Any] | None = None) -> SubjectData:
    """Return one subject of a ``folder`` dataset after checking every file.

    Raises
    ------
    DatasetError
        Naming the file, what it holds and what was expected.
    """
    root = Path(root)
    folder = root / subject
    if not (folder / "responses").is_dir():
        available = FolderDataset(root).subjects() if root.is_dir() else []
        raise DatasetError(f"{_rel(folder, root)}: no such subject (no {subject}/responses/ "
                           f"folder); available: {', '.join(available) or 'none'}")
    reader = _SubjectReader(root, folder, check_values)
    images = {split: reader.images(split) for split in SPLITS}
    if not images["train"]:
        raise DatasetError(f"{_rel(folder / 'images' / 'train', root)}: no images; expected the "
                           f"training stimuli ({', '.join(IMAGE_SUFFIXES)})")
    blocks: dict[str, list[ResponseBlock]] = {}
    n_units = None
    for split in SPLITS:
        block = reader.responses(split, len(images[split]), n_units)
        if block is not None:
            blocks[split] = [block]
            n_units = block.n_units
    if "train" not in blocks:
        raise DatasetError(f"{_rel(folder / 'responses', root)}: no train.npy / train.h5 / train.nc; "
                           "expected the training responses (n_images, n_units)")
    coords = reader.units(n_units)
    roi_order = {}
    for cls, (labels, names) in reader.rois(n_units).items():
        coords[roi_coordinate(cls)] = labels
        roi_order[cls] = names
    noise_ceiling = reader.noise_ceiling(n_units, len(images["test"]))
    return SubjectData(subject=subject, images=images, responses_blocks=blocks,
                       unit_coords=coords, noise_ceiling_source=noise_ceiling,
                       trial_responses=reader.trials, roi_order=roi_order,
                       metadata=dict(metadata or {"dataset": "folder"}), root=root)


class _SubjectReader:
    def __init__(self, root: Path, folder: Path, check_values: bool):
        self.root, self.folder, self.check_values = root, folder, check_values
        self.trials: dict[str, Callable[[], np.ndarray]] = {}

    def rel(self, path: Path) -> str:
        return _rel(path, self.root)

    # ---- stimuli

    def images(self, split: str) -> list[Path]:
        folder = self.folder / "images" / split
        listing = self.folder / "images" / f"{split}.txt"
        if not folder.is_dir():
            if listing.exists():
                raise DatasetError(f"{self.rel(listing)}: lists images, but folder "
                                   f"{self.rel(folder)} does not exist")
            return []
        if listing.is_file():
            names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
            paths = [folder / name for name in names]
            missing = [n for n, p in zip(names, paths) if not p.is_file()]
            if missing:
                raise DatasetError(f"{self.rel(listing)}: {len(missing)} listed images not in "
                                   f"{self.rel(folder)}: {', '.join(missing[:5])}")
            if len(set(names)) != len(names):
                raise DatasetError(f"{self.rel(listing)}: an image is listed twice; expected one "
                                   "line per response row")
            return paths
        paths = sorted(p for p in folder.iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
        other = [p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                 and p.suffix.lower() not in IMAGE_SUFFIXES]
        if other:
            raise DatasetError(f"{self.rel(folder / other[0])}: not an image file "
                               f"({len(other)} such files); expected only {', '.join(IMAGE_SUFFIXES)}")
        return paths

    # ---- responses

    def _find(self, folder: Path, stem: str) -> Path | None:
        found = [folder / f"{stem}{s}" for s in RESPONSE_SUFFIXES if (folder / f"{stem}{s}").is_file()]
        if len(found) > 1:
            raise DatasetError(f"{self.rel(found[1])}: a second file for {stem} beside "
                               f"{self.rel(found[0])}; expected one")
        return found[0] if found else None

    def _open(self, path: Path) -> Any:
        suffix = path.suffix.lower()
        if suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if suffix in (".h5", ".hdf5"):
            import h5py

            handle = h5py.File(path, "r")
            if "responses" not in handle:
                keys = ", ".join(handle) or "nothing"
                handle.close()
                raise KeyError(f"no dataset 'responses' (it holds {keys})")
            return handle["responses"]
        import xarray as xr

        ds = xr.open_dataset(path)
        if "responses" not in ds:
            raise KeyError(f"no variable 'responses' (it holds {', '.join(map(str, ds.data_vars))})")
        return ds["responses"].variable

    def _npy(self, path: Path, what: str) -> np.ndarray:
        """Return a small .npy array; never unpickles (object arrays are refused)."""
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DatasetError(f"{self.rel(path)}: cannot be read as a plain .npy array ({err}); "
                               f"expected {what}") from err

    def _array(self, path: Path, what: str) -> Any:
        try:
            return self._open(path)
        except (OSError, ValueError, KeyError) as err:
            raise DatasetError(f"{self.rel(path)}: cannot be read ({err}); expected {what}") from err

    def responses(self, split: str, n_images: int, n_units: int | None) -> ResponseBlock | None:
        path = self._find(self.folder / "responses", split)
        if path is None:
            return None
        array = self._array(path, "responses (n_images, n_units)")
        rel = self.rel(path)
        if len(array.shape) != 2:
            raise DatasetError(f"{rel}: shape {tuple(array.shape)}, but expected (n_images, n_units)")
        if not np.issubdtype(array.dtype, np.floating):
            raise DatasetError(f"{rel}: dtype {array.dtype}, but expected floating-point responses")
        if array.shape[0] != n_images:
            raise DatasetError(f"{rel}: {array.shape[0]} rows, but {n_images} {split} images in "
                               f"{self.rel(self.folder / 'images' / split)}")
        if n_units is not None and array.shape[1] != n_units:
            raise DatasetError(f"{rel}: {array.shape[1]} units, but the training responses have "
                               f"{n_units}")
        if self.check_values:
            _check_finite(array, rel)
        return ResponseBlock(open=partial(self._open, path), n_units=int(array.shape[1]), file=path)

    # ---- units and ROIs

    def units(self, n_units: int) -> dict[str, np.ndarray]:
        path = self.folder / "units.tsv"
        if not path.is_file():
            return {"unit_index": np.arange(n_units)}
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if len(rows) != n_units:
            raise DatasetError(f"{self.rel(path)}: {len(rows)} rows, but the responses have "
                               f"{n_units} units; expected one row per unit (with a header)")
        columns = list(rows[0]) if rows else []
        coords: dict[str, np.ndarray] = {}
        for name in columns:
            values = [r[name] for r in rows]
            if name in _NUMERIC_COORDS:
                try:
                    array = np.asarray(values, dtype=float)
                except ValueError as err:
                    raise DatasetError(f"{self.rel(path)}: column {name} has non-numeric values "
                                       f"({err}); expected numbers") from err
                if not name.startswith("mni_"):
                    if not np.all(array == np.round(array)) or (array < 0).any():
                        raise DatasetError(f"{self.rel(path)}: column {name} has values that are "
                                           "not non-negative integers; expected indices")
                    array = array.astype(np.int64)
                coords[name] = array
            else:
                coords[name] = np.asarray(values, dtype=str)
        if "hemisphere" in coords:
            bad = sorted(set(coords["hemisphere"]) - {"lh", "rh"})
            if bad:
                raise DatasetError(f"{self.rel(path)}: hemisphere values {bad}; expected 'lh' or 'rh'")
        coords.setdefault("unit_index", np.arange(n_units))
        return coords

    def rois(self, n_units: int) -> dict[str, tuple[np.ndarray, list[str]]]:
        folder = self.folder / "rois"
        if not folder.is_dir():
            return {}
        out = {}
        for path in sorted(folder.glob("*.npy")):
            cls = path.stem
            labels = self._npy(path, "integer ROI labels, one per unit")
            rel = self.rel(path)
            if labels.shape != (n_units,):
                raise DatasetError(f"{rel}: shape {labels.shape}, but expected ({n_units},): one "
                                   "label per unit")
            if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
                raise DatasetError(f"{rel}: dtype {labels.dtype}, but expected integer labels")
            names = self._roi_names(folder, cls)
            used = np.unique(labels)
            unknown = [int(v) for v in used if v != 0 and int(v) not in names]
            if unknown:
                raise DatasetError(f"{rel}: labels {unknown[:10]} have no name in "
                                   f"{self.rel(folder / cls)}.json/.tsv")
            table = np.array([""] + [names[k] for k in sorted(names)], dtype=str)
            position = {k: i + 1 for i, k in enumerate(sorted(names))}
            index = np.array([position.get(int(v), 0) for v in labels.astype(np.int64)])
            out[cls] = (table[index], [names[k] for k in sorted(names)])
        return out

    def _roi_names(self, folder: Path, cls: str) -> dict[int, str]:
        json_path, tsv_path = folder / f"{cls}.json", folder / f"{cls}.tsv"
        if json_path.is_file():
            try:
                raw = json.loads(json_path.read_text())
                names = {int(k): str(v) for k, v in raw.items()}
            except (ValueError, AttributeError, TypeError) as err:
                raise DatasetError(f"{self.rel(json_path)}: cannot be read ({err}); expected a "
                                   'JSON object {"1": "V1", ...}') from err
        elif tsv_path.is_file():
            names = {}
            for i, line in enumerate(tsv_path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                try:
                    names[int(parts[0])] = parts[1].strip()
                except (ValueError, IndexError) as err:
                    raise DatasetError(f"{self.rel(tsv_path)}: line {i} {line!r}; expected "
                                       "'<label><TAB><name>'") from err
        else:
            raise DatasetError(f"{self.rel(folder / cls)}.npy: no {cls}.json or {cls}.tsv beside "
                               "it; expected the names of its labels")
        names.pop(0, None)  # 0 is "outside the class"
        return names

    # ---- noise ceiling

    def noise_ceiling(self, n_units: int, n_test: int) -> np.ndarray | None:
        trials_path = self._find(self.folder / "trials", "test") if (self.folder / "trials").is_dir() else None
        nc_path = self.folder / "noise_ceiling.npy"
        if trials_path is not None and nc_path.is_file():
            raise DatasetError(f"{self.rel(nc_path)}: given beside {self.rel(trials_path)}; expected "
                               "one source of the noise ceiling")
        if nc_path.is_file():
            nc = self._npy(nc_path, "the noise ceiling per unit, a fraction in [0, 1]")
            rel = self.rel(nc_path)
            if nc.shape != (n_units,):
                raise DatasetError(f"{rel}: shape {nc.shape}, but expected ({n_units},)")
            if not np.isfinite(nc).all() or nc.min() < 0 or nc.max() > 1:
                hint = "; values > 1 look like percent: divide by 100" if nc.max() > 1 else ""
                raise DatasetError(f"{rel}: values outside [0, 1] or not finite, but expected a "
                                   f"fraction per unit{hint}")
            return nc.astype(np.float64)
        if trials_path is None:
            return None
        trials = self._array(trials_path, "single trials (n_repeats, n_images, n_units)")
        rel = self.rel(trials_path)
        if len(trials.shape) != 3 or tuple(trials.shape[1:]) != (n_test, n_units):
            raise DatasetError(f"{rel}: shape {tuple(trials.shape)}, but expected (n_repeats, "
                               f"{n_test}, {n_units}): repeats x test images x units")
        values = np.asarray(trials[:], dtype=np.float64)
        self.trials["test"] = partial(lambda p: np.asarray(self._open(p)[:]), trials_path)
        try:
            return noise_ceiling_from_trials(values)
        except ValueError as err:
            raise DatasetError(f"{rel}: {err}") from err


def _check_finite(array: Any, rel: str, chunk_rows: int = 4096) -> None:
    for start in range(0, array.shape[0], chunk_rows):
        chunk = np.asarray(array[start:start + chunk_rows])
        bad = ~np.isfinite(chunk)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DatasetError(f"{rel}: {int(bad.sum())} non-finite values in rows {start}.."
                               f"{start + len(chunk) - 1}, first at row {start + row}, column "
                               f"{col}; expected finite responses")
