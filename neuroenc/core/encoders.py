"""Fitted encoders kept in the run folder: saved, checked and loaded to predict new images.

Every part of a run (model x subject x sweep point) whose recipe can describe itself is
saved in ``models/<model>/<subject>/encoder/``::

    encoder.json          format, neuroenc version, model, subject, recipe and its params,
                          the backbone (its registry config, identity(), a digest of its
                          weights and of its weights file), each array's shape and dtype
    arrays.safetensors    the fitted state (ridge: coef, intercept, best alphas, feature
                          mean and scale), read without pickle
    vertices.nc           the vertex coordinates (hemisphere, fsaverage / challenge index,
                          one roi_<class> per ROI class) and the dataset's ROI order

and the run folder's ``encoders.json`` lists every part, saved or not and why not (a
run folder copied to another machine says what it holds). The backbone's weights are
not copied (they are large and usually public): the backbone is rebuilt from its registry
config through the plugin manager, and loading refuses one whose weights differ.

A recipe takes part with two optional methods (the plugin protocol; see
``plugins/neuroenc_builtins/recipes.py`` for the worked example)::

    def state(self) -> tuple[dict[str, ndarray], dict]:       # arrays, JSON-able meta
        ...                                                  # raise EncoderNotSavable(why)
    @classmethod
    def from_state(cls, params, context, arrays, meta) -> ImagePredictor

An :class:`ImagePredictor` has a ``backbone`` (an :class:`neuroenc.interfaces.ImageBackbone`)
and ``predict_features(features) -> Tensor (batch, n_vertices)`` on the backbone's
``forward_features`` output; :class:`Encoder` streams images through both.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from neuroenc.core.cache import atomic_dir, atomic_path, file_sha256, module_digest, write_json_atomic

if TYPE_CHECKING:
    import torch
    import xarray as xr

    from neuroenc.interfaces import ImageBackbone

__all__ = ["ENCODER_FORMAT", "Encoder", "EncoderError", "EncoderNotSavable", "ImagePredictor",
           "LinearReadout", "backbone_record", "encoder_manifest", "load_encoder",
           "module_digest", "save_encoder", "write_encoder_manifest"]

ENCODER_FORMAT = 1
ENCODER_DIR = "encoder"
MANIFEST = "encoders.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class EncoderError(ValueError):
    """A saved encoder cannot be loaded or used (the message names the file and the fix)."""


class EncoderNotSavable(Exception):
    """Raised by a recipe's ``state()``: this fitted model cannot be saved (and why)."""


