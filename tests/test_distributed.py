"""Schedules under tf.distribute.MirroredStrategy with 2 logical CPU devices (own process:
logical devices must be set before TensorFlow initializes them)."""

import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "mirrored_schedule.py"


def test_phase_adaptation_keeps_replicas_identical():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas identical: 16" in result.stdout
