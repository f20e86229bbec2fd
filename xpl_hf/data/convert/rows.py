"""One candidate -> one row of the schema (:func:`build_row`), or the reason it is refused.

Image + audio candidates store their files as they are, after the checks of :mod:`.samples` (size first, the audio
header, then the decoders' rules); video candidates go through :mod:`.video`, imported only when a video is
converted (it loads PyAV).
"""

from __future__ import annotations

from ...audio import AudioError, check_waveform, decode_audio
from ..decoding import decode_image
from ..schema import DataValidationError, clean_boxes
from .report import SampleProblem, is_utf8, shown
from .samples import (
    MAX_AUDIO_BYTES,
    MAX_IMAGE_BYTES,
    Candidate,
    ClipOptions,
    RowResult,
    media_name,
    read_file,
    silence_notes,
)


def _check_audio_file(data: bytes, name: str) -> list[tuple[str, str]]:
    """Decode and apply the package's audio rules (the processor's); return notes, raise SampleProblem."""
    try:
        waveform, rate = decode_audio(data)
        mono, _ = check_waveform(waveform, rate, what="the clip")
    except AudioError as err:
        raise SampleProblem(err.reason, f"audio '{name}': {err}") from None
    except Exception as err:  # soundfile may raise other errors on odd files
        raise SampleProblem("unreadable audio", f"audio '{name}': {type(err).__name__}: {err}") from None
    return silence_notes(mono)


def _image_and_audio(c: Candidate, loaded: dict[str, bytes]) -> tuple[dict, list[tuple[str, str]]]:
    if c.image is None:
        raise SampleProblem("missing image", "no image file for this sample")
    image_bytes = read_file(c.image, "image", "corrupt image", MAX_IMAGE_BYTES, loaded)
    image_name = media_name(c.image)
    try:
        decode_image(image_bytes)
    except DataValidationError as err:
        raise SampleProblem("corrupt image", f"image '{image_name}': {err}") from None
    if c.audio is None:
        raise SampleProblem("missing audio", "no audio file for this sample")
    audio_bytes = read_file(c.audio, "audio", "unreadable audio", MAX_AUDIO_BYTES, loaded)
    audio_name = media_name(c.audio)
    notes = _check_audio_file(audio_bytes, audio_name)
    return {"image": {"bytes": image_bytes, "path": image_name},
            "audio": {"bytes": audio_bytes, "path": audio_name}}, notes


def _validate(c: Candidate, loaded: dict[str, bytes], options: ClipOptions) -> RowResult:
    if c.problem:
        raise SampleProblem(*c.problem)
    for what, text in (("id", c.id), ("label", c.label)):
        if not is_utf8(text):
            raise SampleProblem(f"{what} not UTF-8", f"{what} '{shown(text)}' is not valid UTF-8 (a file name in "
                                "another encoding?); rename it")
    raw = c.boxes if isinstance(c.boxes, (list, tuple)) else ([] if c.boxes is None else [c.boxes])
    boxes, box_report = clean_boxes(raw, inverted=c.box_mode)
    if c.require_box and raw and not boxes:
        raise SampleProblem("no valid box", f"none of its {len(raw)} box(es) is valid ({box_report.describe()})",
                            box_report)
    seconds: dict[str, float] = {}
    if c.video is not None:
        from .video import video_media  # imports xpl_hf.media (PyAV) only when a video is converted

        media, notes, seconds = video_media(c, loaded, options)
    else:
        media, notes = _image_and_audio(c, loaded)
    row = {"id": c.id, **media, "boxes": boxes, "gt_rule": c.gt_rule, "label": c.label or "", "objects": c.objects}
    if options.frames_per_clip > 1:
        row.setdefault("frames", None)
    return RowResult(row, box_report=box_report, notes=notes, seconds=seconds)


def build_row(c: Candidate, loaded: dict[str, bytes] | None = None, options: ClipOptions | None = None
              ) -> RowResult:
    """Validate a candidate and build its row; never raises (an unexpected error is the reason
    ``unexpected error``, with its message)."""
    try:
        return _validate(c, loaded or {}, options or ClipOptions())
    except SampleProblem as problem:
        return RowResult(None, problem.reason, problem.detail, problem.box_report)
    except Exception as err:
        return RowResult(None, "unexpected error", f"{type(err).__name__}: {err}")
