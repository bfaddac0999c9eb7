"""A restricted unpickler for dataset files: numpy arrays and plain containers, nothing else.

The MOSI and IEMOCAP releases ship as pickles (MulT, MMSA). ``pickle.load`` runs whatever callable a
file names, so a tampered file could run any command. ``load_pickle`` resolves only the globals that
rebuild numpy arrays, dtypes and scalars (plus ``_codecs.encode``, which protocol-2 pickles use for
bytes, and ``OrderedDict``); dicts, lists, tuples, str, bytes, numbers, None and bools need no global
at all. Any other global is refused with a ``DataError`` naming the file and the global, before
anything is called. Object arrays' elements go through the same unpickler, so they are restricted too.

Example::

    data = load_pickle("data/mosi/mosi_data.pkl")   # {'train': {'text': ndarray, ...}, ...}
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from mmbalance.core import DataError, DataMissingError

__all__ = ["load_pickle", "loads", "load_npy", "ALLOWED_GLOBALS"]

# (module, name) pairs a dataset pickle may name. numpy < 2 writes ``numpy.core.*``, numpy >= 2
# ``numpy._core.*``; both spellings are accepted and resolved to the module this numpy has.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),  # ndarray.__reduce__
    ("numpy._core.multiarray", "scalar"),  # numpy scalars (np.float64(1.5))
    ("numpy._core.numeric", "_frombuffer"),  # ndarray.__reduce_ex__ with protocol 5
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    ("collections", "OrderedDict"),
})  # fmt: skip


def _canonical_module(module: str) -> str:
    return "numpy._core" + module[len("numpy.core") :] if module.startswith("numpy.core") else module


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        # latin1: numpy arrays pickled by Python 2 (older CMU releases) load without a UnicodeDecodeError.
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        canonical = _canonical_module(module)
        if (canonical, name) not in ALLOWED_GLOBALS:
            raise DataError(
                f"{self.source}: refused to unpickle global {module}.{name}: dataset pickles may only hold "
                "numpy arrays, dicts, lists, tuples, strings, bytes and numbers (is the file tampered with?)"
            )
        if canonical.startswith("numpy._core") and not hasattr(np, "_core"):  # numpy < 2
            canonical = "numpy.core" + canonical[len("numpy._core") :]
        return getattr(importlib.import_module(canonical), name)


def loads(data: bytes, source: str = "<bytes>") -> object:
    """Unpickle ``data`` with the restricted unpickler; ``source`` names it in error messages."""
    return _load(io.BytesIO(data), source)


def _load(f: io.BufferedIOBase, source: str) -> object:
    try:
        return _RestrictedUnpickler(f, source).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{source}: not a readable pickle ({type(e).__name__}: {e}); "
                        "is the file complete (not truncated)?") from None  # fmt: skip


def load_pickle(path: str | Path) -> object:
    """Load a dataset pickle, allowing only numpy arrays and plain containers.

    Raises:
        DataMissingError: ``path`` does not exist.
        DataError: the file asks for any other global (named in the message), or is not a
            complete pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise DataMissingError(f"{path}: no such file")
    with path.open("rb") as f:
        return _load(f, str(path))


def load_npy(path: str | Path) -> np.ndarray:
    """Load a ``.npy`` file; an object array's pickled payload goes through the restricted unpickler.

    ``np.load(allow_pickle=True)`` would unpickle without restriction; plain arrays never need it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataMissingError(f"{path}: no such file")
    with path.open("rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(f)
        except ValueError as e:
            raise DataError(f"{path}: not a .npy file ({e})") from None
        if not dtype.hasobject:
            f.seek(0)
            try:
                return np.load(f, allow_pickle=False)
            except ValueError as e:
                raise DataError(f"{path}: unreadable .npy array ({e}); is the file truncated?") from None
        array = _load(f, str(path))
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise DataError(f"{path}: object array payload does not match its header shape {shape}")
    return array
