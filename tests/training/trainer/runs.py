"""Tiny training configurations and log reading for the trainer tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.trainer.config import TrainConfig
from training.trainer.loop import LOG_FILE


def tiny_config(model: Path, out: Path, data: Path, cache: Path, **overrides: Any) -> TrainConfig:
    """9×16×16 clips, batch 1, Φ rank 4 (phases 4, 2, 1), lr raised for a tiny model."""
    values: dict[str, Any] = {
        "model": str(model),
        "out": str(out),
        "data": str(data),
        "cache_dir": str(cache),
        "rank": 4,
        "steps": 6,
        "phase_steps": 2,
        "frames": 9,
        "height": 16,
        "width": 16,
        "batch_size": 1,
        "lr": 1e-3,
        "checkpoint_every": 2,
        "clip_groups": 10,
    }
    values.update(overrides)
    return TrainConfig(**values)


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / LOG_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]
