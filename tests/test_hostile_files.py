"""Hostile and unusual files, each built in its real format: headers that claim absurd sizes are refused
in one line before anything is allocated (proved under an address-space cap), real-world WAV chunks are
read, NaN / inf are named with their index, object ``.npy`` arrays are refused."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
from _bounded import run_bounded
from scipy.io import wavfile

from mmbalance.fixtures._media import EXTRA_CHUNKS, fmt_chunk, riff, tone
from mmbalance.training.audio import WAV_RATES, ogm_ge_spectrogram, read_wav, resample
from mmbalance.training.data import DataError
from mmbalance.training.safe_pickle import check_finite, load_npy, load_pickle


def pcm16(seconds: float = 0.5, rate: int = 16000) -> tuple[np.ndarray, bytes]:
    x = tone(2, seconds, rate)
    pcm = (x * 32767).astype("<i2")
    return pcm, pcm.tobytes()


# --- WAV ---------------------------------------------------------------------------------------------
def test_wav_with_extra_chunks_reads_as_the_plain_file(tmp_path):
    pcm, data = pcm16()
    plain, edited = tmp_path / "plain.wav", tmp_path / "edited.wav"
    plain.write_bytes(riff([fmt_chunk(16000), (b"data", data)]))
    edited.write_bytes(riff([fmt_chunk(16000), *EXTRA_CHUNKS[:2], (b"data", data), *EXTRA_CHUNKS[2:]]))
    with pytest.warns(wavfile.WavFileWarning):  # what the old reader turned into an error
        wavfile.read(edited)
    a, rate = read_wav(plain)
    b, _ = read_wav(edited)
    assert rate == 16000 and np.array_equal(a, b)
    np.testing.assert_allclose(a, pcm / 32768, atol=0)


def test_wav_with_a_damaged_trailing_chunk_still_reads(tmp_path):
    """A tag appended after the samples with a size past the end (as some editors write) is never read."""
    pcm, data = pcm16()
    path = tmp_path / "tail.wav"
    path.write_bytes(
        riff([fmt_chunk(16000), (b"data", data)]) + b"LIST" + (10**6).to_bytes(4, "little") + b"INFO"
    )
    np.testing.assert_allclose(read_wav(path)[0], pcm / 32768, atol=0)


@pytest.mark.parametrize(("bits", "tag", "dtype"), [(8, 1, "u1"), (24, 1, None), (32, 1, "<i4"), (32, 3, "<f4"),
                                                    (64, 3, "<f8")])  # fmt: skip
def test_wav_sample_formats_match_scipy(tmp_path, bits, tag, dtype):
    x = tone(1, 0.1, 8000).reshape(-1, 2)  # stereo
    if tag == 3:
        raw = x.astype(dtype).tobytes()
    elif bits == 8:
        raw = (x * 127 + 128).astype("u1").tobytes()
    elif bits == 24:
        raw = b"".join(
            int(v).to_bytes(3, "little", signed=True) for v in (x * 2**23 * 0.99).astype(int).ravel()
        )
    else:
        raw = (x * 2**31 * 0.99).astype(dtype).tobytes()
    path = tmp_path / "x.wav"
    path.write_bytes(riff([fmt_chunk(8000, 2, bits, tag), (b"data", raw)]))
    rate, ref = wavfile.read(path)
    ref = ref.astype(np.float64)
    if tag == 1:
        ref = (ref - 128) / 128 if bits == 8 else ref / 2 ** (bits - 1 if bits != 24 else 31)
    got, got_rate = read_wav(path)
    assert got_rate == rate == 8000
    np.testing.assert_allclose(got, ref.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: riff([fmt_chunk(16000), (b"data", d)])[:-100], "claims 16000 bytes, the file ends 15900"),
        (lambda d: riff([fmt_chunk(16000)]), "without a data chunk"),
        (lambda d: riff([(b"data", d)]), "without a fmt  chunk"),
        (lambda d: riff([fmt_chunk(16000, bits=12), (b"data", d)]), "inconsistent WAV format"),
        (lambda d: riff([fmt_chunk(16000, tag=2), (b"data", d)]), "format tag 0x0002"),
        (lambda d: b"RIFX" + riff([fmt_chunk(16000), (b"data", d)])[4:], "not a RIFF/WAVE file"),
        (lambda d: riff([fmt_chunk(20_000_003), (b"data", d)]), "sample rate of 20000003 Hz"),
        (lambda d: riff([fmt_chunk(2**31 - 1), (b"data", d)]), "sample rate of 2147483647 Hz"),
        (lambda d: riff([fmt_chunk(0), (b"data", d)]), "sample rate of 0 Hz"),
    ],
)
def test_damaged_or_absurd_wav_headers_are_one_line_errors(tmp_path, make, message):
    _, data = pcm16()
    path = tmp_path / "bad.wav"
    path.write_bytes(make(data))
    with pytest.raises(DataError, match=message) as e:
        read_wav(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_wav_rate_bombs_stay_within_the_memory_cap(tmp_path):
    """The issue's two headers: before, the first grew the process past 4 GB resampling for 20 MHz, the
    second ended in a MemoryError ("320 GiB") from ``resample``. Here the cap is the imports + 512 MiB."""
    _, data = pcm16(2.0)  # 64 KB of samples: a 70 KB file, as in the issue
    for name, rate in (("inconsistent", 20_000_003), ("int_max", 2**31 - 1)):
        block = struct.pack("<HHIIHH", 1, 1, rate, 32000 if name == "inconsistent" else rate * 2, 2, 16)
        (tmp_path / f"{name}.wav").write_bytes(riff([(b"fmt ", block), (b"data", data)]))
    cases = {n: f"ogm_ge_spectrogram(*read_wav(Path({str(tmp_path / n) + '.wav'!r})))"
             for n in ("inconsistent", "int_max")}  # fmt: skip
    got = run_bounded(
        "from pathlib import Path\nfrom mmbalance.training.audio import read_wav, ogm_ge_spectrogram", cases
    )
    assert got["inconsistent"]["outcome"] == "DataError", got
    assert "20000003 Hz" in got["inconsistent"]["message"]
    assert got["int_max"]["outcome"] == "DataError" and "2147483647 Hz" in got["int_max"]["message"]
    assert WAV_RATES[1] == 384_000


def test_wav_nan_is_named_with_its_index(tmp_path):
    x = np.zeros((100, 2), "<f4")
    x[17, 1] = np.nan
    path = tmp_path / "nan.wav"
    path.write_bytes(riff([fmt_chunk(16000, 2, 32, 3), (b"data", x.tobytes())]))
    with pytest.raises(
        DataError, match=r"nan.wav: the WAV data contains NaN at index \(17, 1\) \(1 non-finite"
    ):
        read_wav(path)


def test_reading_only_the_seconds_used_changes_no_sample_of_the_spectrogram(tmp_path):
    """CREMA-D reads 3 s + 1 s of a long clip: resampling's filter reaches far less than the extra second."""
    _, data = pcm16(9.0)
    path = tmp_path / "long.wav"
    path.write_bytes(riff([fmt_chunk(16000), (b"data", data)]))
    full, rate = read_wav(path)
    cut, _ = read_wav(path, max_seconds=4)
    assert len(cut) == 4 * 16000 < len(full)
    np.testing.assert_array_equal(
        resample(cut, rate, 22050)[: 3 * 22050], resample(full, rate, 22050)[: 3 * 22050]
    )
    assert ogm_ge_spectrogram(cut, rate).equal(ogm_ge_spectrogram(full, rate))


