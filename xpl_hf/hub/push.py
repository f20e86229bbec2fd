"""Uploading a trained model folder (save_pretrained output + model card) to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi

from .card import write_model_card

# Training state that may sit next to the final model in the trainer's output folder: not part of the model repo.
MODEL_IGNORE_PATTERNS = ("checkpoints/**", "checkpoint-*/**", "best/**", ".tmp-*/**", ".old-*/**", "runs/**",
                         "logs/**", "*.pt", "__pycache__/**", "optimizer*.bin", "scheduler*.bin",
                         "random_states_*.pkl", ".run.lock")


def push_model_folder(folder, repo_id: str, token: str | None = None, private: bool = False,
                      commit_message: str = "Upload XPL model", api: HfApi | None = None):
    """Create the model repo `repo_id` if needed and upload `folder` (save_pretrained output + README.md).

    Training state (`checkpoint-*/`, TensorBoard `runs/`, optimizer / scheduler / RNG files) is left out; a missing
    README.md is written first (a model card without results).

    Returns:
        The `CommitInfo` of the upload.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json; pass the folder written by save_pretrained or the "
                                "trainer.")
    if not (folder / "README.md").is_file():
        write_model_card(folder, repo_id=repo_id)  # a card without results beats an empty model page
    api = api or HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True, token=token)
    return api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder), token=token,
                             commit_message=commit_message, ignore_patterns=list(MODEL_IGNORE_PATTERNS))
