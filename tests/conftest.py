import os

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


def pytest_configure(config):
    import datasets

    # Streamed passes that shuffle end with a 5 s sleep (an Arrow thread-shutdown workaround); not needed in tests.
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
