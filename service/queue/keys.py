"""Every Redis key and name the queue uses, in one place.

Layout (``P`` is ``ServiceSettings.key_prefix``):

- ``P:job:<id>``             hash: the job record (``records.JobField`` names its fields)
- ``P:jobs``                 sorted set: job ids scored by creation time in ms (listing order)
- ``P:jobs:<owner>``         sorted set: the same, for the jobs of one API key (its digest)
- ``P:expiring``             sorted set: '<id> <owner>' of finished jobs, scored by the time
                             their retention ends (then the janitor drops them from listings)
- ``P:stream:<model>``       stream: one entry per attempt-able job, consumer group ``GROUP``
- ``P:unfinished:<model>``   hash: owner → how many of its jobs of the model are queued or
                             running (the per-key job quota; changed only by the scripts that
                             create a job or end it, an owner's field dropped at zero)
- ``P:idem:<key>``           string: job id submitted under an ``Idempotency-Key``
- ``P:abandoned:<id>``       string (expires): a submission the API answered as not made
- ``P:deadletter``           stream: one record per job that ran out of deliveries
- ``P:workers:<model>``      sorted set: worker ids scored by their last heartbeat (unix s)
- ``P:worker:<id>``          string (JSON, expires): a worker's model, device, pid, metrics port
- ``P:events:<id>``          stream (expires with the job): one entry per change of the job
                             (start, step, end, hand-back, deletion), read by ``/events``
- ``P:webhook:<event id>``   hash: one webhook event to deliver (``service.webhooks.outbox``)
- ``P:webhooks:due``         sorted set: event ids scored by their next delivery attempt (ms)
- ``P:webhooks:wake``        list: a token per new event, so that a deliverer blocks, not polls
- ``P:webhooks:dead``        stream: events whose deliveries all failed
- ``P:webhook-key:<owner>``  hash: one API key's webhook settings: its secret's generation and
                             its allowed hosts (``service.webhooks.tenants``)
- ``P:rules:<model>``        string (JSON): the model's request rules, as its last started worker
                             published them (``service.engine.rules.EngineRules.to_dict``)
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "workers"
# The stream entry's only field: the job id (everything else lives in the job hash).
ENTRY_JOB_FIELD = "job"
DEADLETTER_MAXLEN = 10_000
# A job's event stream keeps its last entries only: a reader wants the latest state (each SSE
# event carries the whole video object), never the full history.
EVENTS_MAXLEN = 64


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def expiring(self) -> str:
        return f"{self.prefix}:expiring"

    @property
    def owner_jobs_prefix(self) -> str:
        return f"{self.prefix}:jobs:"

    def owner_jobs(self, owner: str) -> str:
        """The listing of ``owner``'s jobs; every job's without an owner (no API keys)."""
        return self.owner_jobs_prefix + owner if owner else self.jobs

    def stream(self, model: str) -> str:
        return f"{self.prefix}:stream:{model}"

    def unfinished(self, model: str) -> str:
        return f"{self.prefix}:unfinished:{model}"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    def abandoned(self, job_id: str) -> str:
        return f"{self.prefix}:abandoned:{job_id}"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}:deadletter"

    def workers(self, model: str) -> str:
        return f"{self.prefix}:workers:{model}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def rules(self, model: str) -> str:
        return f"{self.prefix}:rules:{model}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    def webhook(self, event_id: str) -> str:
        return f"{self.prefix}:webhook:{event_id}"

    @property
    def webhook_key_prefix(self) -> str:
        return f"{self.prefix}:webhook-key:"

    def webhook_key(self, owner: str) -> str:
        return self.webhook_key_prefix + owner

    @property
    def webhooks_due(self) -> str:
        return f"{self.prefix}:webhooks:due"

    @property
    def webhooks_wake(self) -> str:
        return f"{self.prefix}:webhooks:wake"

    @property
    def webhooks_dead(self) -> str:
        return f"{self.prefix}:webhooks:dead"
