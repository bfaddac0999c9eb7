"""Audio front ends of the audio-visual balancing papers, in torch ops (torchaudio and librosa do not install
beside our pinned torch; the WAV is parsed here, scipy resamples it).

- ``read_wav`` + ``resample``: ``librosa.load(path, sr=...)``: mono float in [-1, 1] at the target rate
  (scipy's polyphase filter where librosa uses soxr / resampy: the same band limit, not bit-identical).
  The header is checked before a sample is read (rate within ``WAV_RATES``, chunks within the file, format
  consistent), chunks other than ``fmt ``/``data`` are skipped as libsndfile skips them, and only the
  seconds a front end uses are read, so a hostile header cannot make the process allocate more than the
  file and the preset allow.
- ``log_spectrogram``: OGM-GE's CREMA-D audio (GeWu-Lab/OGM-GE_CVPR2022 @ 343dc1d,
  ``dataset/CramedDataset.py`` l.57-63): load at 22050 Hz, tile to 3 s, clip to [-1, 1],
  ``librosa.stft(n_fft=512, hop_length=353)`` (periodic Hann window of 512, centred frames), then
  ``log(|X| + 1e-7)``; no normalisation (l.64-66 are commented out). Result (257, 188).
- ``kaldi_fbank``: ``torchaudio.compliance.kaldi.fbank`` with the options of OGM-GE's Kinetics-Sounds
  script (``data/KineticSound/process_audio.py`` l.35-36: ``htk_compat=True, use_energy=False,
  window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10``) and torchaudio's defaults for
  the rest (25 ms frames, ``snip_edges``, DC offset removed per frame, pre-emphasis 0.97, FFT size the
  next power of two, power spectrum, mel filters from 20 Hz to Nyquist on Kaldi's mel scale
  ``1127 ln(1 + f/700)``, log with a floor of float32 eps). ``ks_fbank`` adds the script's steps around
  it: waveform mean removed (l.31), cut / zero-pad to 1024 frames (l.38-48), ``(fbank + 4.503877) /
  (5.141276 * 2)`` (l.32-33, 49).
- ``pmr_spectrogram``: the (257, 1004) stored audio of PMR's AVE loader (see its docstring).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

from mmbalance.common.core import DataError
from mmbalance.training.safe_pickle import check_finite

__all__ = [
    "WavHeader",
    "wav_header",
    "read_wav",
    "resample",
    "log_spectrogram",
    "ogm_ge_spectrogram",
    "kaldi_fbank",
    "ks_fbank",
    "pmr_spectrogram",
]

KS_NORM_MEAN, KS_NORM_STD = -4.503877, 5.141276  # process_audio.py l.32-33 (AudioSet statistics of AST)
KS_TARGET_FRAMES = 1024  # process_audio.py l.38


WAV_RATES = (
    1_000,
    384_000,
)  # Hz: 384 kHz is the highest rate audio interfaces record; more is a damaged header
_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
_SAMPLE_BITS = {_PCM: (8, 16, 24, 32), _FLOAT: (32, 64)}


@dataclass(frozen=True)
class WavHeader:
    """What a WAV's ``fmt `` and ``data`` chunks claim, checked against each other and the file size."""

    rate: int
    channels: int
    bits: int
    float: bool  # IEEE float samples; else PCM integers
    data_offset: int
    frames: int


def _chunks(f: BinaryIO, size: int, path: Path) -> Iterator[tuple[bytes, int, int]]:
    """(id, offset of the payload, payload size) of each RIFF chunk, stopping at the end of the file."""
    pos = 12
    while pos + 8 <= size:
        f.seek(pos)
        cid, n = struct.unpack("<4sI", f.read(8))
        if pos + 8 + n > size:
            raise DataError(f"{path}: WAV chunk {cid!r} claims {n} bytes, the file ends {size - pos - 8} "
                            "bytes later (truncated?)")  # fmt: skip
        yield cid, pos + 8, n
        pos += 8 + n + (n & 1)  # chunks are word-aligned: an odd size is followed by a pad byte


