"""`accelerate launch --config_file configs/accelerate_default.yaml ...` runs one fp32 process without warnings."""

import os
import subprocess
import sys
from pathlib import Path

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "accelerate_default.yaml"
WARNING = "values were not passed to `accelerate launch`"


def launch(tmp_path, *config_args):
    script = tmp_path / "probe.py"
    script.write_text("from accelerate import Accelerator\n"
                      "a = Accelerator()\n"
                      "print('processes', a.num_processes, 'precision', a.mixed_precision)\n")
    # A fresh HOME: no `accelerate config` default file of this machine may fill in the values.
    env = {**os.environ, "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("ACCELERATE_CONFIG_FILE", None)
    command = [sys.executable, "-m", "accelerate.commands.launch", *config_args, str(script)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_default_config_launches_without_warning(tmp_path):
    result = launch(tmp_path, "--config_file", str(CONFIG))
    assert result.returncode == 0, result.stderr
    assert "processes 1 precision no" in result.stdout
    assert WARNING not in result.stderr + result.stdout


def test_without_a_config_accelerate_warns(tmp_path):
    """The control: the warning this config file avoids is real."""
    result = launch(tmp_path)
    assert result.returncode == 0, result.stderr
    assert WARNING in result.stderr + result.stdout