class ImagePredictor(Protocol):
    backbone: ImageBackbone

    def predict_features(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Return predictions (batch, n_vertices) from ``backbone.forward_features`` output."""


# --------------------------------------------------------------------------- backbones


def backbone_record(ref, backbone: ImageBackbone) -> dict[str, Any]:
    """Return what identifies a backbone: its registry config, identity() and weight digests.

    ``ref`` is the recipe's :class:`neuroenc.core.config.ComponentRef` (or its dict).
    """
    ref = ref.model_dump(mode="json") if hasattr(ref, "model_dump") else dict(ref)
    identity = backbone.identity()
    checkpoint = (identity.get("checkpoint") or {}) if isinstance(identity, dict) else {}
    checkpoint_sha256 = file_sha256(checkpoint["path"]) if checkpoint.get("path") else None
    return {"config": ref, "identity": json.loads(json.dumps(identity, default=str)),
            "weights_sha256": module_digest(backbone.module),
            "checkpoint_sha256": checkpoint_sha256}


# Identity fields that differ between machines without changing the function computed:
# the weights file's place and time (its content is checked by digest instead).
# The digest of random weights is compared below on its own (weights_sha256), with the
# message that says which seed or file is needed.
_LOCAL_IDENTITY = {"path", "mtime_ns", "random_weights_sha256"}


def _comparable(identity: Any) -> Any:
    if isinstance(identity, dict):
        return {k: _comparable(v) for k, v in identity.items() if k not in _LOCAL_IDENTITY}
    if isinstance(identity, list):
        return [_comparable(v) for v in identity]
    return identity


def _identity_differences(saved: Any, now: Any, path: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for key in dict.fromkeys([*saved, *now]):
            out += _identity_differences(saved.get(key), now.get(key), f"{path}.{key}".lstrip("."))
        return out
    return [] if saved == now else [f"{path}: saved {saved!r}, found {now!r}"]


# --------------------------------------------------------------------------- readouts


class LinearReadout:
    """Backbone features (layers concatenated, flattened) -> ``X @ coef + intercept``.

    Parameters
    ----------
    backbone : ImageBackbone
    coef : ndarray of shape (n_features, n_vertices)
    intercept : ndarray of shape (n_vertices,)
    device : str
    """

    def __init__(self, backbone: ImageBackbone, coef: np.ndarray, intercept: np.ndarray,
                 device: str = "cpu"):
        torch = _torch()
        self.backbone = backbone
        self.coef = torch.from_numpy(np.ascontiguousarray(coef, dtype=np.float32)).to(device)
        self.intercept = torch.from_numpy(np.ascontiguousarray(intercept, dtype=np.float32)).to(device)

    def predict_features(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        torch = _torch()
        n = next(iter(features.values())).shape[0]
        x = torch.cat([f.reshape(n, -1).float() for f in features.values()], dim=1)
        if x.shape[1] != self.coef.shape[0]:
            raise EncoderError(f"the backbone gives {x.shape[1]} features, but the saved "
                               f"weights expect {self.coef.shape[0]}")
        return x.to(self.coef.device) @ self.coef + self.intercept


# --------------------------------------------------------------------------- saving


def save_encoder(model, folder: str | Path, *, model_name: str, subject: str, recipe: str,
                 params: Mapping[str, Any], vertex_coords: Mapping[str, np.ndarray],
                 attrs: Mapping[str, Any], seed: int, dtype: str = "float32") -> dict[str, Any]:
    """Save one fitted model into ``folder`` (``.../encoder``); return its manifest entry.

    A recipe without ``state()``, or whose ``state()`` raises :class:`EncoderNotSavable`,
    is not saved: the entry says ``saved: false`` and why, and nothing is written.
    ``dtype='float16'`` halves the weight matrices (arrays of 2 or more dimensions; the
    rest stays float32); predictions then differ by about 1e-3 relative. The folder is
    built as a temporary sibling and renamed into place, so it is whole or absent.
    """
    from safetensors.numpy import save as safetensors_bytes

    import neuroenc
    from neuroenc.evaluation.results import result_dataset, write_netcdf

    folder = Path(folder)
    entry: dict[str, Any] = {"model": model_name, "subject": subject, "recipe": recipe,
                             "path": None, "saved": False}
    state = getattr(model, "state", None)
    if state is None:
        entry["reason"] = (getattr(model, "not_saved_reason", None) or
                           f"recipe {recipe!r} has no state() method (it cannot be saved yet)")
        return entry
    try:
        arrays, meta = state()
    except EncoderNotSavable as exc:
        entry["reason"] = str(exc)
        return entry
    stored = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.dtype.kind == "f":  # float16 for weight matrices only (alphas reach 1e7)
            value = value.astype(dtype if value.ndim >= 2 else "float32")
        stored[name] = np.ascontiguousarray(value)
    n_vertices = len(next(iter(vertex_coords.values())))
    record = {
        "format": ENCODER_FORMAT,
        "neuroenc_version": neuroenc.__version__,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "model": model_name, "subject": subject, "recipe": recipe,
        "params": json.loads(json.dumps(params, default=str)), "seed": seed,
        "n_vertices": n_vertices, "dtype": dtype,
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in stored.items()},
        "meta": json.loads(json.dumps(meta, default=str)),
    }
    payload = safetensors_bytes(stored, metadata={"format": str(ENCODER_FORMAT)})
    with atomic_dir(folder) as tmp:
        with atomic_path(tmp / "arrays.safetensors") as file:
            file.write_bytes(payload)
        write_netcdf(result_dataset(model=model_name, subject=subject, vertex_coords=vertex_coords,
                                    scores={}, noise_ceiling=None, attrs=attrs), tmp / "vertices.nc")
        write_json_atomic(tmp / "encoder.json", record)
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    entry.update(saved=True, path=folder.as_posix(), size_bytes=size,
                 backbone=(meta.get("backbone") or {}).get("config"), dtype=dtype)
    return entry


def encoder_manifest(run_dir: str | Path, parts: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Return the manifest of a run's encoders (``encoders.json``) from its parts' folders."""
    run_dir = Path(run_dir)
    entries = []
    for model, subject in parts:
        folder = run_dir / "models" / model / subject
        note = folder / "encoder.status.json"
        if note.is_file():
            entry = json.loads(note.read_text())
            if entry.get("path"):
                entry["path"] = Path(entry["path"]).relative_to(run_dir).as_posix() \
                    if Path(entry["path"]).is_absolute() else entry["path"]
            entries.append(entry)
    return {"format": ENCODER_FORMAT,
            "layout": "models/<model>/<subject>/encoder/{encoder.json, arrays.safetensors, "
                      "vertices.nc}; docs/encoders.md",
            "encoders": entries}


def write_encoder_manifest(run_dir: str | Path, parts: Iterable[tuple[str, str]]) -> Path:
    """Write ``encoders.json`` into the run folder; return its path."""
    path = Path(run_dir) / MANIFEST
    write_json_atomic(path, encoder_manifest(run_dir, parts))
    return path


def save_part_encoder(model, part_folder: Path, **kwargs) -> dict[str, Any]:
    """Save a part's encoder under ``part_folder/encoder`` and its status note; return it."""
    entry = save_encoder(model, part_folder / ENCODER_DIR, **kwargs)
    if entry.get("path"):
        entry["path"] = (Path(entry["path"]).relative_to(part_folder.parents[2])).as_posix()
    write_json_atomic(part_folder / "encoder.status.json", entry)
    return entry


# --------------------------------------------------------------------------- loading


@dataclass
class _Images:
    names: list[str]
    paths: list[Path] | None        # files, or None for in-memory images
    pil: list | None


def _collect_images(images) -> _Images:
    """Normalise paths / a folder / PIL images / a uint8 array into one list."""
    from PIL import Image

    if isinstance(images, np.ndarray):
        array = images
        if array.dtype != np.uint8:
            raise EncoderError(f"images: a {array.dtype} array, but an array of images must be "
                               "uint8 of shape (n, height, width, 3) or (height, width, 3)")
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
            raise EncoderError(f"images: array of shape {images.shape}, expected "
                               "(n, height, width, 3) or (height, width, 3)")
        pil = [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in array]
        return _Images([f"image-{i:05d}" for i in range(len(pil))], None, pil)
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (str, Path)):
        images = [images]
    items = list(images)
    if items and all(isinstance(i, Image.Image) for i in items):
        return _Images([f"image-{i:05d}" for i in range(len(items))], None, items)
    paths: list[Path] = []
    for item in items:
        if isinstance(item, Image.Image):
            raise EncoderError("images: a mixture of PIL images and paths; give one kind")
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                           and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise EncoderError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise EncoderError(f"{path}: no such image file or folder")
    if not paths:
        raise EncoderError("images: none given")
    return _Images([p.name for p in paths], paths, None)


