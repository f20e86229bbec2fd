"""The model card of an XPL checkpoint (README.md with model-index metadata), from its config and results.

Results format (``results`` argument, or the JSON file of ``python -m xpl_hf.hub write-card --results``): one dict,
or a list of dicts (one per evaluation set)::

    {
      "dataset": "VGG-SS",             # display name (required)
      "dataset_type": "vggss",         # optional: Hub dataset id or short type; defaults to a slug of the name
      "split": "test",                 # optional, default "test"
      "dataset_config": None,          # optional
      "fused": {"ciou": 39.1, "auc": 40.2},   # percentages, as in the paper's tables
      "a": {"ciou": ..., "auc": ...},  # branch A (optional)
      "b": {"ciou": ..., "auc": ...},  # branch B (optional)
      "listening": {...},              # optional: evaluate_model(..., listening=True)["listening"]
    }

Every (model in fused/a/b) x (metric in ciou/auc, plus any other numeric key) becomes one model-index entry, so the
Hub renders the numbers on the model page. The listening checks (``listening``) add their figures per branch (CIoU / AUC
with a swapped sound, silence and noise; object selection and its chance level; the extended protocol's AP@0.5,
AP@0.75 and max-F1@0.5 with each kind of negative; CIoU / AUC per box size) and their tables to the card.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..metrics.listening import CARD_METRIC_NAMES, card_metrics, format_listening_table
from ..paths import is_local, public_path

TASK_TYPE = "audio-visual-source-localization"
TASK_NAME = "Audio-visual source localization"
# The Hub's task list (@huggingface/tasks 0.21.54) has no audio-visual localization task, and no listed task fits a
# model that maps an (image, sound) pair to a heat map. "other" is a valid value that claims no widget; without any
# pipeline_tag the Hub would guess one from the config's AutoModel entry (feature-extraction), which is wrong here.
# The real task is in `tags` and in the model-index (TASK_TYPE).
PIPELINE_TAG = "other"
CARD_TAGS = ("audio-visual", TASK_TYPE, "sound-source-localization", "semi-supervised", "pseudo-labeling", "xpl",
             "xpl-hf", "custom_code")
MODEL_KEYS = {"fused": "fused (A+B)", "a": "branch A", "b": "branch B"}
METRIC_NAMES = {"ciou": "CIoU", "auc": "AUC", "mean_ciou": "mean cIoU", **CARD_METRIC_NAMES}
EVAL_PROTOCOL = (
    "Maps are upsampled to 224 x 224 (bicubic, align_corners=False), min-max normalised (a flat map stays "
    "unchanged) and binarised by keeping the pixels >= the 25,088-th smallest value (the top half). "
    "Per-sample cIoU = sum(B*G) / (sum(G) + sum(B*[G == 0])); CIoU = 100 x fraction of samples with cIoU >= 0.5; "
    "AUC = 100 x trapezoid area of the success rate over thresholds 0, 0.05, ..., 1. Ground truth: VGG-SS = union "
    "of the boxes; Flickr-SoundNet = sum of the annotators' boxes / 2, clipped to 1. Extended protocol (SLAVC): "
    "positives = test frames with their own sound, negatives = the same frames with another clip's sound (or "
    "silence, or noise); a map's confidence = the mean of the top quarter of each branch's probability map (fused: "
    "the mean of the branches'); AP = area under the monotone precision envelope over every confidence threshold, "
    "a detected positive counting as a true positive when its cIoU >= 0.5 (AP@0.5) or 0.75 (AP@0.75); box sizes by "
    "ground-truth area at 224 px: small < 32², medium < 96², large < 144², huge >= 144²."
)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "dataset"


def _is_path(text: str) -> bool:
    """Whether `text` names a local file or folder (:func:`xpl_hf.paths.is_local`); an empty string does not."""
    return bool(text) and is_local(text)


def dataset_display_name(dataset) -> str:
    """A local dataset folder is named by its last component, never by its path; a Hub id or a name is kept."""
    text = str(dataset)
    return Path(text).expanduser().resolve().name if _is_path(text) else text


def _hub_dataset_id(dataset) -> str | None:
    """`dataset` if it is a Hub dataset id ("org/name"), else None."""
    text = str(dataset)
    return text if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not _is_path(text) else None


public_value = public_path  # the package's one redaction rule (cards, results files, logged options)


def _setting(value) -> str:
    """One cell of the method-settings table: None is "off"."""
    if value is None:
        return "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(public_value(value))


def _as_result_list(results) -> list[Mapping[str, Any]]:
    if results is None:
        return []
    if isinstance(results, Mapping):
        return [results]
    if isinstance(results, Sequence) and not isinstance(results, (str, bytes)):
        return list(results)
    raise TypeError(f"results must be a dict or a list of dicts, not {type(results).__name__}")


def eval_results_from_dict(results) -> list[EvalResult]:
    """Turn the results format of this module (see the module docstring) into `EvalResult`s for model-index.

    Raises:
        ValueError: a results dict without a dataset name, or with no numeric metric at all.
    """
    out = []
    for entry in _as_result_list(results):
        if not entry.get("dataset"):
            raise ValueError(f"a results entry needs a 'dataset' name: {dict(entry)!r}")
        name = dataset_display_name(entry["dataset"])
        found = False
        listening = card_metrics(entry.get("listening"))
        for key, label in MODEL_KEYS.items():
            metrics = {**(entry.get(key) or {}), **listening.get(key, {})}
            for metric, value in metrics.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue  # per-sample arrays, notes, ... are not model-index metrics
                found = True
                out.append(EvalResult(
                    task_type=TASK_TYPE,
                    task_name=TASK_NAME,
                    dataset_type=str(entry.get("dataset_type") or _slug(name)),
                    dataset_name=name,
                    dataset_split=str(entry.get("split") or "test"),
                    dataset_config=entry.get("dataset_config"),
                    metric_type=f"{metric}_{key}" if key != "fused" else metric,
                    metric_name=f"{METRIC_NAMES.get(metric, metric)} ({label})",
                    metric_value=round(float(value), 4),
                    verified=False,
                ))
        if not found:
            raise ValueError(f"results for {name!r} hold no numeric metric under 'fused', 'a' or 'b'.")
    return out


def _results_table(results) -> str:
    rows = []
    for entry in _as_result_list(results):
        for key, label in MODEL_KEYS.items():
            metrics = entry.get(key) or {}
            if not metrics:
                continue
            ciou, auc = metrics.get("ciou"), metrics.get("auc")
            cell = lambda v: "-" if v is None else f"{float(v):.2f}"  # noqa: E731
            split = entry.get("split") or "test"
            name = dataset_display_name(entry["dataset"])
            rows.append(f"| {name} | {split} | {label} | {cell(ciou)} | {cell(auc)} |")
    if not rows:
        return ""
    return "| dataset | split | model | CIoU | AUC |\n| --- | --- | --- | --- | --- |\n" + "\n".join(rows)


def _config_dict(config) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    return config.to_dict()


def _weights_note(pretrained_report: Mapping[str, str] | None, cfg: Mapping[str, Any]) -> str:
    if pretrained_report:
        lines = [f"| `{k}` | {v} |" for k, v in pretrained_report.items()]
        random = [k for k, v in pretrained_report.items() if str(v).startswith("random")]
        note = ("\n\n**Randomly initialised before training:** " + ", ".join(f"`{k}`" for k in random) +
                ". Those backbones did not start from their published pretrained weights, so results are expected to "
                "be lower than the paper's.") if random else ""
        return "| module | initialised from |\n| --- | --- |\n" + "\n".join(lines) + note
    return ("The initialisation of the backbones was not recorded. Backbones whose pretrained weights were "
            "unreachable at training time (ResNet-18 and VGGish offline) start from random init; see the training "
            "log of `load_pretrained_backbones`.")


def build_model_card(
    config=None,
    results=None,
    training_args: Mapping[str, Any] | None = None,
    *,
    method_settings: Mapping[str, Any] | None = None,
    best_step: int | None = None,
    model_name: str = "xpl",
    repo_id: str | None = None,
    pretrained_report: Mapping[str, str] | None = None,
    datasets: str | list[str] | None = None,
    license: str = "apache-2.0",
    extra_text: str | None = None,
) -> ModelCard:
    """The model card (README.md) of an XPL checkpoint, with model-index metadata when `results` are given.

    Args:
        config: the model's `XPLConfig` (or its dict): the architecture, image size and clip length.
        results: evaluation results in this module's format (see the module docstring), or None.
        training_args: the training recipe (any flat dict: steps, batch size, learning rate, data, ...). Local paths
            in it are shown as their last component.
        method_settings: the method's settings the run actually used, name -> value (e.g. `{"method": "xpl",
            "sharpen_temperature": None, "pl_ema_alpha": 0.7}`), rendered as the hyper-parameter table; None values
            read "off" (a switched-off component).
        best_step: the training step of the checkpoint (best validation score); default: `best_step` of the first
            results entry, if any.
        model_name: the model-index name.
        repo_id: the Hub id the card is for (used in the usage snippet; a placeholder otherwise).
        pretrained_report: `xpl_hf.pretrained.load_pretrained_backbones`'s report {module: source}.
        datasets: Hub dataset ids for the card's `datasets:` metadata; Hub ids among the results' datasets are added,
            local folders never are.
        license: SPDX id for the `license:` metadata.
        extra_text: Markdown appended at the end (e.g. notes of the trainer).
    """
    cfg = _config_dict(config)
    eval_results = eval_results_from_dict(results) or None
    entries = _as_result_list(results)
    if best_step is None and entries and entries[0].get("best_step") is not None:
        best_step = int(entries[0]["best_step"])
    hub_datasets = [datasets] if isinstance(datasets, str) else list(datasets or [])
    hub_datasets += [d for d in (_hub_dataset_id(e["dataset"]) for e in entries) if d and d not in hub_datasets]
    card_data = ModelCardData(
        model_name=model_name if eval_results else None,
        eval_results=eval_results,
        license=license,
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        datasets=hub_datasets or None,
        tags=list(CARD_TAGS),
    )
    repo = repo_id or "path/or/hub-id"
    branches = (f"branch A = {cfg.get('image_backbone_a', 'resnet18')} + {cfg.get('audio_backbone_a', 'vggish')}, "
                f"branch B = {cfg.get('image_backbone_b', 'resnet18')} + {cfg.get('audio_backbone_b', 'soundnet8')}")
    image_size = int(cfg.get("image_size", 224))
    clip_seconds = float(cfg.get("clip_seconds", 3.0))
    cells = image_size // 32
    table = _results_table(results)
    sections = [
        f"# {model_name}: XPL audio-visual source localization",
        "A dual audio-visual source-localization model trained with **XPL** (Cross Pseudo-Labeling, "
        "\"Cross Pseudo-Labeling for Semi-Supervised Audio-Visual Source Localization\", ICASSP 2024) using "
        f"[xpl-hf](https://github.com/xpl-hf/xpl-hf). Given a video frame and the sound around it, it predicts a heat "
        f"map of where the sound comes from. {branches}; the fused map is the mean of the two min-max-normalised maps.",
        "## How to use",
        "```python\nfrom PIL import Image\nfrom xpl_hf import XPLModel, XPLProcessor\n\n"
        f"model = XPLModel.from_pretrained(\"{repo}\").eval()\n"
        f"processor = XPLProcessor.from_pretrained(\"{repo}\")\n"
        "inputs = processor(images=Image.open(\"frame.jpg\"), audio=\"sound.wav\", return_tensors=\"pt\")\n"
        "out = model(**inputs)\n"
        "out.maps    # (1, h, w) fused heat map in [0, 1]\n"
        "out.maps_a  # branch A, out.maps_b: branch B\n```\n\n"
        "Without installing xpl-hf: `AutoModel.from_pretrained(repo, trust_remote_code=True)` (the code ships with "
        f"the checkpoint). Images: resized to {image_size} x {image_size} px. Audio: WAV/FLAC/OGG files or arrays "
        f"with `sampling_rate`; a {clip_seconds:g} s clip around the centre is used. Try it in a browser with the "
        "Gradio Space of xpl-hf (`space/`).",
    ]
    step = [f"The checkpoint is the one of training step {best_step} (best validation score)."] if best_step else []
    if table:
        sections += ["## Evaluation results", table, *step, f"Protocol: {EVAL_PROTOCOL}"]
        sections += [f"### Listening checks ({dataset_display_name(e['dataset'])}, {e.get('split') or 'test'})\n\n"
                     f"{format_listening_table(e['listening'])}" for e in entries if e.get("listening")]
    else:
        sections += ["## Evaluation results", "No evaluation results were recorded for this checkpoint.", *step,
                     f"Protocol used by `python -m xpl_hf.evaluate`: {EVAL_PROTOCOL}"]
    method = (method_settings or {}).get("method")
    xpl_objective = ("XPL's objective (paper eq. 9): for each branch, supervised BCE on labeled maps + cross BCE "
                     "against the other branch's sharpened, EMA-smoothed soft pseudo-labels on unlabeled samples "
                     "admitted by the consensus curriculum + λ x InfoNCE (global max pooling). Stage 1 trains on "
                     "labeled data only; stage 2 adds the unlabeled stream.")
    recipe = ["## Training recipe", xpl_objective if method in (None, "xpl") else
              f"This run used the `{method}` method of the xpl-hf trainer (a baseline or ablation of XPL; the table "
              f"below lists its settings). For comparison, {xpl_objective}"]
    if method_settings:
        recipe.append("Method settings of this run (\"off\": the component was switched off):\n\n"
                      "| hyper-parameter | value |\n| --- | --- |\n" +
                      "\n".join(f"| `{k}` | {_setting(v)} |" for k, v in method_settings.items()))
    else:
        recipe.append("The method settings of this run were not recorded.")
    if training_args:
        public = {k: public_value(v) for k, v in training_args.items()}
        recipe.append("Training arguments:\n\n```json\n" +
                      json.dumps(public, indent=2, sort_keys=True, default=str) + "\n```")
    sections += recipe
    sections += ["## Initialisation of the backbones", _weights_note(pretrained_report, cfg)]
    sections += [
        "## Limitations",
        "- The model localizes *where* a sound comes from in one frame; it does not separate or classify sounds.\n"
        f"- Maps are coarse ({cells} x {cells} cells for {image_size} px frames) and upsampled for display.\n"
        "- Off-screen sounds, silence and several simultaneous sources give diffuse or misleading maps; the "
        "branches' consensus (Pearson ρ between the A and B maps) and the map's confidence (`confidence` of the "
        "post-processing and the pipeline) are rough indicators of reliability.\n"
        "- Results depend on the data the checkpoint was trained on (see the recipe above); a model trained on the "
        "synthetic benchmark of xpl-hf does not transfer to real videos.",
    ]
    if extra_text:
        sections.append(extra_text)
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"
    return ModelCard(content)


def write_model_card(folder, results=None, config=None, training_args=None, *,
                     method_settings: Mapping[str, Any] | None = None, best_step: int | None = None,
                     **kwargs) -> Path:
    """Write `folder/README.md` (see `build_model_card` for the arguments); returns its path.

    `config=None` reads `folder/config.json` when it exists.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if config is None and (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
    card = build_model_card(config, results, training_args, method_settings=method_settings, best_step=best_step,
                            **kwargs)
    path = folder / "README.md"
    card.save(path)
    return path
