"""A worker loop in a thread of the test process (the real ``Worker``, its own Redis client)."""

from __future__ import annotations

import threading

from service.worker.runner import Worker


class Running:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=worker.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.worker.request_stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
