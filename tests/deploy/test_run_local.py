"""``scripts/run-local.sh`` (``make run``) end to end: it starts Redis (or uses one that answers),
the API and a worker on a model directory, prints the README's curl example, which yields an
MP4, and SIGINT (Ctrl-C) or SIGTERM stops every process it started and nothing else, within
seconds even with a core busy; a second signal kills them at once. A missing model directory is
refused before anything starts.

The script starts with SIGINT and SIGTERM at their defaults whatever this process inherited (a
shell starts a background job with SIGINT ignored, and bash cannot trap a signal ignored at its
entry), so these tests see the script's own handling, not their parent's."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import redis

from qvgen.video_io import probe_video
from service.settings import ServiceSettings
from tests.deploy.compose import REPO, require_program, wait_until
from tests.deploy.readme_tables import curl_example
from tests.service.redis_fixtures import free_port, running_redis

SCRIPT = REPO / "scripts" / "run-local.sh"
EXAMPLE_HEADER = "Try it:"
EXAMPLE_INDENT = "    "
README_BASE = "http://127.0.0.1:8000"
# What the script promises: every process it started is gone this long after the signal.
STOP_DEADLINE_S = 10


def script_environment(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("QVGEN_")}
    # A port nothing listens on: the script must start a Redis of its own.
    env.update(REDIS_PORT=str(free_port()), QVGEN_RESULTS_DIR=str(tmp_path / "results"))
    env.update(overrides)
    return env


def signal_dispositions(sigint: signal.Handlers) -> None:
    """In the child before ``exec``: SIGTERM at its default, SIGINT as given, neither blocked."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, sigint)


@contextlib.contextmanager
def running_script(
    tmp_path: Path, sigint: signal.Handlers = signal.SIG_DFL, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``run-local.sh`` with ``env`` overrides, leading its own process group as a terminal's
    foreground job does; killed with everything it started if a test fails."""
    require_program("redis-server")
    require_program("curl")
    full_env = script_environment(tmp_path, **env)
    with (tmp_path / "out.log").open("wb") as out, (tmp_path / "err.log").open("wb") as err:
        script = subprocess.Popen(
            ["bash", str(SCRIPT)],
            cwd=REPO,
            env=full_env,
            stdout=out,
            stderr=err,
            process_group=0,
            preexec_fn=lambda: signal_dispositions(sigint),
        )
    try:
        yield script
    finally:
        if script.poll() is None:
            for child in psutil.Process(script.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            script.kill()
            script.wait(timeout=STOP_DEADLINE_S)


@contextlib.contextmanager
def busy_core() -> Iterator[None]:
    """A busy loop on one core for the duration: stopping must not depend on an idle machine."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait(timeout=STOP_DEADLINE_S)


def printed_example(output: str) -> str:
    lines = output.split(EXAMPLE_HEADER + "\n", 1)[1].splitlines()
    block = []
    for line in lines:
        if not line.startswith(EXAMPLE_INDENT):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)) + "\n"


