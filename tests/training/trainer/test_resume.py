"""A run killed mid-way and resumed logs exactly the losses of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.training.trainer.runs import read_log, tiny_config
from training.trainer.loop import LOG_FILE
from training.trainer.train import train

STEPS = 8


def _cli_args(model: Path, out: Path, data: Path, cache: Path) -> list[str]:
    """The CLI flags of ``tiny_config(..., steps=STEPS)``."""
    return [
        sys.executable, "-m", "qvgen.cli", "--log-level", "WARNING", "train",
        "--model", str(model), "--out", str(out), "--data", str(data), "--cache-dir", str(cache),
        "--rank", "4", "--steps", str(STEPS), "--phase-steps", "2", "--frames", "9",
        "--height", "16", "--width", "16", "--batch-size", "1", "--lr", "0.001",
        "--checkpoint-every", "2", "--clip-groups", "10", "--device", "cpu",
    ]  # fmt: skip


def _log_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_killed_and_resumed_run_repeats_the_uninterrupted_losses(
    tiny_wan_dir: Path, video_folder: Path, cache_root: Path, tmp_path: Path
) -> None:
    reference = tiny_config(
        tiny_wan_dir, tmp_path / "reference", video_folder, cache_root, steps=STEPS
    )
    train(reference, device="cpu")
    expected = read_log(tmp_path / "reference")

    out = tmp_path / "interrupted"
    args = _cli_args(tiny_wan_dir, out, video_folder, cache_root)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    # Kill between the checkpoints of steps 4 and 6: step 4 ran and is logged, so the resumed
    # run must rewrite the log from its checkpoint on.
    while _log_lines(out / LOG_FILE) < 5 and process.poll() is None:
        assert time.monotonic() < deadline, "the training subprocess made no progress"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    assert _log_lines(out / LOG_FILE) < STEPS

    resumed = subprocess.run([*args, "--resume"], env=env, capture_output=True, check=False)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    got = read_log(out)
    assert [r["step"] for r in got] == list(range(STEPS))
    for mine, theirs in zip(got, expected, strict=True):
        for key in ("loss", "grad_norm", "phi_rank", "lr", "lr_clip"):
            assert mine[key] == theirs[key], (mine["step"], key, mine[key], theirs[key])
