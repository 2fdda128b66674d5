"""``scripts/run-local.sh`` (``make run``) end to end: it starts Redis (or uses one that answers),
the API and a worker on a model directory, prints the README's curl example, which yields an
MP4, and SIGINT stops every process it started and nothing else. A missing model directory is
refused before anything starts."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import textwrap
import time
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


def script_environment(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("QVGEN_")}
    # A port nothing listens on: the script must start a Redis of its own.
    env.update(REDIS_PORT=str(free_port()), QVGEN_RESULTS_DIR=str(tmp_path / "results"))
    env.update(overrides)
    return env


@contextlib.contextmanager
def running_script(tmp_path: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """``run-local.sh`` with ``env`` overrides; killed with its children if a test fails."""
    require_program("redis-server")
    require_program("curl")
    full_env = script_environment(tmp_path, **env)
    with (tmp_path / "out.log").open("wb") as out, (tmp_path / "err.log").open("wb") as err:
        script = subprocess.Popen(
            ["bash", str(SCRIPT)], cwd=REPO, env=full_env, stdout=out, stderr=err
        )
    try:
        yield script
    finally:
        if script.poll() is None:
            for child in psutil.Process(script.pid).children(recursive=True):
                child.kill()
            script.kill()
            script.wait(timeout=10)


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


def interrupt_and_check_children_gone(
    script: subprocess.Popen[bytes], children: list[psutil.Process], tmp_path: Path
) -> None:
    """Ctrl-C: the script exits as interrupted and none of its children is left."""
    script.send_signal(signal.SIGINT)
    # Stopping waits for each worker's hand-back; on a saturated 2-core machine (another job
    # training beside the suite) that took over 60 s once, so allow 120.
    assert script.wait(timeout=120) == 128 + signal.SIGINT
    time.sleep(0.2)  # orphans of the script are reaped by init
    alive = [" ".join(child.cmdline()) for child in children if not gone(child)]
    assert not alive, f"still running after Ctrl-C: {alive}"
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

    interrupt_and_check_children_gone(script, children, tmp_path)


def test_make_run_uses_a_running_redis_and_leaves_it_running(
    tiny_wan_dir: Path, tmp_path: Path
) -> None:
    with running_redis(tmp_path / "redis", "--appendonly", "no") as server:
        port = free_port()
        env = {
            "MODEL_DIR": str(tiny_wan_dir),
            "API_PORT": str(port),
            "REDIS_PORT": str(server.port),
            "QVGEN_KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}",
        }
        with running_script(tmp_path, **env) as script:
            wait_printed(script, tmp_path)
            assert (
                f"using the Redis that answers on 127.0.0.1:{server.port}"
                in (tmp_path / "err.log").read_text()
            )
            children = psutil.Process(script.pid).children(recursive=True)
            assert not any("redis-server" in " ".join(c.cmdline()) for c in children)
            interrupt_and_check_children_gone(script, children, tmp_path)
        client = redis.Redis(port=server.port)
        assert client.ping(), "make run stopped a Redis it did not start"
        client.close()


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
