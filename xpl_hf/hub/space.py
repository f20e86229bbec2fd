"""The Gradio Space on the Hub: staging `space/` with the bundled `xpl_hf` source, and pushing it."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, RepoCard

PACKAGE_DIR = Path(__file__).resolve().parents[1]
"""The `xpl_hf` package folder that a staged Space bundles."""
SPACE_VARIABLE = "XPL_MODEL_ID"
# Files of the package that the Space does not need (tests, caches, metric scripts that load `evaluate`).
_PACKAGE_IGNORE = ("__pycache__", "*.pyc", "*.pyo", ".pytest_cache")
_SPACE_IGNORE = ("__pycache__", "*.pyc", ".gradio", "flagged", ".pytest_cache", "xpl-output")


def _set_models_metadata(readme: Path, model_id: str) -> None:
    """Add `model_id` to the `models:` list of a Space README's YAML header (links the Space to the model)."""
    card = RepoCard.load(readme)
    models = list(card.data.get("models") or [])
    if model_id not in models:
        models.append(model_id)
    card.data["models"] = models
    card.save(readme)


def stage_space(space_dir, target, model_id: str | None = None) -> Path:
    """Copy what the Space needs into `target`: `space_dir`'s files plus the `xpl_hf` package source.

    The package is not on PyPI yet, so its source is bundled next to `app.py` (`import xpl_hf` then finds it). With
    `model_id`, the README's `models:` metadata names it and `xpl_space.json` records it for the app.
    """
    space_dir, target = Path(space_dir), Path(target)
    for required in ("app.py", "README.md", "requirements.txt"):
        if not (space_dir / required).is_file():
            raise FileNotFoundError(f"{space_dir / required} is missing; is {space_dir} the Space folder?")
    shutil.copytree(space_dir, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*_SPACE_IGNORE))
    shutil.copytree(PACKAGE_DIR, target / "xpl_hf", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(*_PACKAGE_IGNORE))
    if model_id:
        _set_models_metadata(target / "README.md", model_id)
        (target / "xpl_space.json").write_text(json.dumps({"model_id": model_id}, indent=2) + "\n")
    return target


def push_space(space_dir, space_id: str, model_id: str | None = None, token: str | None = None,
               private: bool = False, commit_message: str = "Update the XPL Space", api: HfApi | None = None):
    """Create (or update) the Gradio Space `space_id` from `space_dir` plus the bundled `xpl_hf` package.

    With `model_id`, the Space loads that Hub model: it is written into the upload (`xpl_space.json`, README
    `models:`) and set as the Space variable `XPL_MODEL_ID`.

    Returns:
        The `CommitInfo` of the upload.
    """
    api = api or HfApi(token=token)
    api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True, token=token)
    with tempfile.TemporaryDirectory(prefix="xpl-space-") as tmp:
        staged = stage_space(space_dir, Path(tmp) / "space", model_id=model_id)
        info = api.upload_folder(repo_id=space_id, repo_type="space", folder_path=str(staged), token=token,
                                 commit_message=commit_message)
    if model_id:
        api.add_space_variable(space_id, SPACE_VARIABLE, model_id, description="Hub id of the XPL model to load",
                               token=token)
    return info