def wav_header(path: Path) -> WavHeader:
    """Parse and check a RIFF/WAVE header without reading the samples. Chunks other than ``fmt `` and
    ``data`` (``LIST``, ``id3 ``, ``bext``, ``cue ``, ``JUNK``, ...) are skipped, as libsndfile (librosa)
    does; a header that contradicts itself or the file size is refused."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise DataError(f"{path}: not a RIFF/WAVE file (starts with {head[:12]!r})")
        fmt, data = None, None
        for cid, offset, n in _chunks(f, size, path):
            if cid == b"fmt ":
                f.seek(offset)
                fmt = f.read(min(n, 40))
            elif cid == b"data":
                data = (offset, n)
            if fmt is not None and data is not None:
                break  # chunks after these two are not read (a damaged trailing tag does not matter)
    if fmt is None or len(fmt) < 16 or data is None:
        raise DataError(f"{path}: WAV without a {'data' if fmt else 'fmt '} chunk")
    return _check_fmt(path, fmt, *data)


def _check_fmt(path: Path, fmt: bytes, data_offset: int, data_size: int) -> WavHeader:
    tag, channels, rate, _, block, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]  # the sub-format GUID starts with the format tag
    if tag not in _SAMPLE_BITS:
        raise DataError(f"{path}: WAV format tag {tag:#06x} is not PCM or IEEE float")
    if bits not in _SAMPLE_BITS[tag] or not 1 <= channels <= 64 or block != channels * bits // 8:
        raise DataError(f"{path}: inconsistent WAV format: {channels} channel(s), {bits} bits, "
                        f"block of {block} bytes")  # fmt: skip
    lo, hi = WAV_RATES
    if not lo <= rate <= hi:
        raise DataError(f"{path}: WAV header claims a sample rate of {rate} Hz, outside {lo}..{hi} Hz")
    return WavHeader(rate, channels, bits, tag == _FLOAT, data_offset, data_size // block)


def _decode(raw: bytes, h: WavHeader) -> np.ndarray:
    """Interleaved little-endian samples -> float (frames, channels) in [-1, 1]."""
    if h.float:
        return np.frombuffer(raw, dtype=f"<f{h.bits // 8}").astype(np.float32).reshape(-1, h.channels)
    if h.bits == 8:  # 8-bit WAV is unsigned, centred at 128
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128) / 128
    elif h.bits == 24:  # three bytes per sample: place them in the top of an int32
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] << 8 | b[:, 1] << 16 | b[:, 2] << 24) >> 8) / float(2**23)
    else:
        x = np.frombuffer(raw, dtype=f"<i{h.bits // 8}") / float(2 ** (h.bits - 1))
    return np.asarray(x, dtype=np.float32).reshape(-1, h.channels)


def read_wav(path: Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """(samples float32 in [-1, 1], mono, sample rate) of a PCM or float WAV file.

    ``max_seconds``: read at most that much from the start (what a front end that cuts the clip uses),
    so the memory taken is bounded by the preset, not by the file."""
    path = Path(path)
    h = wav_header(path)
    frames = h.frames if max_seconds is None else min(h.frames, math.ceil(max_seconds * h.rate))
    with path.open("rb") as f:
        f.seek(h.data_offset)
        raw = f.read(frames * h.channels * h.bits // 8)
    x = _decode(raw, h)
    check_finite(x, path, "the WAV data")
    return (x.mean(axis=1) if h.channels > 1 else x[:, 0]), h.rate


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def log_spectrogram(x: Tensor, n_fft: int = 512, hop: int = 353, pad_mode: str = "reflect") -> Tensor:
    """``log(|librosa.stft(x, n_fft, hop)| + 1e-7)``: (n_fft // 2 + 1, 1 + len(x) // hop).

    librosa pads the centred frames with ``pad_mode`` ("reflect" before librosa 0.10, which the 2022 code
    ran with; "constant" since)."""
    window = torch.hann_window(n_fft, periodic=True, dtype=x.dtype)
    spec = torch.stft(x, n_fft, hop, window=window, center=True, pad_mode=pad_mode, return_complex=True)
    return torch.log(spec.abs() + 1e-7)


def ogm_ge_spectrogram(
    samples: np.ndarray, rate: int, seconds: int = 3, sr: int = 22050, pad_mode: str = "reflect"
) -> Tensor:
    """OGM-GE's CREMA-D input: (257, 188) for the default 3 s at 22050 Hz."""
    x = resample(samples, rate, sr)
    if len(x) == 0:
        raise ValueError("empty audio")
    # np.tile(samples, 3)[:22050*3]: a clip of 1 s or more fills the 3 s; shorter ones (which would give the
    # released loader a smaller spectrogram, and its batch collation an error) are repeated until they do
    x = np.tile(x, max(seconds, math.ceil(sr * seconds / len(x))))[: sr * seconds]
    x = np.clip(x, -1.0, 1.0)
    return log_spectrogram(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), pad_mode=pad_mode)


