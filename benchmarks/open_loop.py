"""An open-loop HTTP load: requests sent at a fixed arrival rate, whatever the server does.

Request ``i`` is due at ``start + i / rate`` and is sent then, on its own task, without waiting
for earlier answers (a closed loop would slow down with the server and hide its queueing). Its
latency runs from that due time to the end of its answer, so time spent waiting in the client
(for a free connection, or for the event loop of a busy client) counts too: coordinated
omission cannot hide a stall.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from benchmarks.http_client import Answer, HttpError

# One request: given its index, send it and return the answer.
Send = Callable[[int], Awaitable[Answer]]


@dataclass
class OpenLoopResult:
    """What one run of ``open_loop`` measured: latencies in seconds from each due time,
    outcomes by HTTP status (or exception name), and the time from the first due time to the
    last answer."""

    rate: float
    latencies_s: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    @property
    def sent(self) -> int:
        return len(self.latencies_s)

    @property
    def ok(self) -> int:
        return sum(n for outcome, n in self.outcomes.items() if outcome.startswith("2"))

    @property
    def errors(self) -> dict[str, int]:
        return {k: n for k, n in sorted(self.outcomes.items()) if not k.startswith("2")}

    @property
    def achieved_rps(self) -> float:
        """Successful answers per second over the run."""
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """The nearest-rank ``q``-quantile of the latencies (q = 1: the maximum), in ms."""
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        rank = min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))
        return 1000 * ordered[rank]


async def open_loop(
    send: Send,
    rate: float,
    count: int,
    on_answer: Callable[[Answer], None] | None = None,
) -> OpenLoopResult:
    """Sends ``count`` requests at ``rate`` per second with ``send``; ``on_answer`` sees every
    2xx answer (the submit phase keeps the ids)."""
    result = OpenLoopResult(rate=rate)
    start = time.perf_counter()
    last_answer = start

    async def one(index: int, due: float) -> None:
        nonlocal last_answer
        try:
            answer = await send(index)
            outcome = str(answer.status)
            if on_answer is not None and answer.ok:
                on_answer(answer)
        except HttpError as error:
            outcome = type(error.__cause__ or error).__name__
        now = time.perf_counter()
        result.latencies_s.append(now - due)
        result.outcomes[outcome] += 1
        last_answer = max(last_answer, now)

    tasks = []
    for index in range(count):
        due = start + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, due)))
    await asyncio.gather(*tasks)
    result.elapsed_s = last_answer - start
    return result
