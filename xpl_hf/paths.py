"""Telling a local folder from a Hugging Face Hub id (one rule for models and datasets)."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["is_local", "looks_like_hub_id"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def looks_like_hub_id(name: str) -> bool:
    """True for ``name`` or ``org/name`` made of Hub-legal characters that is not an existing local path."""
    name = os.fspath(name)
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "~")) and not Path(name).exists()


def is_local(name_or_path: str | os.PathLike) -> bool:
    """True when ``name_or_path`` is (or is meant as) a local path: it exists, or it cannot be a Hub id
    (absolute, relative with ``./`` or ``~``, or more than one ``/``)."""
    return not looks_like_hub_id(os.fspath(name_or_path))