@dataclass
class PredictionSummary:
    """What :meth:`Encoder.predict_to_file` keeps in memory: per image, only ROI means."""

    names: list[str]
    paths: list[Path] | None
    mean_map: np.ndarray                  # (n_vertices,): mean prediction over all images
    roi_means: dict[str, np.ndarray]      # {roi: (n_images,)}

    def ranking(self, roi: str) -> np.ndarray:
        """Return image indices from the most to the least driving of ``roi``."""
        return np.argsort(-self.roi_means[roi], kind="stable")


class Encoder:
    """A fitted encoding model of one subject, loaded from a run folder.

    Built by :func:`load_encoder`. ``vertex_coords`` are the results' coordinates;
    ``record`` is the saved ``encoder.json``.
    """

    def __init__(self, folder: Path, record: dict, predictor: ImagePredictor,
                 vertices: xr.Dataset, device: str, batch_size: int, num_workers: int = 0):
        self.folder = folder
        self.record = record
        self.model = record["model"]
        self.subject = record["subject"]
        self.predictor = predictor
        self.backbone = predictor.backbone
        self.vertices = vertices
        self.device = device
        self.batch_size = batch_size
        self.num_workers = num_workers

    def __repr__(self) -> str:
        return (f"Encoder({self.model!r}, {self.subject!r}, {self.n_vertices} vertices, "
                f"recipe {self.record['recipe']!r})")

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.sizes["vertex"])

    def rois(self) -> dict[str, list[str]]:
        """Return ``{ROI class: [ROI names]}`` of the subject (in the dataset's order)."""
        from neuroenc.evaluation.results import roi_groups

        order = json.loads(self.vertices.attrs.get("roi_order") or "{}")
        out: dict[str, list[str]] = {}
        for roi_class, roi, _ in roi_groups(self.vertices):
            if roi_class != "all":
                out.setdefault(roi_class, []).append(str(roi))
        for roi_class, names in out.items():
            known = [n for n in order.get(roi_class, []) if n in names]
            out[roi_class] = known + [n for n in names if n not in known]
        return out

    def roi_mask(self, roi: str) -> np.ndarray:
        """Return the boolean mask (n_vertices,) of the vertices in ROI ``roi`` (e.g. 'FFA-1')."""
        from neuroenc.evaluation.results import roi_groups

        masks = [mask for roi_class, name, mask in roi_groups(self.vertices)
                 if roi_class != "all" and name == roi]
        if not masks:
            known = [r for rs in self.rois().values() for r in rs]
            from neuroenc.core.plugins import suggest

            raise EncoderError(f"{self.subject}: no ROI called {roi!r}; known: "
                               f"{', '.join(known) or 'none'}{suggest(roi, known)}")
        return np.logical_or.reduce(masks)

    # -- prediction ---------------------------------------------------------------------
    def iter_predict(self, images, *, batch_size: int | None = None,
                     progress=None) -> Iterator[tuple[list[str], np.ndarray]]:
        """Yield ``(image names, predictions of shape (batch, n_vertices))`` batch by batch.

        ``images``: image paths, a folder, PIL images or a uint8 array (n, H, W, 3).
        Only one batch is in memory at a time. ``progress(n)`` is called after each batch.
        """
        torch = _torch()
        from neuroenc.stimuli.features import ImageFolderDataset

        collected = _collect_images(images)
        batch_size = batch_size or self.batch_size
        preprocess = self.backbone.preprocess
        device = torch.device(self.device)
        if collected.paths is not None:
            loader = torch.utils.data.DataLoader(ImageFolderDataset(collected.paths, preprocess),
                                                 batch_size=batch_size, shuffle=False,
                                                 num_workers=self.num_workers,
                                                 pin_memory=device.type == "cuda")
        else:
            pil = collected.pil
            loader = (torch.stack([preprocess(im.convert("RGB")) for im in pil[i:i + batch_size]])
                      for i in range(0, len(pil), batch_size))
        module = self.backbone.module
        channels_last = device.type != "cpu" or any(isinstance(m, torch.nn.Conv2d)
                                                    for m in module.modules())
        if channels_last:
            module.to(memory_format=torch.channels_last)
        autocast = (torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda"
                    else torch.autocast("cpu", enabled=False))
        start = 0
        with torch.inference_mode(), autocast:
            for batch in loader:
                batch = batch.to(device, non_blocking=True)
                if channels_last and batch.ndim == 4:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                out = self.predictor.predict_features(self.backbone.forward_features(batch))
                values = out.float().cpu().numpy()
                n = values.shape[0]
                yield collected.names[start:start + n], values
                start += n
                if progress is not None:
                    progress(n)

    def predict_to_file(self, images, out: str | Path, *, batch_size: int | None = None,
                        rois: Sequence[str] = (), progress=None) -> PredictionSummary:
        """Write predictions (image, vertex) to netCDF ``out`` batch by batch; return a summary.

        Only one batch of predictions is in memory at a time, so any number of images
        fits. The file is the Dataset :meth:`predict` would give (variable ``predicted``,
        the vertex coordinates, ``image`` and ``path`` along ``image``); it is written as
        a temporary sibling and renamed when complete. The summary holds the mean over
        all images per vertex and, for each of ``rois``, the ROI mean of every image.
        """
        import h5netcdf
        import xarray as xr

        from neuroenc.evaluation.results import NETCDF_ENGINE

        collected = _collect_images(images)
        n = len(collected.names)
        masks = {roi: self.roi_mask(roi) for roi in rois}
        coords = {k: ("vertex", v.values) for k, v in self.vertices.coords.items()}
        coords["image"] = ("image", np.asarray(collected.names, dtype=str))
        if collected.paths is not None:
            coords["path"] = ("image", np.asarray([str(p) for p in collected.paths], dtype=str))
        skeleton = xr.Dataset(coords=coords, attrs={"model": self.model, "subject": self.subject,
                                                    "encoder": str(self.folder)})
        roi_means = {roi: np.empty(n, np.float32) for roi in rois}
        total = np.zeros(self.n_vertices, np.float64)
        source = collected.paths if collected.paths is not None else collected.pil
        out = Path(out)
        with atomic_path(out) as tmp:
            skeleton.to_netcdf(tmp, engine=NETCDF_ENGINE)
            with h5netcdf.File(tmp, "a") as fh:
                var = fh.create_variable("predicted", ("image", "vertex"), "f4",
                                         # one chunk per batch: writes never split a chunk
                                         chunks=(max(1, min(n, batch_size or self.batch_size)),
                                                 self.n_vertices))
                var.attrs["coordinates"] = " ".join(k for k in coords if k != "image")
                row = 0
                for _, values in self.iter_predict(source, batch_size=batch_size, progress=progress):
                    k = values.shape[0]
                    var[row:row + k] = values
                    total += values.sum(axis=0)
                    for roi, mask in masks.items():
                        roi_means[roi][row:row + k] = values[:, mask].mean(axis=1)
                    row += k
        return PredictionSummary(names=collected.names, paths=collected.paths,
                                 mean_map=(total / max(n, 1)).astype(np.float32),
                                 roi_means=roi_means)

    def predict(self, images, *, batch_size: int | None = None) -> xr.DataArray:
        """Return predicted responses, a DataArray of dims (image, vertex).

        The vertex coordinates are the results' (hemisphere, fsaverage / challenge index,
        one ``roi_<class>`` per ROI class); ``image`` holds file names (or ``image-00000``
        ... for in-memory images). All predictions are held in memory: for very large
        image sets use :meth:`iter_predict` or ``neuroenc predict`` (streamed to disk).
        """
        names, chunks = [], []
        for batch_names, values in self.iter_predict(images, batch_size=batch_size):
            names += batch_names
            chunks.append(values)
        return self._as_dataarray(np.concatenate(chunks), names)

    def _as_dataarray(self, values: np.ndarray, names: Sequence[str]) -> xr.DataArray:
        import xarray as xr

        coords = {k: ("vertex", v.values) for k, v in self.vertices.coords.items()}
        coords["image"] = ("image", np.asarray(names, dtype=str))
        return xr.DataArray(values, dims=("image", "vertex"), coords=coords, name="predicted",
                            attrs={"model": self.model, "subject": self.subject,
                                   **{k: v for k, v in self.vertices.attrs.items()
                                      if k in ("roi_order", "roi_classes", "fsaverage_mesh",
                                               "space", "dataset")}})

    def roi_mean(self, predictions: xr.DataArray, roi: str | Sequence[str] | None = None) -> xr.DataArray:
        """Return the mean prediction over each ROI's vertices, dims (image, roi).

        ``roi``: one ROI name ('FFA-1': then dims (image,)), several, or None for every ROI.
        """
        import xarray as xr

        names = ([roi] if isinstance(roi, str) else list(roi) if roi is not None
                 else [r for rs in self.rois().values() for r in rs])
        values = np.asarray(predictions.values)
        means = np.stack([values[:, self.roi_mask(n)].mean(axis=1) for n in names], axis=1)
        out = xr.DataArray(means, dims=("image", "roi"),
                           coords={"image": predictions["image"].values, "roi": names},
                           name="roi_mean", attrs={"model": self.model, "subject": self.subject})
        return out.sel(roi=roi) if isinstance(roi, str) else out

    def rank_images(self, predictions: xr.DataArray, roi: str) -> xr.DataArray:
        """Return the ROI mean of every image, sorted from the most to the least driving."""
        means = self.roi_mean(predictions, roi)
        return means.isel(image=np.argsort(-means.values, kind="stable"))


