"""XPLProcessor: an image and its sound -> the inputs of both XPL branches.

| output           | shape              | what                                                                  |
| ---------------- | ------------------ | --------------------------------------------------------------------- |
| `pixel_values`   | (B, 3, S, S)       | RGB squashed to S x S (bilinear), ImageNet mean/std normalisation      |
| `audio_log_mel`  | (B, N, 96, 64)     | VGGish examples: 16 kHz, 25 ms Hann window, 10 ms hop, 512-point FFT,  |
|                  |                    | 64 HTK mel bands 125-7500 Hz, log(mel + 0.01), 0.96 s examples         |
| `audio_waveform` | (B, L)             | 22,050 Hz waveform scaled to [-256, 256] (SoundNet's input range)      |

The audio is a fixed clip (`clip_seconds`, default 3 s) around the centre of the input, tiled when shorter
(see `xpl_hf.audio` for every rule on channels, rates, lengths and bad values).

Image rules: `xpl_hf.image.load_image`, the one decoder shared with the training collator and the converters (alpha
composited on white, 16-bit scaled from its full range, arrays (H, W), (H, W, C) or (C, H, W)). Unreadable, empty or
oversized images raise `ImageError`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, FeatureExtractionMixin
from transformers.audio_utils import mel_filter_bank

from .audio import WINDOW_MARGIN_SECONDS, AudioError, check_sample_rate, decode_audio, prepare_clip
from .configuration_xpl import check_input_settings, check_range
from .image import ImageError, load_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class XPLProcessor(FeatureExtractionMixin):
    r"""
    Turns (image, audio) pairs into `pixel_values`, `audio_log_mel` and `audio_waveform` for [`XPLModel`].

    Args:
        image_size (`int`, defaults to 224): side S of the square model input.
        clip_seconds (`float`, defaults to 3.0): audio clip length.
        vggish_sample_rate (`int`, defaults to 16000), soundnet_sample_rate (`int`, defaults to 22050).
        image_mean, image_std: normalisation (ImageNet by default).
        log_offset (`float`, defaults to 0.01): VGGish's offset inside the log.

    Bounds, checked on creation and on load (a ValueError names the setting): `image_size`, `clip_seconds` and the
    sample rates as in [`XPLConfig`] (a multiple of 32 in [32, 1024]; [0.96, 60] s; [16000, 48000] and
    [8000, 48000] Hz); `image_mean` 3 values in [0, 1]; `image_std` 3 values in [0.001, 10]; `log_offset` in
    [1e-10, 1000]. `xpl_hf.check_processor_matches(config, processor)` checks a processor against its model.
    """

    model_input_names = ["pixel_values", "audio_log_mel", "audio_waveform"]

    def __init__(
        self,
        image_size: int = 224,
        clip_seconds: float = 3.0,
        vggish_sample_rate: int = 16000,
        soundnet_sample_rate: int = 22050,
        image_mean: tuple[float, ...] = IMAGENET_MEAN,
        image_std: tuple[float, ...] = IMAGENET_STD,
        log_offset: float = 0.01,
        **kwargs,
    ):
        for derived in ("win_length", "hop_length", "n_fft", "num_mel_bins", "example_frames"):
            kwargs.pop(derived, None)  # written by older versions; always recomputed below
        super().__init__(**kwargs)
        self._check_settings(image_size, clip_seconds, vggish_sample_rate, soundnet_sample_rate, image_mean, image_std,
                             log_offset)
        self.image_size = int(image_size)
        self.clip_seconds = float(clip_seconds)
        self.vggish_sample_rate = int(vggish_sample_rate)
        self.soundnet_sample_rate = int(soundnet_sample_rate)
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.log_offset = float(log_offset)
        # VGGish framing (Hershey et al. 2017): 25 ms window, 10 ms hop, FFT = next power of two, 96-frame examples.
        self.win_length = round(0.025 * self.vggish_sample_rate)
        self.hop_length = round(0.010 * self.vggish_sample_rate)
        self.n_fft = 1 << (self.win_length - 1).bit_length()
        self.num_mel_bins, self.example_frames = 64, 96
        self._mel_filters = torch.from_numpy(mel_filter_bank(
            num_frequency_bins=self.n_fft // 2 + 1, num_mel_filters=self.num_mel_bins, min_frequency=125.0,
            max_frequency=7500.0, sampling_rate=self.vggish_sample_rate, norm=None, mel_scale="htk",
            triangularize_in_mel_space=True).astype(np.float32))  # (n_fft/2 + 1, 64); 5.17 has no dtype=
        self._window = torch.hann_window(self.win_length, periodic=True)
        # (x / 255 - mean) / std = x * scale + bias per channel, tiled along a row of S pixels x 3 channels, so that
        # the normalisation runs over (S, 3 S) with a long, vectorised inner loop
        scale = 1.0 / (torch.tensor(self.image_std) * 255.0)
        self._scale_row = scale.repeat(self.image_size)
        self._bias_row = (-torch.tensor(self.image_mean) * 255.0 * scale).repeat(self.image_size)

    @staticmethod
    def _check_settings(image_size, clip_seconds, vggish_sample_rate, soundnet_sample_rate, image_mean, image_std,
                        log_offset) -> None:
        """The bounds of the class docstring; a ValueError names the setting (on creation and on `from_pretrained`)."""
        check_input_settings(image_size, clip_seconds, vggish_sample_rate, soundnet_sample_rate)
        for name, values, (low, high) in (("image_mean", image_mean, (0.0, 1.0)),
                                          ("image_std", image_std, (1e-3, 10.0))):
            if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != 3:
                raise ValueError(f"{name}={values!r}: expected 3 numbers, one per RGB channel.")
            for channel, value in enumerate(values):
                check_range(f"{name}[{channel}]", value, low, high)
        check_range("log_offset", log_offset, 1e-10, 1e3)

    @classmethod
    def from_config(cls, config) -> XPLProcessor:
        """A processor matching an [`XPLConfig`] (image size, clip length, sample rates)."""
        return cls(image_size=config.image_size, clip_seconds=config.clip_seconds,
                   vggish_sample_rate=config.vggish_sample_rate, soundnet_sample_rate=config.soundnet_sample_rate)

    def to_dict(self):
        derived = {"win_length", "hop_length", "n_fft", "num_mel_bins", "example_frames"}  # recomputed in __init__
        output = {k: v for k, v in super().to_dict().items() if not k.startswith("_") and k not in derived}
        output["processor_class"] = self.__class__.__name__
        return output

    # ----------------------------------------------------------------- images
    def load_image(self, image, target_size: int | None = None) -> Image.Image:
        """PIL image / array / tensor / path / bytes -> RGB PIL image (the package's one rule: `xpl_hf.image`).

        `target_size`: the side the image is decoded for (the model inputs pass `image_size`): a JPEG at least twice
        that size on both sides decodes at a reduced scale (`xpl_hf.image`). `None`: full size.
        """
        return load_image(image, target_size=target_size)

    def image_to_tensor(self, image: Image.Image, out: torch.Tensor | None = None) -> torch.Tensor:
        """RGB PIL image -> (3, S, S) float32: squashed to S x S (bilinear), ImageNet-normalised.

        Args:
            out: optional contiguous (S, S, 3) float32 tensor to write into (e.g. one row of a channels-last batch).
        Returns:
            (3, S, S), a channels-last view of (S, S, 3) data (of `out` when given).
        """
        size = self.image_size
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).view(size, 3 * size)
        out = torch.empty(size, size, 3) if out is None else out
        rows = out.view(size, 3 * size)
        rows.copy_(pixels)  # uint8 -> float32
        torch.addcmul(self._bias_row, rows, self._scale_row, out=rows)  # (x / 255 - mean) / std
        return out.permute(2, 0, 1)  # channels-last view: batches stack channels-last

    # ------------------------------------------------------------------ audio
    def log_mel_examples(self, waveform_16k: torch.Tensor) -> torch.Tensor:
        """(..., samples) at 16 kHz -> (..., N, 96, 64) VGGish log-mel examples (non-overlapping 0.96 s)."""
        frames = 1 + (waveform_16k.shape[-1] - self.n_fft) // self.hop_length  # stft frames span n_fft samples
        n = max(frames, 0) // self.example_frames
        if n == 0:
            raise AudioError("the clip is shorter than one 0.96 s VGGish example.")
        used = (n * self.example_frames - 1) * self.hop_length + self.n_fft  # the frames of whole examples only
        spec = torch.view_as_real(torch.stft(
            waveform_16k[..., :used], n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
            window=self._window, center=False, return_complex=True))  # (..., F, frames, 2)
        re, im = spec[..., 0], spec[..., 1]
        magnitude = torch.addcmul(re * re, im, im).sqrt_()  # |X|; 3x faster than complex abs()
        log_mel = torch.log(magnitude.transpose(-1, -2) @ self._mel_filters + self.log_offset)  # (..., frames, 64)
        return log_mel.unflatten(-2, (n, self.example_frames))

    def audio_features(self, waveform, sampling_rate) -> dict[str, torch.Tensor]:
        """One clip (array (samples,) or (channels, samples), any rate) -> both branches' audio inputs.

        Returns:
            {"audio_log_mel": (N, 96, 64), "audio_waveform": (L,)} float32 tensors.
        """
        rate = check_sample_rate(sampling_rate)
        clips = prepare_clip(waveform, rate, self.clip_seconds, (self.vggish_sample_rate, self.soundnet_sample_rate))
        log_mel = self.log_mel_examples(torch.from_numpy(clips[self.vggish_sample_rate]))
        # Resampling can overshoot [-1, 1] slightly (ringing); clip so SoundNet sees its documented [-256, 256].
        waveform = torch.from_numpy(np.clip(clips[self.soundnet_sample_rate], -1.0, 1.0)).mul_(256.0)
        return {"audio_log_mel": log_mel, "audio_waveform": waveform}

    def load_audio(self, audio, sampling_rate=None) -> tuple[np.ndarray, int]:
        """Array (needs `sampling_rate`) or WAV/FLAC/OGG path/bytes -> (samples array, rate)."""
        if isinstance(audio, (str, os.PathLike, bytes, bytearray)):
            if isinstance(audio, (str, os.PathLike)) and not Path(audio).is_file():
                raise AudioError(f"audio file {os.fspath(audio)!r} does not exist.")
            # Read the centred window plus a margin for the resampling filter.
            waveform, file_rate = decode_audio(audio, clip_seconds=self.clip_seconds + WINDOW_MARGIN_SECONDS)
            if sampling_rate is not None and check_sample_rate(sampling_rate) != file_rate:
                raise AudioError(f"sampling_rate={sampling_rate} contradicts the file's own rate of {file_rate} Hz; "
                                 "omit sampling_rate for files.")
            return waveform, file_rate
        if isinstance(audio, torch.Tensor):
            audio = audio.detach().cpu().numpy()
        return audio, check_sample_rate(sampling_rate)

    # ------------------------------------------------------------------- call
    def __call__(self, images=None, audio=None, sampling_rate=None, return_tensors="pt", **kwargs) -> BatchFeature:
        """
        Args:
            images: one image or a list (PIL / array / tensor / path).
            audio: one clip or a list: arrays (samples,) or (channels, samples) with `sampling_rate`, or paths/bytes
                of audio files.
            sampling_rate: an int for all clips, or a list of one per clip; not needed for files.

        Returns:
            [`BatchFeature`] with `pixel_values` (B, 3, S, S) and/or `audio_log_mel` (B, N, 96, 64) and
            `audio_waveform` (B, L).
        """
        if images is None and audio is None:
            raise ValueError("XPLProcessor needs `images`, `audio`, or both.")
        data = {}
        if images is not None:
            images = images if isinstance(images, (list, tuple)) else [images]
            size = self.image_size
            pixels = torch.empty(len(images), size, size, 3)  # each image written in place: no stacking copy
            for i, image in enumerate(images):
                try:
                    self.image_to_tensor(self.load_image(image, target_size=size), out=pixels[i])
                except ImageError as err:
                    raise ImageError(f"image {i}: {err}") from None
            data["pixel_values"] = pixels.permute(0, 3, 1, 2)  # (B, 3, S, S) in channels-last layout
        if audio is not None:
            single = not isinstance(audio, (list, tuple))
            clips = [audio] if single else list(audio)
            rates = sampling_rate if isinstance(sampling_rate, (list, tuple)) else [sampling_rate] * len(clips)
            if len(rates) != len(clips):
                raise ValueError(f"got {len(rates)} sampling rates for {len(clips)} audio clips.")
            features = []
            for i, (clip, rate) in enumerate(zip(clips, rates)):
                try:
                    features.append(self.audio_features(*self.load_audio(clip, rate)))
                except AudioError as err:
                    raise AudioError(f"audio {i}: {err}") from None
            data["audio_log_mel"] = torch.stack([f["audio_log_mel"] for f in features])
            data["audio_waveform"] = torch.stack([f["audio_waveform"] for f in features])
        if images is not None and audio is not None and len(data["pixel_values"]) != len(data["audio_waveform"]):
            raise ValueError(f"got {len(data['pixel_values'])} images but {len(data['audio_waveform'])} audio clips.")
        return BatchFeature(data=data, tensor_type=return_tensors)

    # -------------------------------------------------------- post-processing
    def post_process_localization(self, outputs, target_sizes=None, threshold: float | None = None) -> list[dict]:
        """
        Model outputs -> one result per image: its maps at the image's own size, as the evaluation protocol views them.

        Each (h, w) map is upsampled to the image's size with bicubic interpolation (`align_corners=False`) and min-max
        normalised to [0, 1] per image: steps 1-2 of the protocol (`xpl_hf.metrics.protocol`), at the image's size
        instead of 224 x 224. A map that is already flat before upsampling stays flat at its value, as the protocol
        leaves flat maps (upsampling would only add the bicubic kernel's float rounding noise, which min-max would
        stretch to [0, 1]).

        Args:
            outputs ([`XPLModelOutput`] or dict): with `maps` (fused), `maps_a` and `maps_b`, each `(batch, h, w)`.
            target_sizes (list of `(height, width)` or tensor `(batch, 2)`, *optional*): each image's size in pixels;
                `None` uses the model input size (`image_size` x `image_size`).
            threshold (`float` in [0, 1], *optional*): also return the box around the fused map's pixels
                `>= threshold`.

        Returns:
            `list[dict]`, one per image:
            - `"map"`, `"map_a"`, `"map_b"`: float32 tensors `(height, width)` in [0, 1] (fused, branch A, branch B);
            - `"consensus"`: the branches' agreement ρ, Pearson correlation of the raw maps of A and B (`float`);
            - `"confidence"`, `"confidence_a"`, `"confidence_b"`: how confident the model is that something in the
              frame makes this sound (`float` in [0, 1]; `xpl_hf.maps.branch_confidences`: the mean of the top
              quarter of each branch's probability map, fused = their mean; see docs/evaluation.md). Low values
              (below 0.5) say that no source of this sound was found in the frame;
            - with `threshold`: `"box"`, `[x0, y0, x1, y1]` in pixels (ints, `x1`/`y1` exclusive, as in
              `PIL.Image.crop`): the smallest box holding every pixel of `"map"` `>= threshold`, or `None` if none is.

        Raises:
            ValueError: the outputs lack a map, have another shape, hold NaN / infinite values (naming the images),
                or branch maps outside [0, 1] (not the model's probability maps).
        """
        from .maps import branch_confidences, pearson_consensus

        maps = {key: self._output_maps(outputs, name) for key, name in
                (("map", "maps"), ("map_a", "maps_a"), ("map_b", "maps_b"))}
        batch = maps["map"].shape[0]
        if any(m.shape != maps["map"].shape for m in maps.values()):
            raise ValueError(f"maps, maps_a and maps_b must have the same shape; got "
                             f"{[tuple(m.shape) for m in maps.values()]}.")
        sizes = self._target_sizes(target_sizes, batch)
        if threshold is not None and not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
            raise ValueError(f"threshold={threshold!r}: expected a number in [0, 1] (maps are normalised to [0, 1]).")
        consensus = pearson_consensus(maps["map_a"], maps["map_b"])
        try:
            confidence = branch_confidences(maps["map_a"], maps["map_b"])
        except ValueError as error:
            raise ValueError(f"outputs.maps_a / maps_b must be the model's probability maps, in [0, 1]: {error}; pass "
                             "the XPLModel's output unchanged.") from None
        results = []
        for i, size in enumerate(sizes):
            result = {key: self._upsample_normalize(m[i], size) for key, m in maps.items()}
            result["consensus"] = float(consensus[i])
            result.update({f"confidence{suffix}": float(confidence[b][i])
                           for b, suffix in (("fused", ""), ("a", "_a"), ("b", "_b"))})
            if threshold is not None:
                result["box"] = self._box_above(result["map"], threshold)
            results.append(result)
        return results

    @staticmethod
    def _output_maps(outputs, name: str) -> torch.Tensor:
        maps = outputs.get(name) if hasattr(outputs, "get") else getattr(outputs, name, None)
        if maps is None:
            raise ValueError(f"outputs have no `{name}`; pass the XPLModel's output unchanged.")
        maps = torch.as_tensor(maps)
        if maps.ndim != 3:
            raise ValueError(f"outputs.{name} has shape {tuple(maps.shape)}; expected (batch, h, w).")
        if not torch.isfinite(maps).all():  # NaN maps would give no box and a consensus of 0, silently
            bad = sorted({int(i) for i in torch.nonzero(~torch.isfinite(maps.flatten(1)).all(dim=1)).flatten()})
            raise ValueError(f"outputs.{name} of image(s) {bad} hold NaN or infinite values: the model's weights or "
                             "inputs are not finite.")
        return maps.detach().float()

    def _target_sizes(self, target_sizes, batch: int) -> list[tuple[int, int]]:
        from .image import MAX_PIXELS

        if target_sizes is None:
            return [(self.image_size, self.image_size)] * batch
        sizes = [tuple(int(v) for v in size) for size in
                 (target_sizes.tolist() if isinstance(target_sizes, torch.Tensor) else target_sizes)]
        if len(sizes) != batch:
            raise ValueError(f"got {len(sizes)} target sizes for {batch} maps; pass one (height, width) per image.")
        for i, size in enumerate(sizes):
            if len(size) != 2 or min(size) < 1 or size[0] * size[1] > MAX_PIXELS:
                raise ValueError(f"target_sizes[{i}] = {size}: expected (height, width), positive, at most "
                                 f"{MAX_PIXELS / 1e6:.0f} megapixels.")
        return sizes

    @staticmethod
    def _upsample_normalize(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(h, w) raw map -> (height, width): bicubic (align_corners=False), then per-map min-max to [0, 1]."""
        if raw.max() == raw.min():  # flat before upsampling: no location to show; keep its value, as the protocol
            return torch.full(size, float(raw.flatten()[0]), dtype=torch.float32, device=raw.device)
        up = torch.nn.functional.interpolate(raw[None, None], size=size, mode="bicubic", align_corners=False)[0, 0]
        low, span = up.min(), up.max() - up.min()
        return (up - low) / span if span > 0 else up

    @staticmethod
    def _box_above(heat: torch.Tensor, threshold: float) -> list[int] | None:
        rows = torch.nonzero((heat >= threshold).any(dim=1)).flatten()
        cols = torch.nonzero((heat >= threshold).any(dim=0)).flatten()
        if rows.numel() == 0:
            return None
        return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def check_processor_matches(config, processor: XPLProcessor) -> None:
    """Raise a ValueError naming every input setting in which ``processor`` differs from the model's ``config``
    (`image_size`, `clip_seconds`, `vggish_sample_rate`, `soundnet_sample_rate`): the model would otherwise get
    inputs it was not trained on (e.g. maps of the wrong size). The loader and the pipeline call it."""
    names = ("image_size", "clip_seconds", "vggish_sample_rate", "soundnet_sample_rate")
    differ = [f"{name}={getattr(processor, name)!r} (the model's is {getattr(config, name)!r})" for name in names
              if getattr(processor, name) != getattr(config, name)]
    if differ:
        raise ValueError(f"the processor does not match the model: {', '.join(differ)}. Save the processor built by "
                         "XPLProcessor.from_config(model.config) with the model.")


__all__ = ["XPLProcessor", "ImageError", "AudioError", "check_processor_matches"]
