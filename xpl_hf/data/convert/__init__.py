"""Convert audio-visual localization data into the xpl-hf schema (parquet shards, a dataset card, a report).

Commands (``python -m xpl_hf.data.convert KIND -h`` documents each input format)::

    python -m xpl_hf.data.convert folder --input DIR_OR_TAR --output OUT [--validation_fraction 0.1 --test_fraction 0.1]
    python -m xpl_hf.data.convert flickr --input DIR --output OUT --test_list flickr_test.csv \\
        [--labeled_list flickr_sup_train.txt] [--unlabeled]
    python -m xpl_hf.data.convert vggss --input vggsound_00.tar.gz ... --output OUT --annotations vggss.json \\
        [--heard_list vggss_heard_test.csv --unheard_list vggss_unheard_test.csv] [--unlabeled --csv vggsound.csv]

Modules: :mod:`.folder`, :mod:`.flickr`, :mod:`.vggss` turn inputs into :class:`~.samples.Candidate` s (what the
annotations say); :mod:`.samples` and :mod:`.video` turn one candidate into a row (image + audio files stored as they
are; a video's frame and audio window decoded through :mod:`xpl_hf.media`); :mod:`.archive` reads .tar / .tar.gz
members without extracting; :mod:`.writer` validates in parallel and writes resumable shards; :mod:`.report` keeps
the per-sample problems and ``conversion_report.json``; :mod:`.cli` is the command line.

Bad input. A conversion never stops at a bad sample: the sample is **skipped**, the rest is written, and each problem
is listed in ``OUT/conversion_report.json`` (``skipped``: reason -> ids; ``reported``: reason -> ids of samples kept
despite a problem; ``problems``: one record per sample with its ``id``, ``split``, ``reason``, ``detail`` and
``action``; ``written`` and ``boxed``: rows per split, and how many of them carry a box) and in the printed summary.
With ``--strict`` the conversion stops at the first problem, naming the sample. Skipped: missing, corrupt or
truncated media; audio the processor would refuse (:func:`xpl_hf.audio.check_waveform`: empty, NaN, too short, a bad
sample rate); files over the size limits (refused unread); videos in a format outside the allow-list, playlists,
videos without a video or an audio stream; bad annotations (``bad boxes``, ``bad time``, a malformed ``vggss.json``
entry, a missing or duplicated id, a bad split name, a non-UTF-8 id or label). Kept and reported: silent audio, an
empty box list, an unknown key. A file that cannot be read at all (an annotation file that is not UTF-8 JSON or nests
too deep, a non-UTF-8 id list, a missing input, an ``--output`` that is a file) is an error naming it; so is a
conversion that writes no row at all. Archives are refused whole (:class:`~.archive.ArchiveError`, naming the
archive, the member and the bound) when over the memory budget of :mod:`.archive`, corrupt (``corrupt archive
<path>: ...``: gzip's CRC is checked before converting) or holding two members of one name.

Boxes are repaired by :func:`xpl_hf.data.schema.clean_boxes` and counted: ``folder`` reorders inverted corners;
``flickr`` and ``vggss`` follow the community protocol (clip to [0, 1], then drop boxes left inverted or empty). A
``folder`` sample that had boxes but keeps none is skipped (``no valid box``); ``flickr`` / ``vggss`` evaluation
samples are kept even with no valid box.
"""

from .cli import convert, main, push_to_hub
from .flickr import flickr_candidates
from .folder import FOLDER_KEYS, folder_candidates
from .report import REPORT_NAME, ConversionReport, SampleProblem
from .rows import build_row
from .samples import Candidate, ClipOptions
from .sources import load_json
from .vggss import read_vggsound_csv, vggsound_key, vggss_annotations, vggss_candidates
from .writer import write_dataset

__all__ = ["FOLDER_KEYS", "REPORT_NAME", "Candidate", "ClipOptions", "ConversionReport", "SampleProblem",
           "build_row", "convert", "flickr_candidates", "folder_candidates", "load_json", "main", "push_to_hub",
           "read_vggsound_csv", "vggss_annotations", "vggss_candidates", "vggsound_key", "write_dataset"]
