"""The API's side of a job's event stream (asyncio): wait for the job's next change.

The queue's scripts append an entry to ``P:events:<id>`` at every change a reader may wait for
(``service.queue.scripts``: a start, each step, the end, a hand-back, a deletion). A reader
blocks on it with ``XREAD BLOCK`` from the last entry it has seen: it wakes at the change, or
after the timeout, and never misses an entry written after the id it started from. Each waiting
reader holds one connection of its own client's pool while it blocks; the pool's size bounds
the readers (``ServiceSettings.max_event_streams``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from redis import asyncio as aioredis

from service.queue.keys import Keys

# An XADD id: "<ms>-<seq>"; "0-0" is before every entry.
START_OF_STREAM = "0-0"
_STREAM_ID_RE = re.compile(r"^\d{1,20}-\d{1,20}$")
# The entry a deletion writes (``scripts.DELETE``); the other entries name the job's status.
DELETED = "deleted"


def is_stream_id(value: str) -> bool:
    return _STREAM_ID_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class JobEvent:
    id: str  # the entry's stream id: what ``Last-Event-ID`` resumes from
    status: str  # the job's status it announces, or ``DELETED``


class JobEvents:
    """Event streams under ``keys``, read through ``client`` (its own pool: see the module)."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self._redis = client
        self.keys = keys

    async def last_id(self, job_id: str) -> str:
        """The id of the job's latest entry (``START_OF_STREAM`` when it has none): read before
        the job's record, so that any change after that read is an entry after this id."""
        last: Any = await self._redis.xrevrange(self.keys.events(job_id), count=1)
        return str(last[0][0]) if last else START_OF_STREAM

    async def after(self, job_id: str, last_id: str, block_ms: int) -> list[JobEvent]:
        """The job's entries after ``last_id``, waiting up to ``block_ms`` for the first."""
        reply: Any = await self._redis.xread(
            {self.keys.events(job_id): last_id}, count=None, block=block_ms
        )
        if not reply:
            return []
        return [
            JobEvent(id=str(entry_id), status=fields.get("status", ""))
            for entry_id, fields in reply[0][1]
        ]

    async def aclose(self) -> None:
        await self._redis.aclose()
