"""Captions that come with the data (``dataset-captions``: the demo's CSV, NSD's COCO captions) or with a file (``caption-file``)."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .conversation import _NSD_ID, _SUBJECT_DIR, _file_identity, _resolve_local_file

# --------------------------------------------------------------------------------------
# Captions that come with the data
# --------------------------------------------------------------------------------------

def nsd_id_from_name(path: str | Path) -> int | None:
    """Return the NSD image id (0-based) in a file name like ``train-0001_nsd-00013.png``."""
    match = _NSD_ID.search(Path(path).name)
    return int(match.group(1)) if match else None


def dataset_root_of(image: str | Path) -> Path:
    """Return the dataset root of an image laid out as ``root/subjXX/<split>/<images>/<file>``."""
    image = Path(image)
    parents = image.resolve().parents
    if len(parents) < 4 or not _SUBJECT_DIR.fullmatch(parents[2].name):
        raise ValueError(f"image {image}: not in the Algonauts layout "
                         "<root>/subjXX/training_split/training_images/<file> (or test_split/"
                         "test_images), so the dataset root holding its captions is unknown")
    return parents[3]


def _require_nsd_id(image: Path) -> int:
    nsd_id = nsd_id_from_name(image)
    if nsd_id is None:
        raise ValueError(f"image {image}: no NSD id in its name; expected a name like "
                         "train-0001_nsd-00013.png")
    return nsd_id


def _read_csv(path: Path, required: Sequence[str], delimiter: str = ",") -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        found = list(reader.fieldnames or [])
        missing = [c for c in required if c not in found]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(repr(c) for c in missing)}; found "
                             f"columns: {', '.join(found) or '(none)'}")
        return list(reader)


class DatasetCaptionsParams(BaseModel):
    """Parameters of ``dataset-captions``."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["auto", "demo", "coco"] = Field(
        "auto", description="'demo': <dataset root>/demo_captions.csv; 'coco': NSD's COCO captions "
        "(stim_info + coco_annotations); 'auto': coco if stim_info is given, else demo")
    stim_info: str | None = Field(None, description="NSD's nsd_stim_info_merged.csv (columns "
                                  "nsdId or the row index, cocoId, cocoSplit)")
    coco_annotations: list[str] = Field(
        default_factory=list, description="COCO captions_train2017.json / captions_val2017.json, "
        "or folders holding them (directly or under annotations/)")
    which: Literal["first", "all"] = Field("first", description="of COCO's ~5 human captions: the "
                                           "first (lowest annotation id) or all joined")
    separator: str = Field(" ", description="joins the captions when which is 'all'")

    @model_validator(mode="after")
    def _check(self) -> DatasetCaptionsParams:
        coco = self.source == "coco" or (self.source == "auto" and self.stim_info is not None)
        if coco and (self.stim_info is None or not self.coco_annotations):
            raise ValueError("COCO captions need stim_info (nsd_stim_info_merged.csv) and "
                             "coco_annotations (captions_train2017.json / captions_val2017.json)")
        if self.source == "demo" and (self.stim_info is not None or self.coco_annotations):
            raise ValueError("stim_info / coco_annotations are for source 'coco', not 'demo'")
        return self


_COCO_FILES = ("captions_train2017.json", "captions_val2017.json")


