"""``train(config)``: one run from a config to its final checkpoint.

The run directory gets ``config.json`` first. ``resume=True`` requires it and refuses a config
that differs; ``resume=False`` refuses a directory that already holds a run, rather than
mixing two runs' logs and checkpoints. ``rtn`` trains nothing: the min-max quantized student
is written as the checkpoint of step 0, ready for ``qvgen export``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from training.trainer import distributed as D
from training.trainer.config import CONFIG_FILE, TrainConfig
from training.trainer.loop import prepare, run_loop
from training.trainer.models import freeze, load_transformer
from training.trainer.state import rebuild_student, write_checkpoint

logger = logging.getLogger(__name__)


def _prepare_run_dir(config: TrainConfig, resume: bool, ctx: D.DistContext) -> None:
    out = Path(config.out)
    existing = out / CONFIG_FILE
    if resume:
        saved = TrainConfig.load(out)
        differences = saved.differences(config)
        if differences:
            raise ValueError(
                f"--resume: the flags differ from {existing}: {'; '.join(differences)}"
            )
        return
    if existing.exists():
        raise ValueError(f"{out} already holds a run ({existing}); pass --resume or a new --out")
    D.barrier(ctx)  # every process has checked before the main one writes
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out)
    D.barrier(ctx)


def _post_training_quantization(config: TrainConfig) -> Path:
    teacher = freeze(load_transformer(config.model))
    student = rebuild_student(teacher, config, None, 0)
    return write_checkpoint(Path(config.out), 0, student.state_dict(), {}, config)


def train(config: TrainConfig, resume: bool = False, device: str | None = None) -> Path:
    """Run ``config``; returns the run directory."""
    ctx = D.init_distributed(device)
    _prepare_run_dir(config, resume, ctx)
    if not config.trains:
        if ctx.is_main:
            checkpoint = _post_training_quantization(config)
            logger.info("rtn: wrote %s (no training)", checkpoint)
        D.barrier(ctx)
        return Path(config.out)
    run, first_step = prepare(config, ctx, resume)
    run_loop(run, first_step)
    return Path(config.out)
