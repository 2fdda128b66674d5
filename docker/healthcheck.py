#!/usr/bin/env python3
"""Container health check: exit 0 when ``URL`` answers 2xx within the timeout, else 1.

Standard library only, because the images carry no curl: the API image's ``/healthz`` (liveness)
and ``/readyz`` (readiness), and a worker's own ``/metrics`` port (up once its model is loaded).
Usage: ``qvgen-healthcheck URL [TIMEOUT_S]``.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

DEFAULT_TIMEOUT_S = 3.0


def check(url: str, timeout_s: float) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = int(response.status)
    except (urllib.error.URLError, OSError) as error:
        # HTTPError (a 503 from /readyz) is a URLError: unhealthy, with the reason for `docker inspect`.
        sys.stderr.write(f"{url}: {error}\n")
        return 1
    return 0 if 200 <= status < 300 else 1


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        sys.stderr.write("usage: qvgen-healthcheck URL [TIMEOUT_S]\n")
        return 2
    return check(argv[1], float(argv[2]) if len(argv) == 3 else DEFAULT_TIMEOUT_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
