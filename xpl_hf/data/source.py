"""What a ``--dataset`` value names, decided once: a local folder or a Hub dataset id, how a log or a model card may
show it, and the fingerprint a resume compares.

    source = DatasetSource.resolve("data/xpl-synthetic")   # a local folder (it exists)
    source = DatasetSource.resolve("ORG/DATA")              # a Hub dataset id
    load_labeled(source.name, "labeled"); source.fingerprint(); source.public_name
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..paths import is_local, public_path
from .checks import data_fingerprint

__all__ = ["DatasetSource"]


@dataclass(frozen=True)
class DatasetSource:
    """A dataset, local or on the Hub.

    Attributes:
        name: the value as given (what the loaders of :mod:`xpl_hf.data.loading` take).
        local: True for a local folder (the rule of :func:`xpl_hf.paths.is_local`), False for a Hub dataset id.
    """

    name: str
    local: bool

    @classmethod
    def resolve(cls, name: str | os.PathLike) -> DatasetSource:
        """Interpret ``name``; a local path must be an existing folder.

        Raises:
            FileNotFoundError: ``name`` is meant as a local path (it cannot be a Hub id) and is not a folder.
        """
        name = os.fspath(name)
        local = is_local(name)
        if local and not Path(name).expanduser().is_dir():
            raise FileNotFoundError(f"--dataset {name!r} is neither a local folder nor a Hub dataset id.")
        return cls(name, local)

    @property
    def public_name(self) -> str:
        """How logs, results and model cards show the dataset: a Hub id as it is, a local folder by its name only."""
        return public_path(self.name) if self.local else self.name

    def fingerprint(self) -> dict[str, str]:
        """``{"data_files": ...}``: a digest of a local folder's parquet files (:func:`data_fingerprint`), or the Hub
        id (``"hub:ORG/DATA"``)."""
        return data_fingerprint(self.name) if self.local else {"data_files": f"hub:{self.name}"}
