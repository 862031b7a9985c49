"""Names that become file and folder names: experiment names, model names, sweep values.

An experiment's ``name`` and each model's name (with its sweep point) name folders under
``output.dir``; a name like ``../../x`` would write outside it, and ``CON`` or ``a:b``
cannot be created on Windows. Names are checked when the registry is read, each problem
with its YAML path.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

__all__ = ["name_problem", "registry_name_problems", "normalise_subject"]

# Windows device names, reserved with any extension ("CON.txt") and in any case.
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}
# Path separators only: ':' '*' '?' '"' '<' '>' '|' are invalid on Windows too, but a sweep
# over mappings (`mapper: [{name: ridge}, ...]`) names folders with JSON, quotes included.
_FORBIDDEN = {"/": "'/'", "\\": "'\\'"}
_MAX_LENGTH = 200  # file systems allow 255 bytes; leave room for the temp-file affixes


def name_problem(name: str) -> str | None:
    """Return why ``name`` cannot be a file or folder name, or None when it can."""
    if not name:
        return "empty name"
    if name in (".", ".."):
        return f"{name!r} is not a folder name"
    for char, shown in _FORBIDDEN.items():
        if char in name:
            return f"contains {shown} (names become folder names)"
    if ".." in name:
        return "contains '..'"
    control = [c for c in name if unicodedata.category(c)[0] == "C"]
    if control:
        return f"contains the control character {control[0]!r}"
    if name.startswith("."):
        return "starts with '.' (hidden; neuroenc's temporary files are named '.<name>...')"
    if name != name.strip() or name.endswith("."):
        return "starts or ends with a space, or ends with '.' (Windows drops them)"
    if name.split(".")[0].upper() in _WINDOWS_RESERVED:
        return f"{name.split('.')[0]!r} is a reserved device name on Windows"
    if len(name.encode()) > _MAX_LENGTH:
        return f"{len(name.encode())} bytes long; at most {_MAX_LENGTH}"
    return None


def _sweep_strings(value: Any, path: str) -> Iterable[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _sweep_strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _sweep_strings(item, f"{path}.{i}")


def registry_name_problems(registry) -> list[tuple[str, str]]:
    """Return ``(yaml_path, message)`` for every name in a registry that cannot name a folder.

    Checks the experiment name, each model name, every string in a sweep's values, each
    variant's folder name (``model@key=value``), and that no two variants share a folder:
    a model named like another model's sweep point, a sweep value listed twice, or names
    that differ only in case (one folder on macOS and Windows).
    """
    problems: list[tuple[str, str]] = []

    def check(path: str, name: str, what: str) -> bool:
        reason = name_problem(name)
        if reason is not None:
            problems.append((path, f"{what} {name!r}: {reason}; use letters, digits, '-', '_', "
                                   "'.', '@', '=' and ','"))
        return reason is None

    check("name", registry.name, "experiment name")
    for model_name, model in registry.models.items():
        base = f"models.{model_name}"
        if not check(base, model_name, "model name"):
            continue
        for key, values in model.sweep.items():
            for path, text in _sweep_strings(values, f"{base}.sweep.{key}"):
                check(path, text, "sweep value")
    if problems:
        return problems

    from neuroenc.core.config import variant_name  # here: config imports this module

    owners: dict[str, tuple[str, str]] = {}  # casefolded folder -> (folder, description)
    for model_name, model in registry.models.items():
        base = f"models.{model_name}"
        points = _points(model.sweep)
        for point in points:
            folder = variant_name(model_name, point)
            where = f"sweep point {_point_label(point)} of model {model_name!r}" if point \
                else f"model {model_name!r}"
            path = f"{base}.sweep" if point else base
            if point and not check(path, folder, "sweep point folder"):
                continue
            previous = owners.get(folder.casefold())
            if previous is not None:
                same = "the same folder" if previous[0] == folder else \
                    "folders that differ only in case (one folder on macOS and Windows)"
                problems.append((path, f"{where} and {previous[1]} would both write "
                                       f"models/{folder}/ ({same}); rename one or drop the "
                                       "repeated value"))
            else:
                owners[folder.casefold()] = (folder, where)
    return problems


def _points(sweep: dict[str, list[Any]]) -> list[dict[str, Any]]:
    import itertools

    if not sweep:
        return [{}]
    keys = list(sweep)
    return [dict(zip(keys, values)) for values in itertools.product(*(sweep[k] for k in keys))]


def _point_label(point: dict[str, Any]) -> str:
    from neuroenc.core.config import variant_name

    return variant_name("", point)[1:]


def normalise_subject(value: int | str) -> int | str:
    """Return the subject number of ``1``, ``'01'`` or ``'subj01'``; other values unchanged."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"(?:subj)?0*(\d{1,2})", str(value).strip())
    return int(match.group(1)) if match else value
