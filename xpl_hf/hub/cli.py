"""Command line of the Hub helpers: ``python -m xpl_hf.hub push-model | push-space | write-card``.

The token comes from ``--token``, ``$HF_TOKEN`` or ``hf auth login``::

    python -m xpl_hf.hub push-model --folder xpl-output --repo_id my-org/xpl-vggss [--private]
    python -m xpl_hf.hub push-space --space_id my-org/xpl-demo [--model_id my-org/xpl-vggss] [--private]
    python -m xpl_hf.hub write-card --folder xpl-output [--results results.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .card import write_model_card
from .push import push_model_folder
from .space import PACKAGE_DIR, push_space


def _default_space_dir() -> Path:
    here = PACKAGE_DIR.parent / "space"
    return here if here.is_dir() else Path("space")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xpl_hf.hub", description="Push an XPL model or its Gradio "
                                     "Space to the Hugging Face Hub; write a model card.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("push-space", help="create/update the Gradio Space (space/ + the xpl_hf package)")
    p.add_argument("--space_id", required=True, help="ORG/NAME of the Space")
    p.add_argument("--model_id", default=None, help="Hub id of the model the Space loads (Space variable XPL_MODEL_ID)")
    p.add_argument("--space_dir", default=None, help="folder of the Space (default: the repository's space/)")
    p.add_argument("--token", default=None, help="Hub token (default: $HF_TOKEN or the cached login)")
    p.add_argument("--private", action="store_true")

    p = sub.add_parser("push-model", help="upload a save_pretrained folder (model + processor + card)")
    p.add_argument("--folder", required=True)
    p.add_argument("--repo_id", required=True)
    p.add_argument("--token", default=None)
    p.add_argument("--private", action="store_true")
    p.add_argument("--commit_message", default="Upload XPL model")

    p = sub.add_parser("write-card", help="(re)write FOLDER/README.md, the model card")
    p.add_argument("--folder", required=True)
    p.add_argument("--results", default=None, help="JSON file in the results format of xpl_hf.hub")
    p.add_argument("--repo_id", default=None)

    args = parser.parse_args(argv)
    if args.command == "push-space":
        space_dir = Path(args.space_dir) if args.space_dir else _default_space_dir()
        info = push_space(space_dir, args.space_id, model_id=args.model_id, token=args.token, private=args.private)
        print(f"Space updated: https://huggingface.co/spaces/{args.space_id} ({getattr(info, 'commit_url', info)})")
    elif args.command == "push-model":
        info = push_model_folder(args.folder, args.repo_id, token=args.token, private=args.private,
                                 commit_message=args.commit_message)
        print(f"Model uploaded: https://huggingface.co/{args.repo_id} ({getattr(info, 'commit_url', info)})")
    else:
        results = json.loads(Path(args.results).read_text()) if args.results else None
        path = write_model_card(args.folder, results=results, repo_id=args.repo_id)
        print(f"Model card written to {path}")
    return 0
