"""Exit guard for streamed parquet reads: let Arrow's threads release an abandoned scan before Python shuts down.

A streamed split that is left before its end (``ds.take(n)``, ``break``, ``next(iter(ds))``) abandons a pyarrow
scan whose read-ahead still runs on Arrow's I/O threads and holds the Python file object ``datasets`` opened. When
the script ends right after, the last reference can drop on an Arrow thread while the interpreter is finalising:
the thread's destructor asks for the GIL, CPython ends the thread with ``pthread_exit``, the forced unwind crosses a
``noexcept`` C++ destructor and the process aborts (``terminate called without an active exception``, exit code 134;
seen with datasets 5.2 / pyarrow 26.0.1, intermittently, with or without an eager load before). Suspended streamed
generators that survive to the end are closed after pyarrow's module globals are cleared, hence the
``AttributeError: 'NoneType' object has no attribute 'ArrowInvalid'`` printed at exit.

:func:`install` registers one ``atexit`` handler that runs while the interpreter is still whole: it closes the
suspended streamed iterators of ``datasets`` (one still held at exit, e.g. by a global) and collects
garbage while ``pyarrow`` is alive, then waits, at most ``timeout`` seconds, until no thread but the main one is
running (on Linux, read from ``/proc/self/task``; elsewhere a short sleep), so that Arrow's threads drop their
references before the interpreter finalises.
"""

from __future__ import annotations

import atexit
import gc
import inspect
import os
import sys
import threading
import time
import types

_installed = False


def _busy_threads() -> int | None:
    """Threads of this process other than the calling one that are running or in uninterruptible I/O (Linux);
    None where /proc is unavailable."""
    me = threading.get_native_id()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    busy = 0
    for tid in tasks:
        if int(tid) == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # the thread ended meanwhile
        busy += state in ("R", "D")
    return busy


def close_suspended_streams() -> int:
    """Close the suspended generators of ``datasets`` (streamed iterators and their packaged readers); returns how
    many were closed. Meant for interpreter exit only: a closed stream cannot go on.

    ``datasets`` sleeps ``config.SLEEP_TIME_ON_THREADS_SHUTDOWN`` (5 s) when it closes a stream whose shards were
    read by threads, to let them end; at exit :func:`wait_for_arrow_threads` waits for them instead, so the sleep
    is set to 0 first.
    """
    datasets = sys.modules.get("datasets")
    if datasets is None:
        return 0
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    package_dir = os.path.dirname(datasets.__file__)
    closed = 0
    for obj in gc.get_objects():
        # type() rather than isinstance(): some lazy modules warn when their __class__ is looked up
        if (type(obj) is types.GeneratorType and inspect.getgeneratorstate(obj) == inspect.GEN_SUSPENDED
                and obj.gi_code.co_filename.startswith(package_dir)):
            try:
                obj.close()
                closed += 1
            except Exception:  # noqa: BLE001 - best effort at exit; a generator that fails to close is left as is
                pass
    return closed


def wait_for_arrow_threads(timeout: float = 2.0, poll: float = 0.01) -> None:
    """Close suspended streams, collect garbage, then wait until the other threads are idle for two polls in a row,
    or ``timeout`` seconds."""
    close_suspended_streams()
    gc.collect()
    deadline = time.monotonic() + timeout
    idle_polls = 0
    while time.monotonic() < deadline and idle_polls < 2:
        busy = _busy_threads()
        if busy is None:
            time.sleep(0.1)
            return
        idle_polls = idle_polls + 1 if busy == 0 else 0
        time.sleep(poll)  # releases the GIL, so an Arrow thread that needs it can finish


def install(timeout: float = 2.0) -> None:
    """Register :func:`wait_for_arrow_threads` to run at interpreter exit (once per process)."""
    global _installed
    if not _installed:
        atexit.register(wait_for_arrow_threads, timeout)
        _installed = True
