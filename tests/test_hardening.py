"""Hostile inputs where models, configs, datasets and metric inputs enter the package (issue 18, classes 4, 5 and 8;
issue 20's one local-path rule). Each case must end in a clear error naming the input and the problem, or in a
documented repair."""

import io
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from xpl_hf import XPLConfig, XPLModel, XPLProcessor, load_model_and_processor
from xpl_hf.data.loading import load_labeled
from xpl_hf.data.schema import DataValidationError, xpl_features
from xpl_hf.data.shards import ShardWriter
from xpl_hf.metrics.protocol import localization_metrics

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
TINY = dict(image_size=64, embed_dim=32, vggish_fc_dim=64, clip_seconds=1.0)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "good"
    torch.manual_seed(0)
    model = XPLModel(XPLConfig(**TINY))
    model.save_pretrained(folder)
    XPLProcessor.from_config(model.config).save_pretrained(folder)
    return folder


@pytest.fixture
def model_copy(saved_model, tmp_path) -> Path:
    """The saved model's JSON files, copied to be edited, and its weights, linked (see `_replace_weights`)."""
    folder = tmp_path / "copy"
    folder.mkdir()
    for file in saved_model.iterdir():
        if file.name == "model.safetensors":
            (folder / file.name).symlink_to(file)
        else:
            shutil.copy(file, folder / file.name)
    return folder


def _replace_weights(folder: Path, change) -> None:
    """Write ``change(weights)`` as the folder's own model.safetensors (never through the link to the shared one)."""
    weights = load_file(str(folder / "model.safetensors"))
    change(weights)
    (folder / "model.safetensors").unlink()
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _inputs(processor: XPLProcessor):
    return processor(images=[np.full((64, 64, 3), 128, np.uint8)], audio=[np.sin(np.arange(16000) / 7.0)],
                     sampling_rate=16000)


# ----------------------------------------------------------------------- 18.4: weights missing or not finite
def test_weights_file_without_tensors_is_refused(model_copy):
    _replace_weights(model_copy, dict.clear)
    with pytest.raises(OSError, match=r"model\.safetensors.*missing"):
        XPLModel.from_pretrained(model_copy)
    with pytest.raises(OSError, match=r"model\.safetensors"):
        load_model_and_processor(model_copy, device="cpu")


def test_weights_file_missing_one_tensor_names_it(model_copy):
    _replace_weights(model_copy, lambda weights: weights.pop("branch_b.map_bias"))
    with pytest.raises(OSError, match=r"branch_b\.map_bias"):
        load_model_and_processor(model_copy, device="cpu")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(model_copy, bad):
    _replace_weights(model_copy, lambda weights: weights["branch_a.visual_proj.weight"][0].fill_(bad))
    with pytest.raises(OSError, match=r"model\.safetensors.*branch_a\.visual_proj\.weight"):
        XPLModel.from_pretrained(model_copy)


# ------------------------------------------------------------------------------ 18.5: settings checked on load
@pytest.mark.parametrize("setting, value", [
    ("image_std", [0.0, 0.0, 0.0]), ("image_std", [0.2, float("nan"), 0.2]), ("image_mean", [0.5, 0.5]),
    ("log_offset", -1.0), ("log_offset", 0.0), ("image_size", 0), ("clip_seconds", 1e7),
    ("vggish_sample_rate", 0), ("soundnet_sample_rate", -22050),
])
def test_bad_processor_settings_are_named(model_copy, setting, value):
    with pytest.raises(ValueError, match=setting):
        XPLProcessor(**{setting: value})
    _edit_json(model_copy / "preprocessor_config.json", **{setting: value})
    with pytest.raises(ValueError, match=setting):
        XPLProcessor.from_pretrained(model_copy)


def test_the_loader_does_not_replace_a_bad_saved_processor(model_copy):
    """A saved processor with bad settings is an error, not silently replaced by one built from the config."""
    _edit_json(model_copy / "preprocessor_config.json", log_offset=-1.0)
    with pytest.raises(ValueError, match="log_offset"):
        load_model_and_processor(model_copy, device="cpu")


@pytest.mark.parametrize("setting, value", [
    ("clip_seconds", 1e7), ("clip_seconds", float("nan")), ("vggish_sample_rate", 0), ("soundnet_sample_rate", 0),
    ("image_size", 4096), ("embed_dim", 0), ("map_init_scale", 0.0), ("dtype", "int8"),
])
def test_bad_model_settings_are_named(model_copy, setting, value):
    with pytest.raises(ValueError, match=setting):
        XPLConfig(**{**TINY, setting: value})
    _edit_json(model_copy / "config.json", **{setting: value})
    with pytest.raises(ValueError, match=setting):
        load_model_and_processor(model_copy, device="cpu")


@pytest.mark.parametrize("setting, value", [("image_size", 96), ("clip_seconds", 3.0), ("vggish_sample_rate", 22050)])
def test_processor_must_match_the_model(model_copy, setting, value):
    from xpl_hf import check_processor_matches

    with pytest.raises(ValueError, match=rf"{setting}={value!r}"):
        check_processor_matches(XPLConfig(**TINY), XPLProcessor.from_config(XPLConfig(**{**TINY, setting: value})))
    if setting == "image_size":  # the loader calls the check
        _edit_json(model_copy / "preprocessor_config.json", **{setting: value})
        with pytest.raises(ValueError, match=rf"{setting}={value}"):
            load_model_and_processor(model_copy, device="cpu")
    check_processor_matches(XPLConfig(**TINY), XPLProcessor.from_config(XPLConfig(**TINY)))  # a match passes


