import os
import warnings

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def make_benchmark(out, num_labeled=16, num_unlabeled=32, num_validation=8, num_test=8, image_size=64):
    """Generate a tiny synthetic benchmark (64 px, one process, no progress bars) into `out`; returns `out`."""
    from xpl_hf.data.synthetic import generate_benchmark

    generate_benchmark(str(out), num_labeled=num_labeled, num_unlabeled=num_unlabeled, num_validation=num_validation,
                       num_test=num_test, image_size=image_size, seed=0, progress=False, num_workers=1)
    return out


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory):
    """A tiny generated benchmark (all four splits), shared by the trainer tests."""
    return str(make_benchmark(tmp_path_factory.mktemp("tiny-benchmark")))


# The slow tier: tests measured at more than SLOW_SECONDS each on the shared 2-core machine (`pytest --durations=0`),
# by node id (a whole file when it ends in .py). `pytest -m "not slow"` runs the rest (the quick tier).
SLOW_SECONDS = 5
SLOW_TESTS: set[str] = set()


def pytest_collection_modifyitems(config, items):
    matched = set()
    for item in items:
        for key in (item.nodeid, item.nodeid.split("[")[0], item.nodeid.split("::")[0]):
            if key in SLOW_TESTS:
                item.add_marker(pytest.mark.slow)
                matched.add(key)
    collected_files = {item.nodeid.split("::")[0] for item in items}
    stale = sorted(k for k in SLOW_TESTS - matched if k.split("::")[0] in collected_files)
    if stale:
        warnings.warn(pytest.PytestWarning(f"tests/conftest.py SLOW_TESTS names tests that do not exist: {stale}"),
                      stacklevel=2)


def pytest_configure(config):
    import datasets

    # Streamed passes that shuffle end with a 5 s sleep (an Arrow thread-shutdown workaround); not needed in tests.
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