def _mel(f: Tensor) -> Tensor:
    return 1127.0 * torch.log1p(f / 700.0)


def kaldi_mel_banks(num_bins: int, n_fft: int, rate: float, low: float = 20.0, high: float = 0.0) -> Tensor:
    """Kaldi's triangular mel filters (num_bins, n_fft // 2 + 1); the Nyquist column is zero."""
    high = rate / 2 + high if high <= 0 else high
    mel_low, mel_high = _mel(torch.tensor(low)), _mel(torch.tensor(high))
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins, dtype=torch.float64).unsqueeze(1)
    left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    mel = _mel(rate / n_fft * torch.arange(n_fft // 2, dtype=torch.float64)).unsqueeze(0)
    up, down = (mel - left) / (center - left), (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1))


def kaldi_fbank(
    waveform: Tensor,
    rate: int,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    preemphasis: float = 0.97,
) -> Tensor:
    """Log mel filterbank (frames, num_mel_bins) of a 1-D waveform, as torchaudio's Kaldi ``fbank`` with
    ``window_type='hanning'``, ``dither=0``, ``use_energy=False`` (``htk_compat`` then changes nothing)."""
    x = waveform.to(torch.float64)
    size, shift = int(rate * frame_length_ms / 1000), int(rate * frame_shift_ms / 1000)
    if len(x) < size:
        raise ValueError(f"audio of {len(x)} samples is shorter than one {frame_length_ms} ms frame")
    frames = x.unfold(0, size, shift)  # snip_edges: only whole frames, 1 + (N - size) // shift
    frames = frames - frames.mean(dim=1, keepdim=True)  # remove_dc_offset
    previous = torch.nn.functional.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)[:, :-1]
    frames = frames - preemphasis * previous
    frames = frames * torch.hann_window(size, periodic=False, dtype=torch.float64)  # Kaldi "hanning"
    n_fft = 1 << (size - 1).bit_length()  # round_to_power_of_two
    power = torch.fft.rfft(frames, n=n_fft).abs() ** 2
    mel = power @ kaldi_mel_banks(num_mel_bins, n_fft, float(rate)).T
    eps = torch.finfo(torch.float32).eps
    return torch.log(torch.clamp(mel, min=eps)).to(torch.float32)


def ks_fbank(samples: np.ndarray, rate: int) -> Tensor:
    """OGM-GE's Kinetics-Sounds audio: normalised 128-bin fbank, (1024, 128)."""
    x = torch.from_numpy(np.asarray(samples, dtype=np.float32))
    fbank = kaldi_fbank(x - x.mean(), rate)
    p = KS_TARGET_FRAMES - fbank.shape[0]
    fbank = torch.nn.functional.pad(fbank, (0, 0, 0, p)) if p > 0 else fbank[:KS_TARGET_FRAMES]
    return (fbank - KS_NORM_MEAN) / (KS_NORM_STD * 2)


def pmr_spectrogram(samples: np.ndarray, rate: int) -> Tensor:
    """PMR's stored audio (fanyunfeng-bit/Modal-Imbalance-PMR @ 3615e48 ``data/CREMAD/audio_preprocessing.py``
    l.11-22, the ``Audio-1004-SE/<clip>.pkl`` files its AVE loader reads): ``librosa.load`` at its default
    22050 Hz, tiled 10 times and cut to ``16000 * 10`` samples, clipped to [-1, 1],
    ``scipy.signal.spectrogram(x, 22050, nperseg=512, noverlap=353)``, ``log(S + 1e-7)``, standardised by
    the clip's own mean and std (+1e-9). Result (257, 1004), the shape the script asserts."""
    from scipy import signal

    x = resample(samples, rate, 22050)
    if len(x) == 0:
        raise ValueError("empty audio")
    x = np.clip(np.tile(x, max(10, math.ceil(16000 * 10 / len(x))))[: 16000 * 10], -1.0, 1.0)  # as above
    _, _, spec = signal.spectrogram(x, 22050, nperseg=512, noverlap=353)
    spec = np.log(spec + 1e-7)
    return torch.from_numpy(((spec - spec.mean()) / (spec.std() + 1e-9)).astype(np.float32))
