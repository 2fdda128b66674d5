"""``qvgen export``: a training checkpoint → a complete pipeline directory with a packed transformer.

The output holds every component of the training run's base pipeline (``model_index.json``,
scheduler, VAE, text encoder, tokenizer) copied unchanged, and ``transformer/`` in the packed
format v1 (``docs/checkpoint-format.md``): 4-bit (or 3-bit) weight codes, scales, zero points and
clip tables of the trained student. It is written under a temporary name and renamed when
complete, so a failed export leaves nothing that looks loadable.

Export refuses a checkpoint whose Φ still has rank > 0 (the packed format has no Φ, and dropping
it would change the model): train until ``schedule.phi_free_step``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from training.quant.export import export_packed
from training.trainer.config import TrainConfig
from training.trainer.models import freeze, load_transformer
from training.trainer.state import rebuild_student, resolve_checkpoint, steps_done_of

logger = logging.getLogger(__name__)

TRANSFORMER_DIR = "transformer"


def _copy_components(model_dir: Path, staging: Path) -> None:
    for entry in sorted(model_dir.iterdir()):
        if entry.name == TRANSFORMER_DIR or entry.name.startswith("."):
            continue
        target = staging / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target)
        else:
            shutil.copy2(entry, target)


def export_pipeline(checkpoint: str | Path, out: str | Path, device: str = "cpu") -> Path:
    """Write the pipeline of ``checkpoint`` (a checkpoint or run folder) to ``out``."""
    ckpt = resolve_checkpoint(checkpoint)
    config = TrainConfig.load(ckpt)
    steps_done = steps_done_of(ckpt)
    schedule = config.schedule()
    if schedule.rank_at(steps_done) > 0:
        raise ValueError(
            f"{ckpt}: Φ still has rank {schedule.rank_at(steps_done)} after {steps_done} steps; "
            f"it is gone from step {schedule.phi_free_step} on — export a later checkpoint"
        )
    destination = Path(out)
    if destination.exists() and any(destination.iterdir()):
        raise ValueError(f"--out {destination} exists and is not empty")
    model_dir = Path(config.model)
    teacher = freeze(load_transformer(model_dir)).to(torch.device(device))
    student = rebuild_student(teacher, config, ckpt, steps_done)
    staging = destination.with_name(destination.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        _copy_components(model_dir, staging)
        export_packed(student, staging / TRANSFORMER_DIR)
        if destination.exists():
            destination.rmdir()
        os.replace(staging, destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info(
        "exported %s (%s, %d steps) to %s", ckpt, config.scheme().label, steps_done, destination
    )
    return destination
