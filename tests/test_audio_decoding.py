"""One audio decoder: xpl_hf.audio.decode_audio serves the processor, the collator and the converters."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from xpl_hf import audio
from xpl_hf.audio import AudioError, decode_audio
from xpl_hf.data import decoding


def _wav(samples: np.ndarray, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV")
    return buffer.getvalue()


def test_the_data_module_uses_the_same_decoder():
    assert decoding.decode_audio is audio.decode_audio


def test_stored_values_decode_like_bytes_and_paths(tmp_path):
    data = _wav(np.linspace(-0.5, 0.5, 800, dtype=np.float32))
    path = tmp_path / "clip.wav"
    path.write_bytes(data)
    reference, rate = decode_audio(data)
    for value in ({"bytes": data, "path": None}, {"bytes": None, "path": str(path)}, str(path), io.BytesIO(data)):
        waveform, value_rate = decode_audio(value)
        assert value_rate == rate == 8000 and np.array_equal(waveform, reference)


@pytest.mark.parametrize("value, message", [
    (None, "missing"),
    ({"bytes": None, "path": None}, "neither bytes nor path"),
    (5, "unsupported audio type int"),
    (b"", "empty"),
    (b"RIFF\x10\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00", "could not decode"),  # fmt chunk cut short
    ({"bytes": None, "path": "/nonexistent/clip.wav"}, "does not exist"),
])
def test_bad_values_are_audio_errors(value, message):
    with pytest.raises(AudioError, match=message) as err:
        decode_audio(value)
    assert "_io.BytesIO object" not in str(err.value)
