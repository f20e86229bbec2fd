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
