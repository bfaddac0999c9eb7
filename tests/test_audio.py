"""The audio front ends against hand-computed values and an independent STFT (scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmbalance.fixtures._media import write_wav
from mmbalance.training.audio import (
    kaldi_fbank,
    kaldi_mel_banks,
    ks_fbank,
    log_spectrogram,
    ogm_ge_spectrogram,
    pmr_spectrogram,
    read_wav,
)

LOG_EPS = math.log(np.finfo(np.float32).eps)  # -15.942385: Kaldi's floor of the mel energies


def test_stft_of_a_bin_centred_sine_is_half_the_window_sum():
    # sin at FFT bin 32 of 512: |X[32]| = sum(periodic Hann) / 2 = 256 / 2 = 128 away from the edges
    n = np.arange(4096)
    spec = log_spectrogram(torch.from_numpy(np.sin(2 * np.pi * 32 * n / 512)))
    assert spec.shape == (257, 1 + 4096 // 353)
    assert spec[32, 4].item() == pytest.approx(math.log(128), abs=1e-6)
    assert spec[100, 4].item() < -10  # far from the tone: nothing but leakage


def test_stft_matches_scipy_with_zero_padding():
    from scipy.signal import stft

    x = np.random.default_rng(0).normal(size=3000)
    _, _, z = stft(x, window="hann", nperseg=512, noverlap=512 - 353, boundary="zeros", padded=False)
    ours = log_spectrogram(torch.from_numpy(x), pad_mode="constant").exp() - 1e-7
    theirs = np.abs(z) * 256  # scipy divides by sum(window) = 256
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-6, atol=1e-9)


def test_ogm_ge_spectrogram_shape_and_short_clips():
    # 3 s at 22050 Hz, hop 353: 1 + 66150 // 353 = 188 frames; a 0.3 s clip is repeated to fill them
    for seconds in (0.3, 1.0, 4.2):
        x = np.sin(np.arange(int(16000 * seconds)) / 5).astype(np.float32)
        assert ogm_ge_spectrogram(x, 16000).shape == (257, 188)


def test_kaldi_fbank_hand_values():
    # 1 s at 16 kHz, 25 ms / 10 ms frames with snip_edges: 1 + (16000 - 400) // 160 = 98 frames
    silence = kaldi_fbank(torch.zeros(16000), 16000)
    assert silence.shape == (98, 128)
    assert torch.allclose(silence, torch.full_like(silence, LOG_EPS))
    banks = kaldi_mel_banks(128, 512, 16000.0)
    assert banks.shape == (128, 257) and banks[:, -1].abs().sum() == 0  # Nyquist column padded with 0
    assert banks.max().item() <= 1.0
    # a 1 kHz tone peaks in the filter centred nearest 1 kHz: mel(1000) = 1127 ln(17/7) = 999.99;
    # centres are mel(20) + (b + 1) * (mel(8000) - mel(20)) / 129, mel(20) = 31.748, mel(8000) = 2840.02
    delta = (1127 * math.log(1 + 8000 / 700) - 1127 * math.log(1 + 20 / 700)) / 129
    nearest = round((999.99 - 1127 * math.log(1 + 20 / 700)) / delta) - 1
    tone = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000).astype(np.float32)
    assert kaldi_fbank(torch.from_numpy(tone), 16000).mean(0).argmax().item() == nearest


def test_ks_fbank_pads_and_normalises_as_process_audio():
    # 0.3 s -> 28 frames, zero-padded to 1024; (x + 4.503877) / (2 * 5.141276)
    out = ks_fbank(np.zeros(4800, dtype=np.float32), 16000)
    assert out.shape == (1024, 128)
    assert out[0, 0].item() == pytest.approx((LOG_EPS + 4.503877) / 10.282552, abs=1e-5)  # -1.112419
    assert out[-1, 0].item() == pytest.approx(4.503877 / 10.282552, abs=1e-6)  # 0.438012: padding
    long = ks_fbank(np.random.default_rng(0).normal(size=16000 * 12).astype(np.float32), 16000)
    assert long.shape == (1024, 128)  # 1198 frames cut to 1024


def test_pmr_spectrogram_shape_and_standardisation():
    # (16000 * 10 - 512) // 159 + 1 = 1004 frames of 257 bins, standardised per clip
    x = np.random.default_rng(0).normal(size=22050).astype(np.float32) * 0.1
    spec = pmr_spectrogram(x, 22050)
    assert spec.shape == (257, 1004)
    assert spec.mean().item() == pytest.approx(0, abs=1e-4) and spec.std().item() == pytest.approx(
        1, abs=1e-4
    )


def test_read_wav_scales_pcm_to_unit_range(tmp_path):
    x = np.array([0.0, 0.5, -0.5, 1.0], dtype=np.float32)
    write_wav(tmp_path / "a.wav", x, 8000)
    samples, rate = read_wav(tmp_path / "a.wav")
    assert rate == 8000
    np.testing.assert_allclose(samples, np.trunc(x * 32767) / 32768, atol=1e-7)  # int16 / 2^15
