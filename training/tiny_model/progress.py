"""The recipe's JSONL log and learning-rate schedule, shared by both stages."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TextIO

LOG_FILE = "recipe_log.jsonl"


class JsonlLog:
    """Append one JSON object per line: {"stage": …, "step": …, loss terms…}."""

    def __init__(self, path: Path) -> None:
        self._handle: TextIO = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, sort_keys=True) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear from 0 to 1 over ``warmup`` steps, then cosine to 0.1."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class StepBudget:
    """A stage's step count, optionally cut to fit ``seconds`` of wall time.

    After ``probe`` steps (inside the warm-up, whose learning rates do not depend on the total)
    the mean step time fixes ``total = min(steps, ⌊seconds / step time⌋)`` once; the schedule
    then decays over that total. The chosen total is logged, and rerunning with ``--*-steps``
    set to it repeats the run without the clock.
    """

    def __init__(self, steps: int, seconds: float, probe: int = 20) -> None:
        self.total = steps
        self.seconds = seconds
        self.probe = probe
        self._started: float | None = None

    def observe(self, step: int, now: float) -> bool:
        """Call before step ``step``; True when the total was just cut."""
        if step == 1:  # step 0 pays for kernel selection and allocation: not representative
            self._started = now
        if step != self.probe + 1 or self._started is None:
            return False
        per_step = (now - self._started) / self.probe
        affordable = max(self.probe + 1, int(self.seconds / per_step))
        if affordable >= self.total:
            return False
        self.total = affordable
        return True
