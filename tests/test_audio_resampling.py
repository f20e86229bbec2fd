"""Issue 18.2: the work and memory of resampling are bounded for every accepted sample rate (1-384 kHz).

A rate sharing no factor with the target (383,999 -> 16,000 Hz) used to design a 7.7M-tap filter (20-27 s) and keep
up to 32 such filters cached; the plan is now the closest ratio with both factors <= MAX_RESAMPLE_FACTOR.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from xpl_hf import audio

BOUND_TAPS = 2 * 10 * 4096 + 1
STANDARD_RATES = [8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000, 176400, 192000,
                  352800, 384000]


@pytest.fixture
def designed(monkeypatch):
    """Records the length of every filter designed; refuses (fast) one beyond the bound instead of designing it."""
    lengths = []

    def bounded_firwin(numtaps, *args, **kwargs):
        lengths.append(numtaps)
        if numtaps > BOUND_TAPS:
            raise AssertionError(f"a {numtaps}-tap filter was designed; the bound is {BOUND_TAPS}")
        return real(numtaps, *args, **kwargs)

    real = audio.firwin
    monkeypatch.setattr(audio, "firwin", bounded_firwin)
    audio._lowpass.cache_clear()
    audio._polyphase_plan.cache_clear()
    yield lengths
    audio._lowpass.cache_clear()
    audio._polyphase_plan.cache_clear()


@pytest.mark.parametrize("rate", [383_999, 383_953, 208_001, 1_001])
@pytest.mark.parametrize("target", [16_000, 22_050])
def test_hostile_rates_design_bounded_filters(designed, rate, target):
    x = np.zeros(rate // 20, np.float32)
    y = audio.resample(x, rate, target)
    assert designed and max(designed) <= BOUND_TAPS
    assert abs(len(y) - len(x) * target / rate) <= 1 + len(x) * target / rate * audio.MAX_RATE_ERROR


def test_prepare_clip_at_a_hostile_rate(designed):
    """The processor's path: 3 s at 383,999 Hz to both model rates, with a bounded filter and the exact lengths."""
    rate = 383_999
    t = np.arange(int(3.2 * rate)) / rate
    clips = audio.prepare_clip(np.sin(2 * np.pi * 1000 * t).astype(np.float32), rate, 3.0, (16000, 22050))
    assert [len(clips[r]) for r in (16000, 22050)] == [48000, 66150] and max(designed) <= BOUND_TAPS
    for target, clip in clips.items():  # a clean 1 kHz tone: the rate approximation does not show
        spectrum = np.abs(np.fft.rfft(clip * np.hanning(len(clip))))
        assert np.fft.rfftfreq(len(clip), 1 / target)[spectrum.argmax()] == pytest.approx(1000, abs=0.5)


def test_sine_through_an_approximated_plan_matches_the_analytic_signal():
    rate, target = 383_999, 16_000
    t = np.arange(rate) / rate
    y = audio.resample(np.sin(2 * np.pi * 440 * t).astype(np.float32), rate, target)
    n = np.arange(len(y))
    expected = np.sin(2 * np.pi * 440 * n / target)
    middle = slice(len(y) // 4, 3 * len(y) // 4)  # away from the zero-padded edges
    assert np.abs(y[middle] - expected[middle]).max() < 1e-2


@pytest.mark.parametrize("target", [16_000, 22_050])
def test_standard_rates_are_exact(target):
    for rate in STANDARD_RATES:
        assert Fraction(*audio.resample_factors(rate, target)) == Fraction(target, rate), rate


@pytest.mark.parametrize("target", [16_000, 22_050])
def test_rate_error_is_within_the_documented_bound(target):
    """Every 7th whole rate, and the measured worst case, stay within MAX_RATE_ERROR (factors within the bound)."""
    for rate in [*range(1_000, 384_001, 7), 383_953, 383_999]:
        up, down = audio.resample_factors(rate, target)
        assert max(up, down) <= audio.MAX_RESAMPLE_FACTOR
        assert abs(up * rate / down - target) / target <= audio.MAX_RATE_ERROR, rate
    audio.resample_factors.cache_clear()


def test_caches_hold_a_bounded_amount():
    """At most 16 filters of at most 81,921 float64 taps, and 16 plans: tens of MB, not GB."""
    assert audio._lowpass.cache_info().maxsize * BOUND_TAPS * 8 <= 12 * 2**20
    assert audio._polyphase_plan.cache_info().maxsize <= 16
    for rate in (383_999, 383_001, 1_001, 208_001):
        up, down = audio.resample_factors(rate, 22_050)
        if up >= 8:
            weights = audio._polyphase_plan(up, down)[0]
            assert weights.numel() * 4 <= 2 * 2**20
