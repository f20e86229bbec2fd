"""Local folder or Hugging Face Hub id, and how a local path may be shown: one rule for models, datasets, model
cards and logged options."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["is_local", "looks_like_hub_id", "public_path"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def looks_like_hub_id(name: str | os.PathLike) -> bool:
    """True for ``name`` or ``org/name`` made of Hub-legal characters that is not an existing local path."""
    name = os.fspath(name)
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "~")) and not Path(name).exists()


def is_local(name_or_path: str | os.PathLike) -> bool:
    """True when ``name_or_path`` is (or is meant as) a local path: it exists, or it cannot be a Hub id
    (absolute, relative with ``./`` or ``~``, more than one ``/``, or characters a Hub id cannot hold)."""
    return not looks_like_hub_id(name_or_path)


def public_path(value: Any) -> Any:
    """``value`` as a model card, a results file or a tracker may show it: a local path (:func:`is_local`) becomes
    the name of its last component (``~`` and ``..`` resolved first, so ``"."`` shows the current folder's name);
    Hub ids and every other value are kept. Lists, tuples (as lists) and mappings are redacted item by item."""
    if isinstance(value, (str, os.PathLike)) and os.fspath(value) and is_local(value):
        return Path(value).expanduser().resolve().name
    if isinstance(value, (list, tuple)):
        return [public_path(item) for item in value]
    if isinstance(value, Mapping):
        return {key: public_path(item) for key, item in value.items()}
    return value
