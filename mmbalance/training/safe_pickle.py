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
import math
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mmbalance.common.core import DataError, DataMissingError

__all__ = ["load_pickle", "loads", "load_npy", "check_finite", "ALLOWED_GLOBALS"]

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


class _ClaimedReader:
    """A binary file whose ``read(n)`` refuses a length claim larger than what is left of the file, so a
    pickle cannot make the unpickler allocate more than the file holds."""

    def __init__(self, f: BinaryIO, size: int, source: str) -> None:
        self.f, self.size, self.source = f, size, source

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.f.tell()
        if n > left:
            raise DataError(f"{self.source}: not a readable pickle (it claims {n} bytes where the file has "
                            f"{left} left); is the file complete (not truncated)?")  # fmt: skip
        return self.f.read(n)

    def readinto(self, b: bytearray) -> int:
        return self.f.readinto(b)

    def readline(self) -> bytes:
        return self.f.readline()


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (whose opcodes can be checked one by one) with a restricted
    ``find_class`` and size checks where an opcode would allocate by a claim: ``BYTEARRAY8``'s length,
    an array constructor's shape, an object array's element list."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: _ClaimedReader, source: str) -> None:
        # latin1: numpy arrays pickled by Python 2 (older CMU releases) load without a UnicodeDecodeError.
        super().__init__(file, encoding="latin1")
        self.source, self.limit = source, file.size

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

    def _check_count(self, shape: object, what: str) -> None:
        """Every element of a pickled array takes at least a byte of the file."""
        dims = shape if isinstance(shape, tuple) else (shape,)
        if not all(isinstance(d, int) and d >= 0 for d in dims) or math.prod(dims) > self.limit:
            raise DataError(f"{self.source}: {what} claims shape {shape!r}, more elements than the file's "
                            f"{self.limit} bytes can hold")  # fmt: skip

    def load_reduce(self) -> None:
        func, args = self.stack[-2], self.stack[-1]
        if func is np.ndarray and args:  # legitimate pickles rebuild arrays through _reconstruct
            self._check_count(args[0], "numpy.ndarray()")
        elif getattr(func, "__name__", "") == "_reconstruct" and len(args) >= 2:
            self._check_count(args[1], "an array's _reconstruct")
        super().load_reduce()

    def load_build(self) -> None:
        inst, state = self.stack[-2], self.stack[-1]
        if isinstance(inst, np.ndarray) and isinstance(state, tuple) and len(state) == 5:
            _, shape, dtype, _, data = state
            self._check_count(shape, "an array's state")
            if isinstance(dtype, np.dtype) and dtype.hasobject:
                if not isinstance(data, list) or len(data) != math.prod(shape):
                    raise DataError(f"{self.source}: object array of shape {shape} holds "
                                    f"{len(data) if isinstance(data, list) else type(data).__name__} element(s)")  # fmt: skip
        super().load_build()

    def load_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self.limit:
            raise DataError(
                f"{self.source}: pickle claims a bytearray of {n} bytes in a file of {self.limit}"
            )
        self.append(bytearray(self.read(n)))

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def loads(data: bytes, source: str = "<bytes>") -> object:
    """Unpickle ``data`` with the restricted unpickler; ``source`` names it in error messages."""
    return _load(io.BytesIO(data), len(data), source)


def _load(f: BinaryIO, size: int, source: str) -> object:
    try:
        return _RestrictedUnpickler(_ClaimedReader(f, size, source), source).load()
    except DataError:
        raise
    except MemoryError:  # a claim the checks above do not see; still one line, naming the file
        raise DataError(f"{source}: pickle asks for more memory than there is (damaged file?)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, struct.error) as e:  # fmt: skip
        raise DataError(f"{source}: not a readable pickle ({type(e).__name__}: {e}); "
                        "is the file complete (not truncated)?") from None  # fmt: skip


def load_pickle(path: str | Path) -> object:
    """Load a dataset pickle, allowing only numpy arrays and plain containers.

    Raises:
        DataMissingError: ``path`` does not exist.
        DataError: the file asks for any other global (named in the message), claims more bytes or
            array elements than it holds, or is not a complete pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise DataMissingError(f"{path}: no such file")
    with path.open("rb") as f:
        return _load(f, path.stat().st_size, str(path))


def load_npy(path: str | Path) -> np.ndarray:
    """Load a ``.npy`` file of plain (not object) dtype, checking the header's shape against the file size
    before anything is allocated.

    Object arrays are refused, as ``np.load`` refuses them by default (``allow_pickle=False``, which the
    official loaders run with): their payload is a pickle, which no released ``.npy`` needs.
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
            shape, fortran, dtype = read_header(f)
        except ValueError as e:
            raise DataError(f"{path}: not a .npy file ({e})") from None
        if dtype.hasobject:
            raise DataError(f"{path}: object array (dtype {dtype}) refused: .npy features are plain numeric "
                            "or bytes arrays (np.load refuses object arrays without allow_pickle)")  # fmt: skip
        claimed, held = math.prod(shape) * dtype.itemsize, path.stat().st_size - f.tell()
        if claimed != held:
            raise DataError(f"{path}: .npy header claims shape {shape} of {dtype} ({claimed} bytes), the file "
                            f"holds {held} bytes of data (truncated or damaged)")  # fmt: skip
        array = np.fromfile(f, dtype=dtype, count=math.prod(shape))
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def check_finite(array: np.ndarray, source: str | Path, what: str) -> None:
    """Raise a ``DataError`` naming the first NaN or infinite element of ``array`` (its index and how many
    there are), e.g. ``x.wav: the WAV data contains NaN at index (17, 0) (3 non-finite value(s) of 200)``."""
    if array.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(array)
    if not bad.any():
        return
    index = np.unravel_index(int(np.argmax(bad)), array.shape)
    value = array[index]
    kind = "NaN" if np.isnan(value) else ("+inf" if value.real > 0 else "-inf")
    raise DataError(f"{source}: {what} contains {kind} at index {tuple(int(i) for i in index)} "
                    f"({int(bad.sum())} non-finite value(s) of {array.size})")  # fmt: skip