def resolve_part(run_dir: Path, model: str, subject: str) -> tuple[str, str]:
    """Return the ``(model, subject)`` folder names a user's ``model``/``subject`` mean."""
    from neuroenc.core.names import normalise_subject
    from neuroenc.core.plugins import suggest

    models_dir = run_dir / "models"
    models = sorted(p.name for p in models_dir.iterdir() if p.is_dir()) if models_dir.is_dir() else []
    if model not in models:
        raise EncoderError(f"{run_dir}: no model {model!r} in this run; models: "
                           f"{', '.join(models) or 'none'}{suggest(model, models)}")
    subjects = sorted(p.name for p in (models_dir / model).iterdir() if p.is_dir())
    if subject in subjects:
        return model, subject
    wanted = normalise_subject(subject)
    matches = [s for s in subjects if normalise_subject(s) == wanted]
    if len(matches) != 1:
        raise EncoderError(f"{run_dir}: model {model!r} has no subject {subject!r}; subjects: "
                           f"{', '.join(subjects) or 'none'}")
    return model, matches[0]


def load_encoder(run_dir: str | Path, model: str, subject: str | int, *, device: str = "cpu",
                 batch_size: int = 32, num_workers: int = 0, checkpoint_path: str | None = None,
                 cache_dir: str | Path | None = None, manager=None) -> Encoder:
    """Return the fitted encoder of ``model`` on ``subject`` saved in a run folder.

    Parameters
    ----------
    run_dir : path of a run (``results/<experiment>/<timestamp>`` or ``.../latest``)
    model : the model's name in the run (a sweep point: ``name@path=value``)
    subject : the subject's folder name (``subj01``) or number (``1``)
    device : torch device for the backbone and readout
    batch_size, num_workers : images per batch; DataLoader processes decoding image files
    checkpoint_path : a local file with the backbone's weights, where the saved config's
        file is not on this machine (the file's content must be the same)
    manager : a :class:`neuroenc.core.plugins.PluginManager` (default: the installed plugins
        plus the run's registry ``plugins:`` where they can still be found)

    Raises
    ------
    EncoderError
        No such model or subject, the part was not saved (and why), the backbone's
        weights are missing or differ from those the encoder was fitted on.
    """
    from safetensors.numpy import load_file

    from neuroenc.core.config import default_cache_dir
    from neuroenc.core.context import RunContext, seed_everything
    from neuroenc.evaluation.results import read_netcdf

    run_dir = Path(run_dir).resolve()
    model, subject = resolve_part(run_dir, model, str(subject))
    folder = run_dir / "models" / model / subject / ENCODER_DIR
    record_file = folder / "encoder.json"
    if not record_file.is_file():
        note = folder.parent / "encoder.status.json"
        why = json.loads(note.read_text()).get("reason") if note.is_file() else \
            "the run saved no encoder here (it predates saved encoders, or the part did not finish)"
        raise EncoderError(f"{folder}: no saved encoder: {why}")
    record = json.loads(record_file.read_text())
    if record.get("format") != ENCODER_FORMAT:
        raise EncoderError(f"{record_file}: format {record.get('format')!r}, this neuroenc reads "
                           f"format {ENCODER_FORMAT}")
    arrays = load_file(str(folder / "arrays.safetensors"))
    for name, spec in record["arrays"].items():
        if name not in arrays or list(arrays[name].shape) != spec["shape"]:
            found = list(arrays[name].shape) if name in arrays else "missing"
            raise EncoderError(f"{folder / 'arrays.safetensors'}: array {name!r} is {found}, "
                               f"but encoder.json says shape {spec['shape']}")
    vertices = read_netcdf(folder / "vertices.nc")

    if manager is None:
        manager = _manager_for(run_dir)
    context = RunContext(manager=manager, cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(),
                         device=device, seed=int(record.get("seed", 0)), batch_size=batch_size,
                         show_progress=False)
    component = manager.get("recipe", record["recipe"])
    from_state = getattr(component.factory, "from_state", None)
    if from_state is None:
        raise EncoderError(f"{record_file}: recipe {record['recipe']!r} (from {component.provider}) "
                           "cannot rebuild a saved encoder (it has no from_state)")
    params = dict(record["params"])
    saved_backbone = record["meta"].get("backbone")
    if checkpoint_path is not None and saved_backbone:
        backbone = dict(params.get("backbone") or {})
        backbone["checkpoint_path"] = str(checkpoint_path)
        params["backbone"] = backbone
        saved_backbone = {**saved_backbone, "config": {**saved_backbone["config"],
                                                       "checkpoint_path": str(checkpoint_path)}}
    params = component.params.model_validate(params)
    seed_everything(context.seed)  # as the runner did: random-weight backbones match
    try:
        predictor = from_state(params, context, arrays, record["meta"])
    except FileNotFoundError as exc:
        raise EncoderError(
            f"{record_file}: the backbone's weights are missing on this machine: {exc}. "
            "Copy that file here and pass its path as load_encoder(..., checkpoint_path=...) "
            "(neuroenc predict --checkpoint PATH)") from None
    except RuntimeError as exc:
        raise EncoderError(f"{record_file}: the backbone could not be built: {exc}") from None
    if saved_backbone:
        _check_backbone(record_file, saved_backbone, predictor.backbone,
                        getattr(predictor, "base_weights_sha256", None))
    predictor.backbone.module.to(device).eval()
    return Encoder(folder, record, predictor, vertices, device, batch_size, num_workers)


