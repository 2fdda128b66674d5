"""The floor under the API's CPU per request: a bare ASGI app answering a constant JSON object
under uvicorn, loaded like ``qvgen bench service`` loads the API (open loop, the lean client).

``python -m benchmarks.asgi_floor --http h11 --loop asyncio``: prints the achieved rate, p50/p99
and the server's CPU ms per request. Whatever the API spends above this is FastAPI, Redis and
this service's own code; this much is uvicorn, the event loop and the kernel's loopback TCP.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

from starlette.types import Receive, Scope, Send

from benchmarks.http_client import HttpClient, HttpError
from benchmarks.open_loop import open_loop
from benchmarks.service_cluster import free_port, process_tree_cpu_s

_BODY = b'{"id":"video_0","object":"video","status":"queued"}'
_HEAD = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Every HTTP request: 200 with ``_BODY``."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEAD})
    await send({"type": "http.response.body", "body": _BODY})


async def _load(port: int, pid: int, rate: float, requests: int) -> str:
    client = HttpClient("127.0.0.1", port, 64, {})
    request = client.encode("GET", "/")
    for _ in range(50):
        await client.send(request)
    before = process_tree_cpu_s(pid)
    result = await open_loop(lambda _: client.send(request), rate, requests)
    cpu_ms = 1000 * (process_tree_cpu_s(pid) - before) / requests
    client.close()
    return (
        f"achieved {result.achieved_rps:.0f}/s, p50 {result.percentile_ms(0.5):.1f} ms, "
        f"p99 {result.percentile_ms(0.99):.1f} ms, server CPU {cpu_ms:.3f} ms/request, "
        f"errors {result.errors or 0}, load average {os.getloadavg()[0]:.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.asgi_floor")
    parser.add_argument("--http", default="h11", choices=["h11", "httptools"])
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "benchmarks.asgi_floor:app", "--port", str(port),
            "--http", args.http, "--loop", args.loop, "--log-level", "warning",
            "--no-access-log",
        ]
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                report = asyncio.run(_load(port, server.pid, args.rate, args.requests))
                break
            except HttpError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(timeout=15)
    print(f"{args.http}/{args.loop}: {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