# --- .npy --------------------------------------------------------------------------------------------
def npy_with_shape(path, shape, data: bytes = b"\0" * 64) -> None:
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(data)


def test_npy_header_claiming_a_huge_shape_is_refused_within_the_memory_cap(tmp_path):
    """Before: a 57-line MemoryError traceback out of ``np.load`` for (1e9, 128)."""
    npy_with_shape(tmp_path / "bomb.npy", (10**9, 128))
    got = run_bounded(
        "from mmbalance.training.safe_pickle import load_npy",
        {"bomb": f"load_npy({str(tmp_path / 'bomb.npy')!r})"},
    )
    assert got["bomb"]["outcome"] == "DataError", got
    assert "header claims shape (1000000000, 128) of float32 (512000000000 bytes)" in got["bomb"]["message"]
    assert "holds 64 bytes" in got["bomb"]["message"]


def test_npy_object_arrays_are_refused_and_fortran_order_read(tmp_path):
    np.save(tmp_path / "o.npy", np.array([b"a", 1], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"o.npy: object array \(dtype object\) refused"):
        load_npy(tmp_path / "o.npy")
    x = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    np.save(tmp_path / "f.npy", x)
    np.testing.assert_array_equal(load_npy(tmp_path / "f.npy"), x)


def test_check_finite_names_kind_and_first_index():
    x = np.zeros((3, 4))
    x[2, 1], x[1, 3] = np.inf, -np.inf
    with pytest.raises(DataError, match=r"f.npy: spectrogram contains -inf at index \(1, 3\) \(2 non-finite"):
        check_finite(x, "f.npy", "spectrogram")
    check_finite(np.array([1, 2]), "i.npy", "ints")  # integers are always finite


# --- pickle ------------------------------------------------------------------------------------------
class _Claim:
    def __init__(self, reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


def _hostile_pickles(tmp_path) -> dict[str, str]:
    from numpy._core.multiarray import _reconstruct

    huge = (10**9, 128)
    payloads = {
        "binbytes8": b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"xx.",
        "bytearray8": b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b"xx.",
        "reconstruct": pickle.dumps(_Claim((_reconstruct, (np.ndarray, huge, b"b"))), protocol=2),
        "ndarray_call": pickle.dumps(_Claim((np.ndarray, (huge,))), protocol=2),
        "object_state": pickle.dumps(
            _Claim((_reconstruct, (np.ndarray, (0,), b"b"), (1, huge, np.dtype(object), False, [1, 2]))),
            protocol=2,
        ),
    }
    for name, data in payloads.items():
        (tmp_path / f"{name}.pkl").write_bytes(data)
    return {name: f"load_pickle({str(tmp_path / name) + '.pkl'!r})" for name in payloads}


def test_pickle_size_claims_are_refused_within_the_memory_cap(tmp_path):
    got = run_bounded("from mmbalance.training.safe_pickle import load_pickle", _hostile_pickles(tmp_path))
    assert {k: v["outcome"] for k, v in got.items()} == dict.fromkeys(got, "DataError"), got
    assert "claims 1099511627776 bytes where the file has 3 left" in got["binbytes8"]["message"]
    assert "bytearray of 1099511627776 bytes" in got["bytearray8"]["message"]
    for name in ("reconstruct", "ndarray_call", "object_state"):
        assert "claims shape (1000000000, 128)" in got[name]["message"], got[name]


def test_pickle_object_state_must_match_its_shape(tmp_path):
    from numpy._core.multiarray import _reconstruct

    path = tmp_path / "short.pkl"
    state = (1, (3,), np.dtype(object), False, [1, 2])
    path.write_bytes(pickle.dumps(_Claim((_reconstruct, (np.ndarray, (0,), b"b"), state)), protocol=2))
    with pytest.raises(DataError, match=r"short.pkl: object array of shape \(3,\) holds 2 element"):
        load_pickle(path)


# --- a file that breaks during training ------------------------------------------------------------------
def test_unreadable_file_in_training_is_one_line_exit_2_and_leaves_no_run_folder(tmp_path, capsys):
    """Before: the run folder stayed with status ``failed`` (and the rate bomb's stuck at ``running``).
    The fixture's fingerprint does not decode WAVs, so the bomb is met by the training loop."""
    from mmbalance.cli import main
    from mmbalance.fixtures import cremad

    cremad.write(tmp_path / "data")
    wav = sorted((tmp_path / "data" / "cremad" / "AudioWAV").iterdir())[0]
    good = wav.read_bytes()
    _, data = pcm16(2.0)
    wav.write_bytes(riff([fmt_chunk(20_000_003), (b"data", data)]))
    results = tmp_path / "results"
    argv = ["run", "--dataset", "cremad", "--method", "joint", "--data-root", str(tmp_path / "data"),
            "--results", str(results), "--quiet", "--device", "cpu"]  # fmt: skip
    for s in ("dataset_params.image_size=16", "model_params.width=4", "epochs=1", "batch_size=6"):
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"error: {wav}: WAV header claims a sample rate of 20000003 Hz, outside 1000..384000 Hz\n"
    assert not (results / "runs").exists() or not list((results / "runs").iterdir())
    wav.write_bytes(good)  # fixed: the run trains, under a new data fingerprint
    assert main(argv) == 0


def test_a_data_loader_workers_error_keeps_the_adapters_message():
    from torch._utils import ExceptionWrapper

    from mmbalance.training.runner import _worker_message

    try:
        raise DataError("x.wav: the WAV data contains NaN at index (3, 0) (1 non-finite value(s) of 9)")
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataError) as e:
        wrapped.reraise()
    assert str(e.value).startswith("Caught DataError") and "Traceback" in str(e.value)
    assert (
        _worker_message(e.value)
        == "x.wav: the WAV data contains NaN at index (3, 0) (1 non-finite value(s) of 9)"
    )


def test_pt_tensor_claiming_a_huge_storage_is_refused_within_the_memory_cap(tmp_path):
    """BalanceBenchmark's CREMA-D ``.pt`` fbank: a storage record of 16 bytes whose pickle claims
    2**31 - 1 elements; torch checks the record before allocating, and the reader says so in one line."""
    import zipfile

    import torch

    torch.save(torch.zeros(4), tmp_path / "ok.pt")
    with zipfile.ZipFile(tmp_path / "ok.pt") as src, zipfile.ZipFile(tmp_path / "bomb.pt", "w") as out:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("data.pkl"):  # the storage's numel (BININT1 4) and the tensor's size
                data = data.replace(b"cpuq\x04K\x04t", b"cpuq\x04J\xff\xff\xff\x7ft")
                data = data.replace(b"K\x00K\x04\x85", b"K\x00J\xff\xff\xff\x7f\x85")
                assert data.count(b"\xff\xff\xff\x7f") == 2
            out.writestr(name, data)
    cases = {"bomb": f"read_tensor_file(Path({str(tmp_path / 'bomb.pt')!r}))"}
    got = run_bounded(
        "from pathlib import Path\nfrom mmbalance.datasets.cremad import read_tensor_file", cases
    )
    assert got["bomb"]["outcome"] == "DataError", got
    assert got["bomb"]["message"].startswith(f"{tmp_path / 'bomb.pt'}: not a readable torch tensor file")
    assert "8589934588" in got["bomb"]["message"]


# --- h5 ------------------------------------------------------------------------------------------------
def _h5_claim(path, name: str, shape: tuple[int, ...], dtype: str) -> None:
    """Replace dataset ``name`` by one that claims ``shape``: chunked and compressed, never written, so
    the file stays a few KB (the fill value is all a reader would get, after allocating all of it)."""
    import h5py

    with h5py.File(path, "a") as f:
        del f[name]
        f.create_dataset(name, shape=shape, dtype=dtype, chunks=(1,) * (len(shape) - 2) + shape[-2:][:1] + (1,),
                         compression="gzip")  # fmt: skip


def test_h5_shape_claims_are_refused_within_the_memory_cap(tmp_path):
    """IEMOCAP's per-utterance features (read whole, MMIN normalises per utterance) and BraTS' label
    volume (read whole for the tumour slices): a claim of 1e9 x 130 values / 1e4 x 1e4 x 155 voxels."""
    import h5py

    from mmbalance.fixtures import brats, iemocap

    ie = iemocap.write(tmp_path / "data")
    with h5py.File(ie / "A" / "comparE.h5") as f:
        uid = sorted(f)[0]
    _h5_claim(ie / "A" / "comparE.h5", uid, (10**9, 130), "f4")
    br = brats.write(tmp_path / "data")
    volume = sorted((br / "h5").glob("*.h5"))[0]
    _h5_claim(volume, "label", (10**4, 10**4, 155), "u1")
    _h5_claim(volume, "image", (4, 10**4, 10**4, 155), "f4")
    cases = {
        "iemocap": f"[Iemocap(IemocapParams(), Path({str(ie)!r})).split(s)[0] for s in ('train', 'valid', 'test')]",
        "brats": f"[Brats(BratsParams(crop=32), Path({str(br)!r})).split(s)[0] for s in ('train', 'valid', 'test')]",
    }
    imports = ("from pathlib import Path\nfrom mmbalance.datasets.iemocap import Iemocap, IemocapParams\n"
               "from mmbalance.datasets.brats import Brats, BratsParams")  # fmt: skip
    got = run_bounded(imports, cases)
    assert got["iemocap"]["outcome"] == "DataError", got
    assert f"comparE.h5: utterance {uid!r} claims shape (1000000000, 130)" in got["iemocap"]["message"]
    assert got["brats"]["outcome"] == "DataError", got
    assert f"{volume}: label claims shape (10000, 10000, 155)" in got["brats"]["message"]