def test_half_precision_config_loads_a_model_that_runs_on_cpu(model_copy):
    """A config saved with `dtype: float16` (e.g. by a GPU run) loads in float32: the processor's inputs are float32."""
    _edit_json(model_copy / "config.json", dtype="float16")
    model, processor = load_model_and_processor(model_copy, device="cpu")
    maps = model(**_inputs(processor)).maps
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()


# ------------------------------------------------------------------------- 18.8: values where data enters
def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _wav() -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(1600, np.float32), 16000, format="WAV")
    return buffer.getvalue()


def _hand_made_split(root: Path, boxes: list, split: str = "test") -> str:
    """A split written with the schema but none of the converters' box rules, as a user could write one."""
    with ShardWriter(str(root), split, xpl_features()) as writer:
        for i, sample_boxes in enumerate(boxes):
            writer.write({"id": f"s{i}", "image": {"bytes": _png(), "path": None},
                          "audio": {"bytes": _wav(), "path": None}, "boxes": sample_boxes, "gt_rule": "union",
                          "label": ""})
    return str(root)


@pytest.mark.parametrize("bad_box, problem", [
    ([0.1, float("nan"), 0.5, 0.5], "NaN"),
    ([12.0, 30.0, 180.0, 200.0], "pixel"),
    ([-0.4, 0.1, 0.5, 0.5], r"\[0, 1\]"),
])
def test_bad_boxes_in_a_hand_made_split_are_refused_by_row(tmp_path, bad_box, problem):
    root = _hand_made_split(tmp_path, [[[0.1, 0.1, 0.5, 0.5]], [[0.2, 0.2, 0.4, 0.4], bad_box]])
    with pytest.raises(DataValidationError, match=rf"(?s)'test'.*'s1'.*{problem}"):
        load_labeled(root, "test")


def test_inverted_boxes_are_reordered_on_load(tmp_path, caplog):
    root = _hand_made_split(tmp_path, [[[0.5, 0.6, 0.1, 0.2]], [[0.1, 0.1, 0.3, 0.3]]])
    with caplog.at_level("WARNING"):
        ds = load_labeled(root, "test")
    np.testing.assert_allclose(ds[0]["boxes"], [[0.1, 0.2, 0.5, 0.6]], rtol=1e-6)
    np.testing.assert_allclose(ds[1]["boxes"], [[0.1, 0.1, 0.3, 0.3]], rtol=1e-6)
    assert "reordered" in caplog.text and "s0" in caplog.text


def test_metric_refuses_references_outside_unit_range():
    prediction = np.zeros((7, 7), np.float32)
    prediction[:3, :3] = 1.0
    mask = np.zeros((224, 224), np.float32)
    mask[:96, :96] = 255.0  # a 0/255 mask
    with pytest.raises(ValueError, match=r"ground truth 0.*\[0, 1\]"):
        localization_metrics([prediction], [mask])
    import evaluate

    from xpl_hf import METRIC_PATH

    with pytest.raises(ValueError, match=r"ground truth 0.*\[0, 1\]"):
        evaluate.load(METRIC_PATH).compute(predictions=[prediction], references=[mask])


def test_metric_names_a_ragged_prediction():
    import evaluate

    from xpl_hf import METRIC_PATH

    good = [[0.0, 1.0], [0.0, 1.0]]
    ragged = [[0.0, 1.0, 0.5], [0.0, 1.0]]
    with pytest.raises(ValueError, match=r"prediction 1.*row"):
        evaluate.load(METRIC_PATH, "union").compute(predictions=[good, ragged],
                                                    references=[[[0.5, 0.0, 1.0, 1.0]]] * 2)
    with pytest.raises(ValueError, match=r"prediction 1.*row"):
        localization_metrics([good, ragged], [np.zeros((224, 224))] * 2)


# ------------------------------------------------------------------------ issue 20: one rule for local paths
def test_a_local_looking_name_is_never_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="my data/set 1"):
        load_labeled("my data/set 1", "test")


def test_one_redaction_rule_for_cards_and_logged_options(tmp_path, monkeypatch):
    from xpl_hf.hub import public_value
    from xpl_hf.paths import public_path
    from xpl_hf.training_args import XPLTrainingArguments

    monkeypatch.chdir(tmp_path)
    assert public_path("runs/my run") == "my run" == public_value("runs/my run")  # cannot be a Hub id
    assert public_path("org/name") == "org/name" and public_path(["./a/b", {"k": "~/c"}]) == ["b", {"k": "c"}]
    public = XPLTrainingArguments(output_dir=".", dataset="runs/my data").public_dict()
    assert public["output_dir"] == tmp_path.name and public["dataset"] == "my data"


@pytest.mark.parametrize("boxes, problem", [([[0.1, float("nan"), 0.5, 0.5]], "NaN"), ([[12, 30, 180, 200]], "pixel")])
def test_metric_refuses_bad_reference_boxes(boxes, problem):
    import evaluate

    from xpl_hf import METRIC_PATH

    with pytest.raises(ValueError, match=rf"reference 1.*{problem}"):
        evaluate.load(METRIC_PATH, "union").compute(predictions=[[[0.0, 1.0], [0.0, 1.0]]] * 2,
                                                    references=[[[0.5, 0.0, 1.0, 1.0]], boxes])


def test_non_finite_maps_are_an_error_not_an_empty_box():
    """NaN maps (from weights or inputs that are not finite) used to give `box=None` and a consensus of 0.0."""
    maps = torch.rand(2, 2, 2)
    maps[1, 0, 0] = float("nan")
    processor = XPLProcessor(image_size=64, clip_seconds=1.0)
    with pytest.raises(ValueError, match=r"maps.*\[1\].*NaN"):
        processor.post_process_localization({"maps": maps, "maps_a": maps, "maps_b": maps}, threshold=0.5)
