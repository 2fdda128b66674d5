"""The recipe's JSONL log, learning-rate schedule and clocks, shared by both stages."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, TextIO

logger = logging.getLogger(__name__)

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
    """A stage's step count, cut to fit ``seconds`` of wall time, and a deadline that holds.

    Estimate: after ``probe`` steps (inside the warm-up, whose learning rates do not depend on the
    total) the mean step time t fixes ``total = min(steps, ⌊seconds / (probe_cost · t)⌋)`` once;
    the schedule then decays over that total. ``probe_cost`` is the mean cost of a step over
    the whole stage relative to a probed one (the VAE's whole-clip steps cost more than its
    probed short ones). The chosen total is logged, and rerunning with ``--*-steps`` set to it
    repeats the run without the clock.

    Deadline: ``expired(now)`` turns True once ``seconds`` have passed since step 0 began, and
    the stage stops there. The estimate alone is not a bound: steps can slow down after the probe
    (longer clips, a shared GPU), and one GPU run of the recipe outran its command's time limit
    that way and lost everything, pipeline included.
    """

    def __init__(
        self, steps: int, seconds: float, probe: int = 20, probe_cost: float = 1.0
    ) -> None:
        if probe < 1 or probe_cost <= 0:
            raise ValueError(f"probe must be ≥ 1 and probe_cost > 0, got {probe}, {probe_cost}")
        self.total = steps
        self.seconds = seconds
        self.probe = probe
        self.probe_cost = probe_cost
        self._began: float | None = None
        self._started: float | None = None

    def observe(self, step: int, now: float) -> bool:
        """Call before step ``step``; True when the total was just cut."""
        if step == 0:
            self._began = now
        if step == 1:  # step 0 pays for kernel selection and allocation: not representative
            self._started = now
        if step != self.probe + 1 or self._started is None:
            return False
        per_step = self.probe_cost * (now - self._started) / self.probe
        affordable = max(self.probe + 1, int(self.seconds / per_step))
        if affordable >= self.total:
            return False
        self.total = affordable
        return True

    def elapsed(self, now: float) -> float:
        """Seconds since step 0 began (0 before it)."""
        return 0.0 if self._began is None else now - self._began

    def expired(self, now: float) -> bool:
        """True once the stage has spent its ``seconds``: stop before the next step."""
        return self.elapsed(now) >= self.seconds


class PieceDeadline:
    """The wall time of one piece of a stage split over commands (``--piece-seconds``).

    Unlike ``StepBudget`` it never changes the plan: the piece stops when its ``seconds`` have
    passed since ``start`` (its first step), and a later command resumes where it stopped.
    ``seconds`` None: no limit.
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._began: float | None = None

    def start(self, now: float) -> None:
        self._began = now

    def elapsed(self, now: float) -> float:
        """Seconds since ``start`` (0 before it)."""
        return 0.0 if self._began is None else now - self._began

    def expired(self, now: float) -> bool:
        return self.seconds is not None and self.elapsed(now) >= self.seconds


def stop_at_deadline(budget: StepBudget, stage: str, step: int, now: float, log: JsonlLog) -> bool:
    """True when ``budget`` has expired before ``step``; says so in the log and the JSONL log."""
    if not budget.expired(now):
        return False
    elapsed = budget.elapsed(now)
    logger.warning(
        "%s: deadline of %.0f s reached after %d of %d steps",
        stage,
        budget.seconds,
        step,
        budget.total,
    )
    log.write({"stage": stage, "stopped_at_deadline": step, "elapsed": elapsed})
    return True
