"""``python -m xpl_hf.data.convert {folder,flickr,vggss,card}``: the converters' command line and :func:`convert`."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Any

from ..schema import DataValidationError
from ..shards import DATASET_SOURCES, MAX_SHARDS_PER_SPLIT, list_splits, split_shard_paths, write_dataset_card
from . import flickr, folder, vggss
from .report import ConversionReport, shown
from .samples import CLIP_OPTION_BOUNDS, ClipOptions, bound_problem
from .writer import write_dataset

PROG = "python -m xpl_hf.data.convert"


def convert(
    kind: str,
    input_dir: str | list[str],
    output: str,
    *,
    shards_per_split: dict[str, int] | int | None = None,
    num_workers: int = 1,
    strict: bool = False,
    progress: bool = True,
    options: ClipOptions | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    **kwargs: Any,
) -> ConversionReport:
    """Run one converter (``folder``, ``flickr`` or ``vggss``); ``kwargs`` go to its ``*_candidates`` function and
    the rest to :func:`~xpl_hf.data.convert.writer.write_dataset`."""
    if kind == "folder":
        candidates, report = folder.folder_candidates(input_dir, **kwargs)
    elif kind == "flickr":
        candidates, report = flickr.flickr_candidates(input_dir, **kwargs)
    elif kind == "vggss":
        candidates, report = vggss.vggss_candidates(input_dir, **kwargs)
    else:
        raise ValueError(f"unknown dataset kind {kind!r}; expected folder, flickr or vggss")
    return write_dataset(candidates, output, kind, shards_per_split=shards_per_split, num_workers=num_workers,
                         strict=strict, progress=progress, report=report, options=options or ClipOptions(),
                         num_shards=num_shards, shard_index=shard_index, unique_across_splits=kind != "vggss")


def push_to_hub(output: str, repo_id: str, *, private: bool = False, token: str | None = None) -> Any:
    """Upload every split of ``output`` with ``datasets.DatasetDict.push_to_hub``, keeping each split's shard count
    (so that streaming still splits the unlabeled data across processes)."""
    from datasets import DatasetDict

    from ..loading import load_labeled

    splits = list_splits(output)
    if not splits:
        raise ValueError(f"{output!r} holds no split to push")
    dd = DatasetDict({s: load_labeled(output, s, require_boxes=False, decode_images=True) for s in splits})
    shards = {s: len(split_shard_paths(output, s)) for s in splits}
    return dd.push_to_hub(repo_id, private=private, token=token, num_shards=shards)


MAX_WORKERS = 256


def _bounded(low: float, high: float, integer: bool):
    """An argparse type: a number in ``[low, high]`` (an integer when ``integer``; ``2.205e4`` is read as 22050)."""
    def parse(text: str):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        problem = bound_problem("", value, low, high, integer)
        if problem:
            raise argparse.ArgumentTypeError(problem.strip())
        return int(value) if integer else value
    return parse


def _option(name: str):
    return _bounded(*CLIP_OPTION_BOUNDS[name])


def _frame_time(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Convert audio-visual localization data (videos, or "
                                     "frames + audio, with boxes) into the xpl-hf schema: parquet shards under "
                                     "OUTPUT/data/, a dataset card and conversion_report.json.")
    sub = parser.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output", required=True, help="output folder (parquet shards under OUTPUT/data/)")
    common.add_argument("--shards_per_split", type=_bounded(1, MAX_SHARDS_PER_SPLIT, True), default=None,
                        help=f"parquet shards per split (default: one per 1000 rows; at most one per row and "
                             f"{MAX_SHARDS_PER_SPLIT})")
    common.add_argument("--num_workers", type=_bounded(1, MAX_WORKERS, True), default=min(8, os.cpu_count() or 1),
                        help=f"processes reading and decoding media (default: the CPU count, at most 8; at most "
                             f"{MAX_WORKERS})")
    common.add_argument("--num_shards", type=_bounded(1, MAX_SHARDS_PER_SPLIT, True), default=1,
                        help="split the conversion between this many machines (run each with its --shard_index)")
    common.add_argument("--shard_index", type=int, default=0, help="this machine's part, 0 .. --num_shards - 1")
    common.add_argument("--strict", action="store_true",
                        help="stop at the first bad or reported sample (naming it) instead of skipping/reporting it")
    common.add_argument("--push_to_hub", metavar="REPO", default=None, help="upload the result as this Hub dataset")
    common.add_argument("--private", action="store_true", help="create the Hub dataset as private")
    video = common.add_argument_group("videos")
    video.add_argument("--frame_time", type=_frame_time, default=None,
                       help="seconds into each video of the stored frame (default: the middle frame, the protocol's)")
    video.add_argument("--frames_per_clip", type=_option("frames_per_clip"), default=1,
                       help="also store K frames spread over the audio window (training picks one per visit); 1-64")
    video.add_argument("--clip_seconds", type=_option("clip_seconds"), default=3.0,
                       help="seconds of audio stored around the frame (the model's clip_seconds); 0.01-60")
    video.add_argument("--sample_rate", type=_option("sample_rate"), default=22050,
                       help="rate of the stored audio, mono, resampled once (22050: the higher of the model's rates); "
                            "8000-192000 Hz")
    video.add_argument("--audio_format", choices=("wav", "flac"), default="wav", help="stored audio format")
    p = sub.add_parser("folder", parents=[common], help="a folder (or .tar / .tar.gz) with annotations.json",
                       description=folder.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="the folder holding annotations.json, or a .tar / .tar.gz of it")
    p.add_argument("--validation_fraction", type=_fraction, default=0.1,
                   help="fraction of the boxed rows without a split that go to 'validation' (default 0.1, so that "
                        "a folder without split fields trains as it is; 0 keeps them all in 'labeled')")
    p.add_argument("--test_fraction", type=_fraction, default=0.1,
                   help="fraction of the boxed rows without a split that go to 'test' (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation/test draw")
    p = sub.add_parser("flickr", parents=[common], help="Flickr-SoundNet (frames + audio or videos, Annotations/)",
                       description=flickr.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="the download folder, or a .tar / .tar.gz of it")
    p.add_argument("--test_list", required=True, help="test ids, e.g. avsl_metadata/flickr_test.csv")
    p.add_argument("--labeled_list", default=None, help="labeled training ids, e.g. avsl_metadata/flickr_sup_train.txt")
    p.add_argument("--unlabeled", action="store_true", help="add every other clip as the unlabeled split")
    p.add_argument("--validation_fraction", type=_fraction, default=0.0,
                   help="fraction of the labeled ids that go to 'validation' (drawn with --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation draw")
    p = sub.add_parser("vggss", parents=[common], help="VGG-Sound videos (folders or Hub tar.gz) with vggss.json",
                       description=vggss.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, nargs="+", help="folders and/or vggsound_XX.tar.gz archives")
    p.add_argument("--annotations", required=True, help="vggss.json")
    p.add_argument("--heard_list", default=None, help="vggss_heard_test.csv")
    p.add_argument("--unheard_list", default=None, help="vggss_unheard_test.csv")
    p.add_argument("--unlabeled", action="store_true", help="add every non-annotated clip as the unlabeled split")
    p.add_argument("--csv", default=None, help="vggsound.csv: unlabeled clips only from its train split, with labels")
    p = sub.add_parser("card", help="rewrite OUTPUT/README.md from the shards present (after merging machines' parts)")
    p.add_argument("--output", required=True, help="the dataset folder")
    p.add_argument("--source", choices=sorted(DATASET_SOURCES), default="folder", help="what the card says it holds")
    return parser


def main(argv: list[str] | None = None) -> ConversionReport | None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.kind == "card":
        try:
            print(write_dataset_card(args.output, args.source))
        except ValueError as err:  # DataValidationError included: an incomplete split names its missing shards
            parser.exit(2, f"{PROG} card: error: {shown(str(err))}\n")
        return None
    if not 0 <= args.shard_index < args.num_shards:
        parser.error(f"--shard_index {args.shard_index} must be in [0, --num_shards={args.num_shards})")
    extra: dict[str, Any] = {}
    if args.kind == "folder":
        extra = dict(validation_fraction=args.validation_fraction, test_fraction=args.test_fraction, seed=args.seed)
    elif args.kind == "flickr":
        extra = dict(test_list=args.test_list, labeled_list=args.labeled_list, unlabeled=args.unlabeled,
                     validation_fraction=args.validation_fraction, seed=args.seed)
    elif args.kind == "vggss":
        extra = dict(annotations=args.annotations, heard_list=args.heard_list, unheard_list=args.unheard_list,
                     unlabeled=args.unlabeled, csv_path=args.csv)
    options = ClipOptions(frame_time=args.frame_time, frames_per_clip=args.frames_per_clip,
                          clip_seconds=args.clip_seconds, sample_rate=args.sample_rate, audio_format=args.audio_format)
    try:
        report = convert(args.kind, args.input, args.output, shards_per_split=args.shards_per_split,
                         num_workers=args.num_workers, strict=args.strict, options=options,
                         num_shards=args.num_shards, shard_index=args.shard_index, **extra)
    except (DataValidationError, FileNotFoundError, ValueError) as err:
        parser.exit(2, f"{PROG} {args.kind}: error: {shown(str(err))}\n")
    print(report.summary())
    if args.push_to_hub:
        push_to_hub(args.output, args.push_to_hub, private=args.private)
        print(f"pushed {args.output} to https://huggingface.co/datasets/{args.push_to_hub}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
