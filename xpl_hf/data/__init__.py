"""xpl-hf data layer: schema, synthetic benchmark, converters, loading/streaming, transforms and collate.

The schema is documented in xpl_hf/data/schema.py. Heavy submodules (torch-based transforms) are imported lazily.
Importing this package installs :mod:`xpl_hf.data.arrow_exit`'s exit guard, which keeps a streamed read that was left
before its end from aborting the interpreter at exit.
"""

from . import arrow_exit
from .schema import (
    GT_RULES,
    SYNTHETIC_FEATURES,
    XPL_FEATURES,
    BoxReport,
    DataValidationError,
    check_columns,
    check_unique_ids,
    clean_boxes,
    find_duplicate_ids,
    xpl_features,
)

arrow_exit.install()

_LAZY = {
    "generate_benchmark": "synthetic",
    "load_labeled": "loading",
    "load_unlabeled_stream": "loading",
    "load_split_features": "loading",
    "ColorRandAugment": "augment",
    "XPLSampleTransform": "transforms",
    "XPLCollator": "transforms",
    "BadSampleError": "transforms",
}

__all__ = [
    "GT_RULES",
    "SYNTHETIC_FEATURES",
    "XPL_FEATURES",
    "BoxReport",
    "DataValidationError",
    "check_columns",
    "check_unique_ids",
    "clean_boxes",
    "find_duplicate_ids",
    "xpl_features",
    *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