def _check_backbone(record_file: Path, saved: dict, backbone, base_digest: str | None) -> None:
    """Raise unless ``backbone`` is the saved one. ``base_digest``: the weights' digest before
    a predictor loaded trained backbone parameters into it (else the weights as they are)."""
    now = backbone_record(saved["config"], backbone)
    if base_digest is not None:
        now["weights_sha256"] = base_digest
    if saved.get("checkpoint_sha256") and now["checkpoint_sha256"] != saved["checkpoint_sha256"]:
        path = (now["identity"].get("checkpoint") or {}).get("path")
        raise EncoderError(
            f"{record_file}: the backbone's weights file {path} differs from the one the encoder "
            f"was fitted on (SHA-256 {now['checkpoint_sha256']}, expected "
            f"{saved['checkpoint_sha256']}); provide the original file with checkpoint_path= "
            "(neuroenc predict --checkpoint PATH)")
    differences = _identity_differences(_comparable(saved["identity"]), _comparable(now["identity"]))
    if differences:
        raise EncoderError(f"{record_file}: the backbone built here differs from the saved one: "
                           + "; ".join(differences[:5]))
    if now["weights_sha256"] != saved["weights_sha256"]:
        raise EncoderError(
            f"{record_file}: the backbone's weights differ from those the encoder was fitted on "
            f"(digest {now['weights_sha256'][:16]}..., expected {saved['weights_sha256'][:16]}...; "
            f"backbone {saved['config']}); install the same weights (same package or file, same "
            "seed for random weights) or pass the original file as checkpoint_path=")


def _manager_for(run_dir: Path):
    """Return a plugin manager with the installed plugins and the run's own, where found."""
    import warnings

    import yaml

    from neuroenc.core.plugins import PluginError, PluginManager

    manager = PluginManager()
    config_file = run_dir / "config.yaml"
    try:
        config = yaml.safe_load(config_file.read_text()) or {}
        environment = json.loads((run_dir / "environment.json").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return manager
    base = Path(environment.get("registry") or config_file).parent
    for spec in config.get("plugins") or []:
        try:
            manager.load_plugin(spec, base_dir=base)
        except PluginError as exc:
            warnings.warn(f"{config_file}: plugin {spec!r} of the run is not loaded here ({exc}); "
                          "encoders that need it cannot be rebuilt", RuntimeWarning, stacklevel=3)
    return manager


def _torch():
    import torch

    return torch
