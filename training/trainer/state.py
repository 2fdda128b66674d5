"""Checkpoints of a run, and rebuilding the student a checkpoint describes.

Layout under the run directory::

    config.json                   the run's TrainConfig
    train_log.jsonl               one JSON record per step
    checkpoints/step-00000400/    ``steps_done`` = 400: ready to run step 400
        config.json               copy of the run's config (export needs only this folder)
        student.safetensors       the student's full state dict (float32)
        trainer.pt                optimizer (+ its group names), LR schedule, steps done, RNG
                                  (FSDP: trainer-rank<r>.pt, each process's optimizer shard)
    checkpoints/latest            name of the newest complete checkpoint

A checkpoint folder is written under a temporary name and renamed when complete, then
``latest`` is replaced, so an interrupted save leaves the previous checkpoint in charge.

The student is saved *after* the rank-decay sync for ``steps_done``, so its Φ has the rank of
``schedule.rank_at(steps_done)``; ``rebuild_student`` builds that structure and loads the
tensors with a strict key check. Φ's γ is not stored: it is a function of the step, set by
``sync_rank_decay``. Data order and per-sample randomness are functions of the step
(``data.order``), so the step is all the sampler needs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from training.quant.rank_decay import sync_rank_decay
from training.trainer.config import CONFIG_FILE, TrainConfig
from training.trainer.models import build_student

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
STUDENT_FILE = "student.safetensors"
TRAINER_FILE = "trainer.pt"


def checkpoint_name(steps_done: int) -> str:
    return f"step-{steps_done:08d}"


def trainer_file(rank: int | None) -> str:
    return TRAINER_FILE if rank is None else f"trainer-rank{rank}.pt"


def steps_done_of(checkpoint: Path) -> int:
    name = checkpoint.name
    if not name.startswith("step-"):
        raise ValueError(f"{checkpoint} is not a checkpoint folder (step-NNNNNNNN)")
    return int(name.removeprefix("step-"))


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / CHECKPOINTS_DIR / LATEST_FILE
    if not pointer.is_file():
        return None
    return run_dir / CHECKPOINTS_DIR / pointer.read_text().strip()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its latest checkpoint)."""
    p = Path(path)
    if (p / STUDENT_FILE).is_file():
        return p
    latest = latest_checkpoint(p)
    if latest is None or not (latest / STUDENT_FILE).is_file():
        raise FileNotFoundError(
            f"{p} holds neither {STUDENT_FILE} nor {CHECKPOINTS_DIR}/{LATEST_FILE}: "
            "not a checkpoint or run folder"
        )
    return latest


def write_checkpoint(
    run_dir: Path,
    steps_done: int,
    student_state: dict[str, torch.Tensor],
    trainer_states: dict[str, dict[str, Any]],
    config: TrainConfig,
    keep: int = 2,
) -> Path:
    """Write one checkpoint (call on the main process, after the other ranks' shards exist).

    ``trainer_states`` maps file name → state; shard files other processes wrote into the
    temporary folder (``staging_dir``) are kept.
    """
    root = run_dir / CHECKPOINTS_DIR
    final = root / checkpoint_name(steps_done)
    staging = staging_dir(run_dir, steps_done)
    staging.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in student_state.items()},
        str(staging / STUDENT_FILE),
    )
    for name, state in trainer_states.items():
        torch.save(state, staging / name)
    shutil.copyfile(run_dir / CONFIG_FILE, staging / CONFIG_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    tmp = root / (LATEST_FILE + ".tmp")
    tmp.write_text(final.name + "\n")
    os.replace(tmp, root / LATEST_FILE)
    _prune(root, keep)
    logger.info("checkpoint %s", final)
    return final


def staging_dir(run_dir: Path, steps_done: int) -> Path:
    return run_dir / CHECKPOINTS_DIR / (checkpoint_name(steps_done) + ".partial")


def _prune(root: Path, keep: int) -> None:
    complete = sorted(p for p in root.glob("step-*") if p.is_dir() and p.suffix != ".partial")
    for old in complete[:-keep]:
        shutil.rmtree(old)


def load_trainer_state(checkpoint: Path, rank: int | None) -> dict[str, Any]:
    path = checkpoint / trainer_file(rank)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the checkpoint holds no optimizer state")
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def rebuild_student(
    teacher: nn.Module, config: TrainConfig, checkpoint: Path | None, steps_done: int
) -> nn.Module:
    """The student at ``steps_done``: built, synced to the step, then (if given) loaded.

    Building repeats the weight quantizers' initial search only to be overwritten, so a
    one-candidate search builds the skeleton when a checkpoint follows.
    """
    scheme = config.scheme()
    if checkpoint is not None:
        scheme = dataclasses.replace(scheme, mse_candidates=1)
    schedule = config.schedule()
    student = build_student(
        teacher,
        scheme,
        schedule.rank_at(steps_done),
        config.layers.policy(),
        trainable=config.trains,
    )
    sync_rank_decay(student, schedule, steps_done)
    if checkpoint is not None:
        state = load_file(str(checkpoint / STUDENT_FILE))
        result = student.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{checkpoint / STUDENT_FILE} does not match the student of step {steps_done}: "
                f"missing {result.missing_keys}, unexpected {result.unexpected_keys}"
            )
    return student


def truncate_log(log_path: Path, steps_done: int) -> None:
    """Keep the records of steps < ``steps_done``: the resumed run rewrites the rest."""
    if not log_path.is_file():
        return
    kept = [
        line
        for line in log_path.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] < steps_done
    ]
    log_path.write_text("".join(line + "\n" for line in kept))
