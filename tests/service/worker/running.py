"""A worker loop in a thread of the test process (the real ``Worker``, its own Redis client)."""

from __future__ import annotations

import threading

from service.worker.runner import Worker

# Deadline of a wait on the worker's state: generous for a loaded machine; a wait returns as soon
# as its condition holds.
WAIT_S = 60


class Running:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=worker.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.worker.request_stop()
        self.thread.join(timeout=WAIT_S)
        assert not self.thread.is_alive()

    def sample(self, name: str) -> float:
        """A series of this worker's metrics (model "tiny"), 0 when it has none yet."""
        value = self.worker.metrics.registry.get_sample_value(name, {"model": "tiny"})
        return value or 0.0
