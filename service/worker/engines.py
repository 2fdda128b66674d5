"""Which engine a worker runs: the diffusers pipeline of a model directory, or the no-op one."""

from __future__ import annotations

import enum
import logging
from pathlib import Path

from service.engine.types import Engine
from service.worker.noop_engine import NoopEngine

logger = logging.getLogger(__name__)


class EngineKind(enum.StrEnum):
    DIFFUSERS = "diffusers"  # --model is a diffusers pipeline directory
    NOOP = "noop"  # --model is only a name; frames are synthetic (benchmarks, queue tests)


def model_id_for(kind: EngineKind, model: str, model_id: str | None) -> str:
    """The id clients pass as ``model``: explicit, else the directory name (or the name)."""
    if model_id:
        return model_id
    return Path(model).name if kind is EngineKind.DIFFUSERS else model


def build_engine(
    kind: EngineKind, model: str, device: str, model_id: str, step_delay_s: float = 0.0
) -> Engine:
    if kind is EngineKind.NOOP:
        return NoopEngine(model_id, step_delay_s=step_delay_s)
    # Imported here: the diffusers stack takes seconds to import and the no-op worker needs none.
    from service.engine.diffusers_engine import DiffusersEngine

    logger.info("loading %s on %s as model %r", model, device, model_id)
    return DiffusersEngine.from_pretrained(model, device=device, model_id=model_id)
