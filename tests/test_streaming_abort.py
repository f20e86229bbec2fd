"""A script that loads a dataset folder eagerly and then reads part of a stream exits cleanly (issue 21.7).

Without :mod:`xpl_hf.data.arrow_exit`'s guard (datasets 5.2 / pyarrow 26), such a script aborts at exit in about one
run of five (``terminate called without an active exception``, exit code 134: an Arrow thread releases the abandoned
scan's Python file while the interpreter finalises), and a streamed iterator still held at exit always prints
``AttributeError: 'NoneType' object has no attribute 'ArrowInvalid'``. The second symptom is deterministic, so this
test fails on unguarded code every time; the first one only sometimes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys

    import datasets

    import xpl_hf.data  # installs the exit guard

    folder = sys.argv[1]
    eager = datasets.load_dataset(folder)                           # every split, eagerly
    stream = datasets.load_dataset(folder, split="unlabeled", streaming=True)
    rows = list(stream.take(3))                                      # a scan left before its end
    held = iter(stream.shuffle(seed=0, buffer_size=4))               # an iterator still held at exit
    first = next(held)
    print("read", len(eager["labeled"]), len(rows), first["id"] is not None, flush=True)
""")


def test_eager_then_streamed_read_exits_cleanly(tmp_path, tiny_benchmark):
    script = tmp_path / "eager_then_stream.py"
    script.write_text(SCRIPT)
    run = subprocess.run([sys.executable, str(script), tiny_benchmark], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "read" in run.stdout and "True" in run.stdout, run.stdout
    assert "Exception ignored" not in run.stderr and "terminate called" not in run.stderr, run.stderr[-3000:]