def wait_printed(script: subprocess.Popen[bytes], tmp_path: Path) -> str:
    def ready() -> str | None:
        assert script.poll() is None, (tmp_path / "err.log").read_text()[-3000:]
        output = (tmp_path / "out.log").read_text()
        return output if "Ctrl-C stops" in output else None

    try:
        result: str = wait_until(ready, 180, "the script to print its example", 0.5)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{(tmp_path / 'err.log').read_text()[-3000:]}") from error
    return result


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def send(script: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    """SIGINT as Ctrl-C sends it, to the foreground process group; SIGTERM as ``kill PID``."""
    if signum is signal.SIGINT:
        os.killpg(script.pid, signum)
    else:
        script.send_signal(signum)


def wait_exit(script: subprocess.Popen[bytes], tmp_path: Path, after: str) -> int:
    try:
        return script.wait(timeout=STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"run-local.sh still running {STOP_DEADLINE_S} s after {after}:\n"
            + (tmp_path / "err.log").read_text()[-3000:]
        ) from None


def check_children_gone(children: list[psutil.Process], after: str) -> None:
    def alive() -> list[str]:
        return [" ".join(child.cmdline()) for child in children if not gone(child)]

    # Processes the script killed last may take a moment to exit, and init reaps its orphans.
    try:
        wait_until(lambda: not alive(), STOP_DEADLINE_S, "the script's children to exit", 0.05)
    except AssertionError:
        raise AssertionError(f"still running after {after}: {alive()}") from None


def stop_and_check_children_gone(
    script: subprocess.Popen[bytes],
    children: list[psutil.Process],
    tmp_path: Path,
    signum: signal.Signals,
) -> None:
    """The signal, with a core busy: the script exits as signalled, none of its children left."""
    with busy_core():
        send(script, signum)
        assert wait_exit(script, tmp_path, signum.name) == 128 + signum
        check_children_gone(children, signum.name)
    assert "stopped" in (tmp_path / "err.log").read_text()


def test_make_run_serves_the_readme_example_and_ctrl_c_stops_everything(
    tiny_wan_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    with running_script(tmp_path, MODEL_DIR=str(tiny_wan_dir), API_PORT=str(port)) as script:
        run_readme_example(script, port, tmp_path)


def run_readme_example(script: subprocess.Popen[bytes], port: int, tmp_path: Path) -> None:
    output = wait_printed(script, tmp_path)
    base = f"http://127.0.0.1:{port}"
    assert f"at {base}" in output
    example = printed_example(output)
    assert example.replace(base, README_BASE) == curl_example(), "README and make run differ"

    children = psutil.Process(script.pid).children(recursive=True)
    names = " ".join(" ".join(child.cmdline()) for child in children)
    assert "redis-server" in names and "serve all" in names and "serve worker" in names

    work = tmp_path / "client"
    work.mkdir()
    ran = subprocess.run(
        ["bash", "-c", example], cwd=work, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0 and "wrote video.mp4" in ran.stdout, ran.stderr
    info = probe_video(work / "video.mp4")
    defaults = ServiceSettings()
    assert f"{info.width}x{info.height}" == defaults.default_size
    assert info.frame_count == defaults.default_num_frames

    stop_and_check_children_gone(script, children, tmp_path, signal.SIGINT)


def test_make_run_uses_a_running_redis_and_leaves_it_running(
    tiny_wan_dir: Path, tmp_path: Path
) -> None:
    """Started as a background job (SIGINT ignored), as README says: SIGTERM stops it."""
    with running_redis(tmp_path / "redis", "--appendonly", "no") as server:
        port = free_port()
        env = {
            "MODEL_DIR": str(tiny_wan_dir),
            "API_PORT": str(port),
            "REDIS_PORT": str(server.port),
            "QVGEN_KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}",
            "DEVICE": "cpu",
        }
        with running_script(tmp_path, sigint=signal.SIG_IGN, **env) as script:
            wait_printed(script, tmp_path)
            log = (tmp_path / "err.log").read_text()
            assert f"using the Redis that answers on 127.0.0.1:{server.port}" in log
            assert (
                f"SIGINT is ignored here (started as a background job?): stop it with 'kill {script.pid}'"
                in log
            )
            children = psutil.Process(script.pid).children(recursive=True)
            assert not any("redis-server" in " ".join(c.cmdline()) for c in children)
            stop_and_check_children_gone(script, children, tmp_path, signal.SIGTERM)
        client = redis.Redis(port=server.port)
        assert client.ping(), "make run stopped a Redis it did not start"
        client.close()


def test_a_second_signal_while_stopping_kills_everything_at_once(
    tiny_wan_dir: Path, tmp_path: Path
) -> None:
    env = {"MODEL_DIR": str(tiny_wan_dir), "API_PORT": str(free_port()), "DEVICE": "cpu"}
    with running_script(tmp_path, **env) as script:
        wait_printed(script, tmp_path)
        children = psutil.Process(script.pid).children(recursive=True)
        worker = next(c for c in children if "serve worker" in " ".join(c.cmdline()))
        # A stopped worker cannot act on SIGTERM: `serve all` waits out its grace period for it,
        # so the first Ctrl-C alone would take that long.
        worker.suspend()
        send(script, signal.SIGINT)
        wait_until(
            lambda: "stopping" in (tmp_path / "err.log").read_text(),
            STOP_DEADLINE_S,
            "the script to begin stopping",
            0.05,
        )
        send(script, signal.SIGINT)
        assert wait_exit(script, tmp_path, "the second SIGINT") == 128 + signal.SIGINT
        check_children_gone(children, "the second SIGINT")
        log = (tmp_path / "err.log").read_text()
        assert "killed" in log and "stopped" not in log, log


def test_make_run_refuses_a_missing_model_and_starts_nothing(tmp_path: Path) -> None:
    env = script_environment(
        tmp_path, MODEL_DIR=str(tmp_path / "no-model"), API_PORT=str(free_port())
    )
    ran = subprocess.run(
        ["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 1
    assert f"no diffusers pipeline at '{tmp_path / 'no-model'}'" in ran.stderr
    assert "Nothing was started" in ran.stderr
