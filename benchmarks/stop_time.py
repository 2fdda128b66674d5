"""``python -m benchmarks.stop_time``: how long Ctrl-C takes to stop ``make run``.

Starts ``scripts/run-local.sh`` (the service on the embedded model, with a Redis of its own on
a free port) leading its own process group with SIGINT and SIGTERM at their defaults, as a
terminal's foreground job runs; waits until it prints its curl example (the service is ready);
then sends SIGINT to the group, as Ctrl-C does, and times until the script has exited and every
process it started is gone. ``--busy-core`` runs a busy loop on one core during the stop.
Prints one line per trial, then the median and the worst.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run-local.sh"
READY_LINE = "Ctrl-C stops"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _default_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _busy_core(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def trial(python: str, busy_core: bool, ready_timeout_s: float) -> float:
    """Seconds from SIGINT to the last process of the script gone."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QVGEN_")}
        env.update(
            PY=python,
            API_PORT=str(_free_port()),
            REDIS_PORT=str(_free_port()),
            QVGEN_RESULTS_DIR=str(Path(tmp) / "results"),
        )
        out_path = Path(tmp) / "out.log"
        with out_path.open("wb") as out:
            script = subprocess.Popen(
                ["bash", str(SCRIPT)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.DEVNULL,
                process_group=0,
                preexec_fn=_default_signals,
            )
        try:
            deadline = time.monotonic() + ready_timeout_s
            while READY_LINE not in out_path.read_text(errors="replace"):
                if script.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("run-local.sh did not become ready")
                time.sleep(0.2)
            children = psutil.Process(script.pid).children(recursive=True)
            with _busy_core(busy_core):
                began = time.monotonic()
                os.killpg(script.pid, signal.SIGINT)
                script.wait()
                while not all(_gone(child) for child in children):
                    time.sleep(0.02)
                return time.monotonic() - began
        finally:
            if script.poll() is None:
                os.killpg(script.pid, signal.SIGKILL)
                script.wait()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stop_time")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--busy-core", action="store_true", help="a busy loop during each stop")
    parser.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"))
    parser.add_argument("--ready-timeout-s", type=float, default=300.0)
    args = parser.parse_args()
    times = []
    for index in range(args.trials):
        seconds = trial(args.python, args.busy_core, args.ready_timeout_s)
        times.append(seconds)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"trial {index + 1}: stopped in {seconds:.2f} s (load average {load})", flush=True)
    print(f"median {statistics.median(times):.2f} s, worst {max(times):.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
