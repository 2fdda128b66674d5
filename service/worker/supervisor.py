"""Worker processes for ``qvgen serve all``: started together, restarted when one dies, stopped
together.

A worker that exits while the pool is not stopping (a crash, an OOM kill, a SIGKILL) is started
again with the same command; its running job comes back through the queue's reclaim. A worker
that keeps dying is restarted after a pause that doubles up to ``MAX_RESTART_PAUSE_S``, so a
broken model directory does not become a fork loop.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

POLL_S = 0.5
FIRST_RESTART_PAUSE_S, MAX_RESTART_PAUSE_S = 1.0, 30.0
# A worker that ran this long before dying counts as healthy: its next restart is immediate.
HEALTHY_RUN_S = 60.0


@dataclass
class _Slot:
    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    pause_s: float = 0.0
    restart_at: float | None = None
    restarts: int = field(default=0)


class WorkerPool:
    def __init__(self, commands: list[tuple[list[str], dict[str, str]]], exit_grace_s: float):
        self._slots = [_Slot(command=command, env=env) for command, env in commands]
        self._exit_grace_s = exit_grace_s
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-pool", daemon=True)

    def start(self) -> None:
        with self._lock:
            for slot in self._slots:
                self._spawn(slot)
        self._thread.start()

    @property
    def pids(self) -> list[int | None]:
        with self._lock:
            return [slot.process.pid if slot.process else None for slot in self._slots]

    @property
    def restarts(self) -> int:
        with self._lock:
            return sum(slot.restarts for slot in self._slots)

    def _spawn(self, slot: _Slot) -> None:
        slot.process = subprocess.Popen(slot.command, env=slot.env)
        slot.started_at = time.monotonic()
        slot.restart_at = None

    def _watch(self) -> None:
        while not self._stopping.wait(POLL_S):
            with self._lock:
                if self._stopping.is_set():
                    return
                for index, slot in enumerate(self._slots):
                    self._check(index, slot)

    def _check(self, index: int, slot: _Slot) -> None:
        now = time.monotonic()
        if slot.restart_at is not None:
            if now >= slot.restart_at:
                slot.restarts += 1
                self._spawn(slot)
            return
        process = slot.process
        if process is None or process.poll() is None:
            return
        ran_s = now - slot.started_at
        slot.pause_s = (
            0.0
            if ran_s >= HEALTHY_RUN_S
            else min(MAX_RESTART_PAUSE_S, max(FIRST_RESTART_PAUSE_S, slot.pause_s * 2))
        )
        logger.warning(
            "worker %d (pid %d) exited with %s after %.0f s; restarting in %.1f s",
            index,
            process.pid,
            process.returncode,
            ran_s,
            slot.pause_s,
        )
        slot.restart_at = now + slot.pause_s

    def stop(self) -> None:
        """SIGTERM every worker (each hands back its job), then SIGKILL what outlives the grace."""
        with self._lock:
            self._stopping.set()
            processes = [slot.process for slot in self._slots if slot.process is not None]
        if self._thread.is_alive():
            self._thread.join(timeout=POLL_S * 4)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._exit_grace_s
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("worker pid %d outlived the grace; killing it", process.pid)
                process.kill()
                process.wait()
