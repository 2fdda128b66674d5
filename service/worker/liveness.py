"""The heartbeat thread: keeps the running job claimed and the worker visible as alive.

It runs beside the engine (which holds the main thread for a whole generation) and, every
``heartbeat_interval_s``: announces the worker (readiness), refreshes the pending entry of the
running job through the guarded ``HEARTBEAT`` script, and samples GPU memory. When the script
answers that the job is no longer ours, it sets ``lost`` so that the engine stops at its next
step. A Redis outage is logged and retried; the job keeps running (fencing protects the result
if a peer took it meanwhile).
"""

from __future__ import annotations

import logging
import threading

from redis.exceptions import RedisError

from service.metrics import WorkerMetrics
from service.queue.consumer import Claim, Consumer

logger = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        consumer: Consumer,
        interval_s: float,
        device: str,
        metrics: WorkerMetrics,
        metrics_port: int,
    ) -> None:
        self._consumer = consumer
        self._interval_s = interval_s
        self._device = device
        self._metrics = metrics
        self._metrics_port = metrics_port
        self._claim: Claim | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=self._interval_s * 4)

    def watch(self, claim: Claim | None) -> None:
        """Refresh ``claim`` from now on (None: no job running)."""
        with self._lock:
            self._claim = claim
            self.lost.clear()

    def beat(self) -> None:
        """One heartbeat, now (also called by the main thread right after a claim)."""
        with self._lock:
            claim = self._claim
        try:
            self._consumer.announce(self._device, self._metrics_port)
            if claim is not None and not self._consumer.heartbeat(claim):
                logger.warning(
                    "job %s attempt %d is no longer ours (deleted or claimed by a peer)",
                    claim.job.id,
                    claim.attempt,
                )
                self._metrics.fenced_writes.labels(self._consumer.model).inc()
                self.lost.set()
        except RedisError as error:
            logger.warning("heartbeat failed, Redis unreachable: %s", error)
        self._sample_gpu_memory()

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self.beat()

    def _sample_gpu_memory(self) -> None:
        if not self._device.startswith("cuda"):
            return
        import torch

        device = torch.device(self._device)
        label = str(device)
        self._metrics.gpu_memory_used.labels(label).set(torch.cuda.memory_allocated(device))
        self._metrics.gpu_memory_peak.labels(label).set(torch.cuda.max_memory_allocated(device))
        total = torch.cuda.get_device_properties(device).total_memory
        self._metrics.gpu_memory_total.labels(label).set(total)