class DatasetCaptioner:
    """Captions that ship with the dataset, looked up by each image's NSD id.

    The dataset root is the folder above ``subjXX`` in the image's path. ``demo``: the
    demo dataset's ``demo_captions.csv`` (``nsd_id,caption``). ``coco``: NSD's images are
    COCO images; ``nsd_stim_info_merged.csv`` maps each NSD id to its ``cocoId`` (and
    ``cocoSplit``), whose human captions are in COCO's ``captions_*2017.json``.
    """

    component = "dataset-captions"

    def __init__(self, params: DatasetCaptionsParams, base_dir: Path = Path(".")):
        self.params = params
        self.source = "coco" if (params.source == "coco" or (
            params.source == "auto" and params.stim_info is not None)) else "demo"
        self.stim_info: Path | None = None
        self.coco_files: list[Path] = []
        if self.source == "coco":
            self.stim_info = _resolve_local_file(params.stim_info, Path(base_dir), "stim_info")
            for i, entry in enumerate(params.coco_annotations):
                self.coco_files += self._coco_files(entry, Path(base_dir), f"coco_annotations[{i}]")
        self._demo: dict[Path, dict[int, str]] = {}
        self._nsd_to_coco: dict[int, tuple[int, str]] | None = None
        self._coco: dict[int, list[tuple[int, str]]] | None = None

    @staticmethod
    def _coco_files(entry: str, base_dir: Path, field: str) -> list[Path]:
        path = Path(entry).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if path.is_file():
            return [path.resolve()]
        if path.is_dir():
            found = [d / name for d in (path, path / "annotations") for name in _COCO_FILES
                     if (d / name).is_file()]
            if found:
                return [p.resolve() for p in found]
            raise FileNotFoundError(f"{field}: {path}: holds neither {' nor '.join(_COCO_FILES)} "
                                    "(looked in the folder and in annotations/)")
        raise FileNotFoundError(f"{field}: {entry!r}: no such file or folder ({path})")

    # -- demo ------------------------------------------------------------------------------
    def _demo_table(self, root: Path) -> dict[int, str]:
        if root not in self._demo:
            path = root / "demo_captions.csv"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such file; source 'demo' reads the demo "
                                        "dataset's captions (for NSD give stim_info and "
                                        "coco_annotations)")
            self._demo[root] = {int(row["nsd_id"]): row["caption"]
                                for row in _read_csv(path, ("nsd_id", "caption"))}
        return self._demo[root]

    # -- coco ------------------------------------------------------------------------------
    def _load_coco(self) -> None:
        if self._nsd_to_coco is not None:
            return
        rows = _read_csv(self.stim_info, ("cocoId", "cocoSplit"))
        id_column = "nsdId" if rows and "nsdId" in rows[0] else None
        # Without an nsdId column the row order is the NSD id (the file's unnamed index)
        self._nsd_to_coco = {(int(row[id_column]) if id_column else i):
                             (int(row["cocoId"]), row["cocoSplit"]) for i, row in enumerate(rows)}
        captions: dict[int, list[tuple[int, str]]] = {}
        for path in self.coco_files:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or "annotations" not in data:
                raise ValueError(f"{path}: not a COCO captions file (no 'annotations' list)")
            for ann in data["annotations"]:
                captions.setdefault(int(ann["image_id"]), []).append(
                    (int(ann["id"]), str(ann["caption"]).strip()))
        for anns in captions.values():
            anns.sort()  # 'first' = lowest annotation id, independent of file order
        self._coco = captions

    def _coco_caption(self, image: Path) -> str:
        self._load_coco()
        nsd_id = _require_nsd_id(image)
        if nsd_id not in self._nsd_to_coco:
            raise KeyError(f"image {image}: NSD id {nsd_id} has no row in {self.stim_info}")
        coco_id, split = self._nsd_to_coco[nsd_id]
        anns = self._coco.get(coco_id)
        if not anns:
            raise KeyError(f"image {image}: NSD id {nsd_id} is COCO image {coco_id} ({split}), "
                           f"which has no caption in {', '.join(str(p) for p in self.coco_files)}"
                           f"; is captions_{split}.json among coco_annotations?")
        texts = [text for _, text in anns]
        return texts[0] if self.params.which == "first" else self.params.separator.join(texts)

    def caption(self, images: Sequence[str | Path]) -> list[str]:
        """Return each image's caption from the dataset's files."""
        out = []
        for image in map(Path, images):
            if self.source == "coco":
                out.append(self._coco_caption(image))
                continue
            root = dataset_root_of(image)
            table = self._demo_table(root)
            nsd_id = _require_nsd_id(image)
            if nsd_id not in table:
                raise KeyError(f"image {image}: NSD id {nsd_id} not in {root / 'demo_captions.csv'}")
            out.append(table[nsd_id])
        return out

    def identity(self) -> dict[str, Any]:
        """Return the source, the files read (path, size, mtime) and the caption choice."""
        if self.source == "demo":
            # The file sits beside the images; demo images (their bytes key the cache) are
            # drawn together with their captions, so the same image has the same caption.
            return {"component": self.component, "source": "demo",
                    "file": "<dataset root>/demo_captions.csv"}
        return {"component": self.component, "source": "coco",
                "stim_info": _file_identity(self.stim_info),
                "coco_annotations": [_file_identity(p) for p in self.coco_files],
                "which": self.params.which,
                "separator": self.params.separator if self.params.which == "all" else None}


