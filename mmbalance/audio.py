"""Audio front ends of the audio-visual balancing papers, in torch ops (torchaudio and librosa do not install
beside our pinned torch; scipy reads and resamples the WAV).

- ``read_wav`` + ``resample``: ``librosa.load(path, sr=...)``: mono float in [-1, 1] at the target rate
  (scipy's polyphase filter where librosa uses soxr / resampy: the same band limit, not bit-identical).
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
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
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


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(samples float32 in [-1, 1], mono, sample rate) of a PCM or float WAV file."""
    import struct
    import warnings

    from scipy.io import wavfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", wavfile.WavFileWarning)  # e.g. a truncated data chunk
            rate, data = wavfile.read(path)
    except (struct.error, EOFError, ValueError, wavfile.WavFileWarning) as e:
        raise ValueError(f"not a readable WAV file ({type(e).__name__}: {e})") from None
    if data.dtype.kind == "i":
        data = data / float(2 ** (8 * data.dtype.itemsize - 1))
    elif data.dtype.kind == "u":  # 8-bit WAV is unsigned, centred at 128
        data = (data.astype(np.float64) - 128) / 128
    data = np.asarray(data, dtype=np.float32)
    return (data.mean(axis=1) if data.ndim == 2 else data), int(rate)


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
