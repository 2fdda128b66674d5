"""Server-sent events: the wire format, and the cap on streams one API process holds open."""

from __future__ import annotations


def sse_event(event: str, data: str, event_id: str | None = None) -> bytes:
    """One event in the ``text/event-stream`` format (``data`` is one line of JSON)."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {data}\n\n".encode()


# A comment line: keeps proxies from closing an idle stream, and finds a client that left.
KEEP_ALIVE = b": keep-alive\n\n"


class Slot:
    """One taken place among the ``StreamSlots``; ``release`` gives it back, once."""

    def __init__(self, slots: StreamSlots) -> None:
        self._slots: StreamSlots | None = slots

    def release(self) -> None:
        if self._slots is not None:
            self._slots.open -= 1
            self._slots = None


class StreamSlots:
    """At most ``limit`` streams at once. The API process's routes run on one event loop, so a
    counter is enough (no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> Slot | None:
        """A place, or None when all ``limit`` are taken."""
        if self.open >= self.limit:
            return None
        self.open += 1
        return Slot(self)
