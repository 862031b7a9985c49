"""Loading ``.npy`` files from someone else's dataset or cache without running their code.

``np.load`` with ``allow_pickle`` switched on unpickles object arrays, and unpickling can call any
importable function: a crafted ``mapping_<class>.npy`` in a shared or downloaded dataset
would run code on ``neuroenc run``. The Algonauts 2023 challenge ships its ROI mappings
as pickled dicts inside 0-d object arrays, so they have to be unpickled; this module does
it with an unpickler that resolves only the handful of numpy globals an object array of
plain values needs (``ndarray``, ``dtype``, ``_reconstruct`` and numeric ``scalar``) and
refuses every other global, before anything is called. Plain values (dict, list, tuple,
int, float, str, bytes, bool, None) need no global at all.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["UnsafePickleError", "load_npy", "restricted_loads"]

# (module, name) pairs an object array of plain Python values pickles to. numpy 2 writes
# numpy._core.multiarray, numpy 1 wrote numpy.core.multiarray.
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global outside the allow-list (it could run code); nothing was called."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name
        super().__init__(f"the pickle imports {module}.{name}, which is not allowed (only plain "
                         "values: dict, list, int, float, str, numpy arrays and numbers)")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(module, name)


def restricted_loads(data: bytes) -> Any:
    """Return the object pickled in ``data``, refusing any global but numpy's array types.

    Raises
    ------
    UnsafePickleError
        The pickle names another global (e.g. ``builtins.exec``); no code ran.
    pickle.UnpicklingError, EOFError, ValueError
        The data is not a valid pickle.
    """
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def load_npy(path: str | os.PathLike[str], *, mmap_mode: str | None = None) -> Any:
    """Return the array in a ``.npy`` file, unpickling object arrays with an allow-list.

    Numeric arrays load as ``np.load`` loads them (optionally memory-mapped); an object
    array is read through :func:`restricted_loads`, so a crafted file cannot run code.
    Other files (``.npz`` archives under a ``.npy`` name) are returned as ``np.load``
    returns them, never unpickled.

    Raises
    ------
    UnsafePickleError
        An object array whose pickle names a global outside the allow-list.
    OSError, ValueError, EOFError, pickle.UnpicklingError
        The file cannot be read as a ``.npy`` file.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            fh.close()
            return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
        fh.seek(0)
        version = np.lib.format.read_magic(fh)
        reader = {(1, 0): np.lib.format.read_array_header_1_0,
                  (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:  # version 3.0 (utf-8 field names): numpy reads it, never pickled
            return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
        _, _, dtype = reader(fh)
        if not dtype.hasobject:
            fh.close()
            return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
        obj = restricted_loads(fh.read())
    if not isinstance(obj, np.ndarray):
        raise ValueError(f"the object array's pickle holds a {type(obj).__name__}, not an array")
    return obj
