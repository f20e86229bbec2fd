import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # train_xpl.py lives at the repository root

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory):
    """A tiny generated benchmark (all four splits), shared by the trainer tests."""
    from xpl_hf.data.synthetic import generate_benchmark

    out = tmp_path_factory.mktemp("tiny-benchmark")
    generate_benchmark(str(out), num_labeled=16, num_unlabeled=32, num_validation=8, num_test=8, image_size=64,
                       seed=0, progress=False, num_workers=0)
    return str(out)


def pytest_configure(config):
    import datasets

    # Streamed passes that shuffle end with a 5 s sleep (an Arrow thread-shutdown workaround); not needed in tests.
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
