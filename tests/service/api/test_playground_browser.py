"""The playground in headless Chromium against the running service: uvicorn API, a tiny Wan
pipeline worker and a slow no-op worker, real Redis, API keys on.

One test walks the page as a newcomer would: it is refused without a key, enters one, generates
a video on the tiny Wan model and watches it play, then starts two jobs on the slow model, sees
the second one queued behind the first, and deletes both. The page follows the job on show on its
server-sent-event stream, never by polling.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from benchmarks.service import Cluster
from service.settings import ServiceSettings
from service.worker.engines import EngineKind
from tests.service.browser import chromium_page
from tests.service.cluster_fixtures import API_KEY, auth
from tests.service.redis_fixtures import RedisServer, free_port, make_settings

WAN_MODEL, SLOW_MODEL = "tiny-wan", "slow-noop"
# 20 s per slow job: far longer than the page needs to start, queue and cancel two of them.
SLOW_STEPS, SLOW_STEP_DELAY_S = 100, 0.2
# Where to copy the screenshot too, e.g. docs/images/playground.png to refresh the README's.
SCREENSHOT_COPY_ENV = "QVGEN_PLAYGROUND_SCREENSHOT"


@pytest.fixture
def service(
    redis_server: RedisServer, tmp_path: Path, tiny_wan_dir: Path
) -> Iterator[tuple[Cluster, ServiceSettings]]:
    settings = make_settings(
        redis_server.url,
        tmp_path / "results",
        api_keys=API_KEY,
        models=(WAN_MODEL, SLOW_MODEL),
        poll_after_ms=100,
    )
    cluster = Cluster(settings, free_port())
    try:
        cluster.start_api()
        cluster.start_worker(SLOW_STEP_DELAY_S, model=SLOW_MODEL, model_id=SLOW_MODEL)
        cluster.start_worker(
            model=str(tiny_wan_dir), engine=EngineKind.DIFFUSERS, model_id=WAN_MODEL
        )
        yield cluster, settings
    finally:
        cluster.stop()


def _wait_workers(cluster: Cluster, models: tuple[str, ...], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        workers = httpx.get(f"{cluster.base_url}/readyz", timeout=2).json()["workers"]
        if all(workers.get(model, 0) > 0 for model in models):
            return
        time.sleep(0.1)
    raise AssertionError(f"no live worker for one of {models} within {timeout_s} s")


def _fill_job(page: Page, model: str, prompt: str, steps: int, guidance: str) -> None:
    page.select_option("#model", model)
    page.fill("#prompt", prompt)
    page.fill("#width", "32")
    page.fill("#height", "32")
    page.fill("#num-frames", "5")
    page.fill("#steps", str(steps))
    page.fill("#guidance", guidance)


def _record_progress(page: Page) -> None:
    """Collect every value the progress bar shows into ``window.seenProgress``."""
    page.evaluate(
        """() => {
          window.seenProgress = [];
          const bar = document.getElementById("job-progress");
          new MutationObserver(() => window.seenProgress.push(Number(bar.dataset.value)))
            .observe(bar, {attributes: true, attributeFilter: ["data-value"]});
        }"""
    )


def _job_id(page: Page) -> str:
    text = page.text_content("#job-id")
    assert text and text.startswith("video_"), text
    return text


def _enter_key(page: Page) -> None:
    expect(page.locator("#form-error")).to_contain_text("missing or invalid API key")
    expect(page.locator("#key-panel")).to_have_attribute("open", "")
    page.fill("#api-key", API_KEY)
    page.click("#key-save")
    expect(page.locator("#model option")).to_have_count(2)
    expect(page.locator("#form-error")).to_be_hidden()
    # The limits reach the inputs (the API's, or narrower once the model's worker is up).
    expect(page.locator("#width")).to_have_attribute("step", "16")
    expect(page.locator("#limits")).to_contain_text("steps of 16")


def _delete_two_slow_jobs(page: Page, cluster: Cluster) -> None:
    _fill_job(page, SLOW_MODEL, "a slow job", SLOW_STEPS, "5")
    _record_progress(page)
    page.click("#submit")
    expect(page.locator("#job")).to_have_attribute("data-status", "in_progress")
    page.wait_for_function("() => window.seenProgress.some((p) => p > 0 && p < 100)")
    running = _job_id(page)

    page.fill("#prompt", "a job behind it")
    page.click("#submit")
    page.wait_for_function(
        "(running) => document.getElementById('job-id').textContent !== running", arg=running
    )
    queued = _job_id(page)
    expect(page.locator("#job")).to_have_attribute("data-status", "queued")
    expect(page.locator("#job-queue")).to_have_text("1 job ahead")
    page.click("#cancel")
    expect(page.locator("#job")).to_have_attribute("data-status", "gone")
    expect(page.locator("#cancel")).to_be_hidden()

    page.click(f"#history li[data-id='{running}'] button")
    expect(page.locator("#job")).to_have_attribute("data-status", "in_progress")
    page.click("#cancel")
    expect(page.locator("#job")).to_have_attribute("data-status", "gone")
    expect(page.locator("#cancel")).to_be_hidden()
    for job in (running, queued):
        expect(page.locator(f"#history li[data-id='{job}']")).to_have_attribute(
            "data-status", "gone"
        )
        answer = httpx.get(f"{cluster.base_url}/v1/videos/{job}", headers=auth())
        assert answer.status_code == 404, answer.text


def _generate_on_wan(page: Page) -> None:
    _fill_job(page, WAN_MODEL, "a red ball rolls across a white floor", 4, "1")
    # The Wan worker's published rules: 1 + 4k frames, its own step and guidance caps.
    expect(page.locator("#num-frames")).to_have_attribute("step", "4")
    expect(page.locator("#steps")).to_have_attribute("max", "100")
    expect(page.locator("#guidance")).to_have_attribute("min", "1")
    _record_progress(page)
    page.click("#submit")
    expect(page.locator("#job")).to_have_attribute("data-status", "completed")
    expect(page.locator("#cancel")).to_be_hidden()
    expect(page.locator("#job-steps")).to_contain_text("4 steps in")
    seen = page.evaluate("window.seenProgress")
    assert seen[-1] == 100 and min(seen) < 100 and seen == sorted(seen), seen
    page.wait_for_function(
        """() => {
          const v = document.getElementById("video");
          return v.readyState >= 2 && v.duration > 0 && v.currentTime > 0;
        }"""
    )
    assert page.eval_on_selector("#video", "v => v.src").startswith("blob:")
    assert page.eval_on_selector("#thumbnail", "img => img.naturalWidth") == 32
    expect(page.locator("#download")).to_have_attribute("download", f"{_job_id(page)}.mp4")


def _refused_request_shows_the_apis_message(page: Page) -> None:
    """6 frames break the Wan VAE's 1 + 4k rule, which the worker published: a page that does not
    know the rule (its step attribute gone) submits them, and the API refuses them at once with
    the nearest counts; no job is made."""
    _fill_job(page, WAN_MODEL, "six frames", 2, "1")
    page.eval_on_selector("#num-frames", "input => input.removeAttribute('step')")
    page.fill("#num-frames", "6")
    page.click("#submit")
    expect(page.locator("#form-error")).to_contain_text("num_frames: 6 is not allowed")
    expect(page.locator("#form-error")).to_contain_text("use 5 or 9")
    expect(page.locator("#job")).to_have_attribute("data-status", "completed")


def _history_survives_a_reload(page: Page) -> None:
    statuses = page.eval_on_selector_all("#history li", "items => items.map(i => i.dataset.status)")
    page.reload()
    expect(page.locator("#key-state")).to_have_text("set for this tab")
    expect(page.locator("#model option")).to_have_count(2)
    reloaded = page.eval_on_selector_all("#history li", "items => items.map(i => i.dataset.status)")
    assert reloaded == statuses == ["completed", "gone", "gone"], reloaded


@pytest.mark.slow
def test_playground_generates_plays_and_deletes_in_chromium(
    service: tuple[Cluster, ServiceSettings], tmp_path: Path
) -> None:
    cluster, _ = service
    with chromium_page() as (page, log):
        page.goto(cluster.base_url + "/")
        _enter_key(page)
        _wait_workers(cluster, (SLOW_MODEL,))
        _delete_two_slow_jobs(page, cluster)
        _wait_workers(cluster, (WAN_MODEL,))
        _generate_on_wan(page)
        screenshot = tmp_path / "playground.png"
        page.screenshot(path=screenshot, full_page=True)
        if os.environ.get(SCREENSHOT_COPY_ENV):
            shutil.copyfile(screenshot, os.environ[SCREENSHOT_COPY_ENV])
        _refused_request_shows_the_apis_message(page)
        _history_survives_a_reload(page)
    assert log.requests, "the page made no request at all"
    # Progress came over the event streams: a job's plain URL was asked for by DELETE only.
    streams = [url for url in log.requests if url.endswith("/events")]
    plain = [url for url in log.requests if re.search(r"/v1/videos/video_[0-9a-f]{32}$", url)]
    assert len(streams) >= 3 and len(plain) == 2, (streams, plain)
    assert log.foreign_requests(cluster.base_url) == []
    assert not [line for line in log.console if "Content Security Policy" in line], log.console
