"""Server-sent events: the wire format, and the caps on streams one API process holds open (in
all, and per API key)."""

from __future__ import annotations

from collections import Counter


def sse_event(event: str, data: str, event_id: str | None = None) -> bytes:
    """One event in the ``text/event-stream`` format (``data`` is one line of JSON)."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {data}\n\n".encode()


# A comment line: keeps proxies from closing an idle stream, and finds a client that left.
KEEP_ALIVE = b": keep-alive\n\n"


class Slot:
    """One taken place among the ``StreamSlots``; ``release`` gives it back, once."""

    def __init__(self, slots: StreamSlots, owner: str) -> None:
        self._slots: StreamSlots | None = slots
        self._owner = owner

    def release(self) -> None:
        if self._slots is not None:
            self._slots.give_back(self._owner)
            self._slots = None


class StreamSlots:
    """At most ``limit`` streams at once, and at most ``per_key`` of them for one owner (an API
    key; "" without keys, where the per-key cap does not apply). The API process's routes run
    on one event loop, so counters are enough (no lock)."""

    def __init__(self, limit: int, per_key: int) -> None:
        self.limit = limit
        self.per_key = per_key
        self.open = 0
        self._by_owner: Counter[str] = Counter()

    def full(self) -> bool:
        return self.open >= self.limit

    def key_full(self, owner: str) -> bool:
        return bool(owner) and self._by_owner[owner] >= self.per_key

    def take(self, owner: str) -> Slot | None:
        """A place, or None when all ``limit`` are taken or ``owner`` holds ``per_key``."""
        if self.full() or self.key_full(owner):
            return None
        self.open += 1
        self._by_owner[owner] += 1
        return Slot(self, owner)

    def give_back(self, owner: str) -> None:
        self.open -= 1
        self._by_owner[owner] -= 1
        if not self._by_owner[owner]:
            del self._by_owner[owner]
