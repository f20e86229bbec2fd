"""The Space's upload readers when the cache clean-up has already deleted the upload: a message for the user that
names the file (not the server's path) and asks for it again, never a raw FileNotFoundError."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "space"))
from uploads import InputError, read_audio, read_image, read_video  # noqa: E402


@pytest.mark.parametrize("read, what", [(read_image, "image"), (read_audio, "audio"),
                                        (lambda value: read_video(value, 1.0), "video")])
def test_a_deleted_upload_is_a_clear_message_without_the_server_path(tmp_path, read, what):
    gone = tmp_path / "gradio" / "c0ffee" / "clip.dat"
    with pytest.raises(InputError) as caught:
        read({"path": str(gone), "orig_name": "clip.dat"})
    message = str(caught.value)
    assert f"The {what} file 'clip.dat' is no longer on the server" in message and "upload it again" in message
    assert str(tmp_path) not in message


def test_an_upload_deleted_while_it_is_read_is_the_same_clear_message(tmp_path, monkeypatch):
    """The clean-up can delete an upload after the readers' checks and before (or while) the file is decoded: the
    message is the same, not a raw FileNotFoundError or "not a supported file"."""
    import numpy as np
    import PIL.Image
    import soundfile as sf
    import uploads

    image, audio, video = tmp_path / "frame.png", tmp_path / "sound.wav", tmp_path / "clip.mp4"
    PIL.Image.new("RGB", (64, 64), "red").save(image)
    sf.write(audio, np.zeros(16000, dtype=np.float32), 16000)
    video.write_bytes(b"not decoded: the reader is replaced below")

    def deleting(real):
        def read(path, *args, **kwargs):
            Path(path).unlink()
            return real(path, *args, **kwargs)
        return read

    def vanished(path, *args, **kwargs):
        Path(path).unlink()
        raise FileNotFoundError(2, "No such file or directory", path)

    monkeypatch.setattr(uploads, "load_image", deleting(uploads.load_image))
    monkeypatch.setattr(uploads, "decode_audio", deleting(uploads.decode_audio))
    monkeypatch.setattr(uploads, "read_video_clip", vanished)
    monkeypatch.setattr(uploads, "HAVE_AV", True)
    for read, path, what in ((read_image, image, "image"), (read_audio, audio, "audio"),
                             (lambda value: read_video(value, 1.0), video, "video")):
        with pytest.raises(InputError, match=f"The {what} file '{path.name}' is no longer on the server"):
            read({"path": str(path)})
    assert not image.exists() and not audio.exists() and not video.exists()
