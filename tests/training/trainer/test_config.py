"""Every flag is validated: the error names the flag, the bad value and the allowed range."""

from __future__ import annotations

from pathlib import Path

import pytest

from qvgen.cli import build_parser
from qvgen.family import PipelineGeometry
from training.cli import config_from_args
from training.trainer.config import Method, TrainConfig


def _config(*flags: str) -> TrainConfig:
    steps = [] if "--steps" in flags else ["--steps", "1000"]
    args = build_parser().parse_args(
        ["train", "--model", "m", "--out", "o", "--data", "d", *steps, *flags]
    )
    return config_from_args(args)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--w-bits", "9"], r"--w-bits must be an integer in \[2, 8\], got 9"),
        (["--a-bits", "1"], r"--a-bits must be an integer in \[2, 8\], got 1"),
        (["--batch-size", "0"], r"--batch-size must be an integer in \[1, 4096\], got 0"),
        (["--lr", "0"], r"--lr must lie in \(0.0, 1.0\], got 0.0"),
        (["--warmup", "1.5"], r"--warmup must lie in \[0.0, 0.99\], got 1.5"),
        (["--caption-dropout", "-0.1"], r"--caption-dropout must lie in \[0.0, 1.0\]"),
        (["--grad-clip", "0"], r"--grad-clip must lie in \(0.0"),
        (["--rank", "0"], r"--rank must be an integer in \[1, 4096\], got 0"),
        (
            ["--phase-steps", "200"],
            r"--phase-steps 200 × 6 rank-decay phases = 1200 steps > --steps 1000",
        ),
        (
            ["--method", "lsq", "--rank", "8"],
            r"--method lsq is QAT without Φ: --rank must be 0, got 8",
        ),
        (["--method", "rtn"], r"--method rtn trains nothing: drop --steps"),
        (["--steps", "5"], r"--steps 5 cannot hold the 6 rank-decay phases of --rank 32"),
    ],
)
def test_bad_flags_are_named_with_their_range(flags: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(*flags)


def test_defaults_are_the_papers_recipe() -> None:
    config = _config()
    assert (config.method, config.rank, config.w_bits, config.a_bits) == (Method.QVGEN, 32, 4, 4)
    assert (config.lr, config.lr_clip, config.beta1, config.beta2) == (3e-5, 1e-2, 0.9, 0.95)
    assert (config.weight_decay, config.warmup, config.grad_clip) == (1e-4, 0.1, 1.0)
    assert config.caption_dropout == 0.05
    # T derived from N: 6 phases (32 → 1) in 1000 steps, Φ gone by step 996.
    assert config.schedule().phase_steps == 166 and config.schedule().phi_free_step == 996
    assert _config("--method", "lsq").rank == 0


def test_config_round_trips_through_json(tmp_path: Path) -> None:
    config = _config("--w-bits", "3", "--a-bits", "3", "--parallel", "fsdp")
    config.save(tmp_path)
    assert TrainConfig.load(tmp_path) == config


def test_bucket_must_map_to_whole_tokens(tiny_wan_dir: Path) -> None:
    geometry = PipelineGeometry.read(tiny_wan_dir)
    geometry.check_bucket(9, 16, 32)
    with pytest.raises(ValueError, match=r"--height must be a multiple of 8 .* got 12"):
        geometry.check_bucket(9, 12, 16)
    with pytest.raises(ValueError, match=r"--frames must be 4·k \+ 1 .* got 8"):
        geometry.check_bucket(8, 16, 16)
