"""``qvgen train`` under torchrun (2 CPU processes, gloo) matches one process at the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.training.trainer.runs import read_log, tiny_config
from training.trainer.config import Parallelism
from training.trainer.train import train

STEPS = 4
# Two processes average gradients of one sample each where one process averages over two in a
# batch: the same sums in another order, so agreement is to float32 rounding, not bit for bit.
REL_TOL = 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def single_process_log(
    tiny_wan_dir: Path,
    video_folder: Path,
    cache_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> list[dict[str, Any]]:
    """The one-process run at the global batch both parallel runs must match."""
    out = tmp_path_factory.mktemp("single") / "run"
    single = tiny_config(
        tiny_wan_dir, out, video_folder, cache_root, steps=STEPS, phase_steps=1, batch_size=2
    )
    train(single, device="cpu")
    return read_log(out)


@pytest.mark.parametrize("parallel", [Parallelism.DDP, Parallelism.FSDP])
def test_two_processes_match_one_at_the_same_global_batch(
    parallel: Parallelism,
    single_process_log: list[dict[str, Any]],
    tiny_wan_dir: Path,
    video_folder: Path,
    cache_root: Path,
    tmp_path: Path,
) -> None:
    expected = single_process_log

    out = tmp_path / "two"
    args = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "qvgen.cli", "--log-level", "WARNING", "train",
        "--model", str(tiny_wan_dir), "--out", str(out), "--data", str(video_folder),
        "--cache-dir", str(cache_root), "--rank", "4", "--steps", str(STEPS),
        "--phase-steps", "1", "--frames", "9", "--height", "16", "--width", "16",
        "--batch-size", "1", "--lr", "0.001", "--checkpoint-every", "2", "--clip-groups", "10",
        "--parallel", parallel.value, "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    result = subprocess.run(args, env=env, capture_output=True, check=False, timeout=600)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    got = read_log(out)
    assert [r["step"] for r in got] == list(range(STEPS))
    for mine, theirs in zip(got, expected, strict=True):
        assert mine["phi_rank"] == theirs["phi_rank"]
        for key in ("loss", "grad_norm"):
            rel = abs(mine[key] - theirs[key]) / abs(theirs[key])
            assert rel <= REL_TOL, (parallel, mine["step"], key, mine[key], theirs[key])

    # Rewind the run to its step-2 checkpoint (as if killed after it) and resume on two
    # processes: the same processes in the same order, so the losses repeat exactly.
    (out / "checkpoints" / "latest").write_text("step-00000002\n")
    resumed = subprocess.run(
        [*args[:7], "--master_port", str(_free_port()), *args[9:], "--resume"],
        env=env, capture_output=True, check=False, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    again = read_log(out)
    assert [r["step"] for r in again] == list(range(STEPS))
    for mine, theirs in zip(again, got, strict=True):
        assert (mine["loss"], mine["grad_norm"]) == (theirs["loss"], theirs["grad_norm"]), mine
