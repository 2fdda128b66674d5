"""Every Redis key and name the queue uses, in one place.

Layout (``P`` is ``ServiceSettings.key_prefix``):

- ``P:job:<id>``             hash: the job record (``records.JobField`` names its fields)
- ``P:jobs``                 sorted set: job ids scored by creation time in ms (listing order)
- ``P:jobs:<owner>``         sorted set: the same, for the jobs of one API key (its digest)
- ``P:stream:<model>``       stream: one entry per attempt-able job, consumer group ``GROUP``
- ``P:idem:<key>``           string: job id submitted under an ``Idempotency-Key``
- ``P:deadletter``           stream: one record per job that ran out of deliveries
- ``P:workers:<model>``      sorted set: worker ids scored by their last heartbeat (unix s)
- ``P:worker:<id>``          string (JSON, expires): a worker's model, device, pid, metrics port
- ``P:rules:<model>``        string (JSON): the model's request rules, as its last started worker
                             published them (``service.engine.rules.EngineRules.to_dict``)
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "workers"
# The stream entry's only field: the job id (everything else lives in the job hash).
ENTRY_JOB_FIELD = "job"
DEADLETTER_MAXLEN = 10_000


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    def owner_jobs(self, owner: str) -> str:
        """The listing of ``owner``'s jobs; every job's without an owner (no API keys)."""
        return f"{self.prefix}:jobs:{owner}" if owner else self.jobs

    def stream(self, model: str) -> str:
        return f"{self.prefix}:stream:{model}"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}:deadletter"

    def workers(self, model: str) -> str:
        return f"{self.prefix}:workers:{model}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def rules(self, model: str) -> str:
        return f"{self.prefix}:rules:{model}"
