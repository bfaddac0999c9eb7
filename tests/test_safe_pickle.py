"""The restricted unpickler loads numpy/container pickles and refuses anything else, running nothing."""

from __future__ import annotations

import collections
import os
import pickle
import subprocess

import numpy as np
import pytest

from mmbalance.training.data import DataError, DataMissingError
from mmbalance.training.safe_pickle import load_npy, load_pickle, loads


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_and_containers_roundtrip(tmp_path, protocol):
    data = {
        "train": {"audio": np.arange(6, dtype=np.float32).reshape(1, 2, 3), "labels": np.ones((1, 1, 1))},
        "ids": np.array([[b"vid", b"0", b"1"]]),
        "objects": np.array([b"a", "b"], dtype=object),
        "scalars": [np.float64(1.5), np.int64(3), 2, 2.5, None, True, "s", b"b", (1, 2)],
        "ordered": collections.OrderedDict(x=1),
    }
    path = tmp_path / "d.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    got = load_pickle(path)
    np.testing.assert_array_equal(got["train"]["audio"], data["train"]["audio"])
    assert got["train"]["audio"].dtype == np.float32
    assert got["ids"][0, 0] == b"vid"
    assert list(got["objects"]) == [b"a", "b"]
    assert got["scalars"] == data["scalars"]
    assert got["ordered"] == {"x": 1}


class _Exploit:
    """Unpickling this with ``pickle.load`` would run a shell command that creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _PopenExploit(_Exploit):
    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.marker)],))


@pytest.mark.parametrize("exploit", [_Exploit, _PopenExploit])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, exploit):
    marker = tmp_path / "pwned"
    path = tmp_path / "mosi_data.pkl"
    # The payload sits inside an otherwise valid dataset dict, after a real array.
    path.write_bytes(pickle.dumps({"train": {"audio": np.zeros(3), "evil": exploit(marker)}}))
    with pytest.raises(DataError) as e:
        load_pickle(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "refused" in msg and ("system" in msg or "Popen" in msg)
    assert not marker.exists()


def test_numpy_gadget_outside_the_allowlist_is_refused():
    # numpy itself has callables that execute code; only the array-rebuilding ones are allowed.
    payload = b"cnumpy.testing._private.utils\nrunstring\n(S'import os'\ndtR."
    with pytest.raises(DataError, match="numpy.testing._private.utils.runstring"):
        loads(payload, source="gadget.pkl")


def test_builtins_eval_is_refused():
    payload = b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(DataError, match="gadget.pkl: refused to unpickle global builtins.eval"):
        loads(payload, source="gadget.pkl")


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(DataMissingError, match="nope.pkl: no such file"):
        load_pickle(tmp_path / "nope.pkl")
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps({"a": np.zeros((50, 50))})[:200])
    with pytest.raises(DataError, match=r"cut.pkl: not a readable pickle .*truncated"):
        load_pickle(path)


def test_load_npy_plain_and_object(tmp_path):
    names = np.array([[b"Ses01F_impro01_F000"], [b"Ses01F_impro01_F001"]])
    np.save(tmp_path / "s.npy", names)
    np.testing.assert_array_equal(load_npy(tmp_path / "s.npy"), names)
    np.save(tmp_path / "o.npy", names.astype(object), allow_pickle=True)
    with pytest.raises(DataError, match="o.npy: object array"):  # as np.load(allow_pickle=False)
        load_npy(tmp_path / "o.npy")
    evil = tmp_path / "evil.npy"
    np.save(evil, np.array([_Exploit(tmp_path / "pwned")], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="evil.npy: object array"):
        load_npy(evil)
    assert not (tmp_path / "pwned").exists()
    cut = tmp_path / "cut.npy"
    cut.write_bytes((tmp_path / "s.npy").read_bytes()[:-10])
    with pytest.raises(DataError, match="cut.npy"):
        load_npy(cut)
