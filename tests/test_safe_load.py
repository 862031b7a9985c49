"""Files from someone else's dataset or cache must not run code when neuroenc reads them.

Each payload, if unpickled, writes a marker file; the tests assert the load is refused
with a clear error and that the marker does not exist.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from algonauts_fixture import write_tiny_algonauts

from neuroenc_builtins.algonauts import DatasetError, read_subject
from neuroenc.core.safe_load import UnsafePickleError, load_npy, restricted_loads


class Payload:
    """Unpickling this calls exec, which writes ``marker``: harmless, and visible."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _poisoned_mapping(path: Path, marker: Path) -> None:
    mapping = {0: "Unknown", 1: "early", 2: Payload(marker)}
    np.save(path, np.array(mapping, dtype=object), allow_pickle=True)


def test_payload_really_runs_with_allow_pickle(tmp_path):
    # The threat is real: numpy's own loader runs the payload (so the tests below can fail).
    marker = tmp_path / "marker"
    _poisoned_mapping(tmp_path / "m.npy", marker)
    np.load(tmp_path / "m.npy", allow_pickle=True)
    assert marker.read_text() == "ran"


def test_load_npy_refuses_a_pickled_payload(tmp_path):
    marker = tmp_path / "marker"
    _poisoned_mapping(tmp_path / "m.npy", marker)
    with pytest.raises(UnsafePickleError, match=r"imports builtins\.exec"):
        load_npy(tmp_path / "m.npy")
    assert not marker.exists()


def test_load_npy_reads_the_challenge_mapping_format(tmp_path):
    mapping = {0: "Unknown", 1: "V1v", np.int64(2): "V1d"}  # numpy ints pickle as scalars
    np.save(tmp_path / "m.npy", mapping)
    assert load_npy(tmp_path / "m.npy").item() == {0: "Unknown", 1: "V1v", 2: "V1d"}
    np.save(tmp_path / "a.npy", np.arange(5, dtype=np.float32))
    np.testing.assert_array_equal(load_npy(tmp_path / "a.npy", mmap_mode="r"), np.arange(5))


def test_restricted_loads_refuses_globals_outside_the_allow_list(tmp_path):
    marker = tmp_path / "marker"
    with pytest.raises(UnsafePickleError):
        restricted_loads(pickle.dumps(Payload(marker)))
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        restricted_loads(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    assert not marker.exists()
    assert restricted_loads(pickle.dumps({1: "a", "b": [1.5, None, (2, b"x")]})) == \
        {1: "a", "b": [1.5, None, (2, b"x")]}


def test_reader_refuses_a_poisoned_roi_mapping(tmp_path):
    write_tiny_algonauts(tmp_path, n_train=6, n_test=3, n_vertices=(40, 50))
    marker = tmp_path / "marker"
    _poisoned_mapping(tmp_path / "subj01/roi_masks/mapping_streams.npy", marker)
    with pytest.raises(DatasetError) as info:
        read_subject(tmp_path, 1)
    assert str(info.value).startswith(
        "subj01/roi_masks/mapping_streams.npy: refused to load: the pickle imports builtins.exec")
    assert not marker.exists()