# --------------------------------------------------------------------------------------
# Captions from a user's file
# --------------------------------------------------------------------------------------

class CaptionFileParams(BaseModel):
    """Parameters of ``caption-file``."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., description="CSV / TSV or JSON-lines file; relative to the registry")
    format: Literal["auto", "csv", "tsv", "jsonl"] = Field(
        "auto", description="'auto': by extension (.csv, .tsv, .jsonl / .ndjson)")
    image_column: str = Field("image", description="column / key naming the image: a file name "
                              "(train-0001_nsd-00013.png) or an NSD id (13)")
    caption_column: str = Field("caption", description="column / key holding the caption")


class CaptionFileCaptioner:
    """Captions read from a CSV or JSON-lines file, matched by file name or NSD id.

    An entry whose image value is all digits is an NSD id (0-based, as in Algonauts file
    names); any other value is matched by its file name (folders are ignored). An image
    is looked up by its file name first, then by the NSD id in its name.
    """

    component = "caption-file"

    def __init__(self, params: CaptionFileParams, base_dir: Path = Path(".")):
        self.params = params
        self.path = _resolve_local_file(params.path, Path(base_dir), "caption-file path")
        fmt = params.format
        if fmt == "auto":
            fmt = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(
                self.path.suffix.lower())
            if fmt is None:
                raise ValueError(f"caption-file {self.path}: cannot tell the format from the "
                                 f"extension {self.path.suffix!r}; expected .csv, .tsv, .jsonl or "
                                 ".ndjson, or set format")
        self.format = fmt
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self.by_name: dict[str, str] = {}
        self.by_nsd_id: dict[int, str] = {}
        self._read()

    def _entries(self) -> list[tuple[str, Any, Any]]:
        """Return ``(where, image value, caption)`` per entry."""
        img, cap = self.params.image_column, self.params.caption_column
        if self.format in ("csv", "tsv"):
            rows = _read_csv(self.path, (img, cap), delimiter="\t" if self.format == "tsv" else ",")
            return [(f"{self.path}: row {i + 2}", row[img], row[cap]) for i, row in enumerate(rows)]
        entries = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{self.path}: line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or img not in record or cap not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ValueError(f"{where}: expected an object with keys {img!r} and {cap!r}; "
                                 f"found {keys}")
            entries.append((where, record[img], record[cap]))
        return entries

    def _read(self) -> None:
        seen: dict[Any, str] = {}
        for where, image, caption in self._entries():
            if not isinstance(caption, str):
                raise ValueError(f"{where}: caption is {type(caption).__name__}; expected text")
            value = str(image).strip()
            if not value:
                raise ValueError(f"{where}: empty {self.params.image_column!r}")
            if value.isdigit():
                key: Any = int(value)
                table = self.by_nsd_id
            else:
                key = Path(value).name
                table = self.by_name
            if key in table and table[key] != caption:
                raise ValueError(f"{where}: image {value!r} already has a different caption "
                                 f"({seen[key]})")
            table[key] = caption
            seen[key] = where

    def caption(self, images: Sequence[str | Path]) -> list[str]:
        """Return each image's caption from the file."""
        out, missing = [], []
        for image in map(Path, images):
            if image.name in self.by_name:
                out.append(self.by_name[image.name])
                continue
            nsd_id = nsd_id_from_name(image)
            if nsd_id is not None and nsd_id in self.by_nsd_id:
                out.append(self.by_nsd_id[nsd_id])
                continue
            missing.append(image.name + (f" (NSD id {nsd_id})" if nsd_id is not None else ""))
        if missing:
            raise KeyError(f"caption-file {self.path}: no caption for {len(missing)} of "
                           f"{len(out) + len(missing)} images: {', '.join(missing[:5])}"
                           f"{', ...' if len(missing) > 5 else ''} (the file has "
                           f"{len(self.by_name)} entries by file name, {len(self.by_nsd_id)} by "
                           "NSD id)")
        return out

    def identity(self) -> dict[str, Any]:
        """Return the file's content hash, format and columns."""
        return {"component": self.component, "sha256": self.sha256, "format": self.format,
                "image_column": self.params.image_column,
                "caption_column": self.params.caption_column}
