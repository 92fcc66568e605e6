"""The trainer's web dashboard, as a user meets it: real trainer, Redis, retriever and rollout worker on
loopback, and a real headless Chromium (Debian's ``chromium``, driven by Playwright with the system
browser). The static page opens without the key; every data route needs it; the browser signs in once,
sees the cluster and the jobs, watches a real RL job's curves grow over the SSE stream, reads a sampled
trajectory, cancels a second job from its page and reads an eval job's table and predictions.

Screenshots go to the test's temp dir and to /tmp/searchlab-dashboard-shots/ (``SEARCHLAB_SHOTS_DIR``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.client import TrainerClient
from shared.processes import Proc, free_port, start_service

pytestmark = pytest.mark.slow

KEY = "dashboard-test-key"
SHOTS = Path(os.environ.get("SEARCHLAB_SHOTS_DIR", "/tmp/searchlab-dashboard-shots"))


def chromium_or_skip() -> str:
    """The system Chromium Playwright drives, or a skip that says what is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (it is in the test extra: pip install -e '.[test]')")
    for candidate in (os.environ.get("SEARCHLAB_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    pytest.skip("no Chromium on this machine: `apt-get install chromium` (./searchlab.sh setup does it as root) "
                "or point SEARCHLAB_CHROMIUM at a Chrome/Chromium binary")


@pytest.fixture()
def trainer(private_redis: Proc, small_retriever: Proc, logs_dir: Path, tmp_path: Path) -> Iterator[Proc]:
    """A trainer whose judge URL points at a closed port: the cluster view must show it down."""
    env = {"TRAINER_API_KEY": KEY, "TRAINER_REDIS_URL": private_redis.url, "TRAINER_OUTPUT_DIR": str(tmp_path / "jobs"), "TRAINER_READ_ROOTS": json.dumps([str(tmp_path)]),
           "TRAINER_RETRIEVER_URL": small_retriever.url, "TRAINER_JUDGE_URL": f"http://127.0.0.1:{free_port()}",
           "TRAINER_TORCH_THREADS": "1"}
    proc = start_service("trainer", env, log_dir=logs_dir)
    yield proc
    proc.stop()


def test_the_page_opens_without_the_key_and_its_data_needs_it(trainer: Proc) -> None:
    home = httpx.get(trainer.url + "/")
    assert home.status_code == 307 and home.headers["location"] == "/ui/"
    page = httpx.get(trainer.url + "/ui/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "api-key" in page.text
    for path in ("/ui/js/app.js", "/ui/style.css", "/ui/vendor/uPlot.iife.min.js", "/ui/vendor/uPlot.LICENSE"):
        assert httpx.get(trainer.url + path).status_code == 200, path
    for path in ("/cluster", "/presets", "/jobs"):
        assert httpx.get(trainer.url + path).status_code == 401, path

    client = TrainerClient(trainer.url, KEY, timeout_s=30)
    view = client.cluster()
    state = {s.name: s for s in [*view.services, view.redis]}
    assert state["trainer"].ready and state["retriever"].ready and state["redis"].ready
    assert not state["judge"].ready and "unreachable" in state["judge"].detail
    assert view.queue is not None and (view.queue.waiting, view.queue.pending, view.queue.dead) == (0, 0, 0)
    assert view.workers == []
    presets = {p.name: p for p in client.presets()}
    assert {"tiny-rl", "tiny-eval"} <= set(presets) and presets["tiny-rl"].kind == "rl"


class Shots:
    """Full-page screenshots under the test's temp dir, copied where a person can look at them."""

    def __init__(self, page: Any, out: Path):
        self.page = page
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.paths: list[Path] = []

    def __call__(self, name: str) -> Path:
        path = self.out / f"{len(self.paths) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, SHOTS / path.name)
        self.paths.append(path)
        return path


def test_a_user_signs_in_watches_an_rl_job_cancels_another_and_reads_an_eval(
        trainer: Proc, private_redis: Proc, small_retriever: Proc, start_worker: Callable[..., Proc],
        tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    worker = start_worker(private_redis.url, "ui-worker-0", retriever_url=small_retriever.url, batch_size=4)
    client = TrainerClient(trainer.url, KEY, timeout_s=30)
    presets = {p.name: p for p in client.presets()}
    rl_id = client.submit("rl", presets["tiny-rl"].config)
    eval_config = {**presets["tiny-eval"].config, "n": 2, "eval": {"max_new_tokens": 8, "max_turns": 1}}
    eval_id = client.submit("eval", eval_config)  # queued behind the RL job (one job runs at a time)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("dialog", lambda dialog: dialog.accept())  # the cancel button asks first
            page.set_default_timeout(30_000)
            shot = Shots(page, tmp_path / "shots")

            # 1. the page, then the key once: it stays in the tab, never in the URL
            page.goto(trainer.url + "/")
            expect(page.locator("#login")).to_be_visible()
            shot("sign-in")
            page.fill("#api-key", KEY)
            page.click("#sign-in")
            row = page.locator(f'tr.job-row[data-job-id="{rl_id}"]')
            expect(row).to_be_visible()
            assert KEY not in page.url
            expect(page.locator('tr[data-service="retriever"][data-ready="true"]')).to_be_visible()
            expect(page.locator('tr[data-service="judge"][data-ready="false"]')).to_be_visible()
            expect(page.locator('tr[data-worker="ui-worker-0"]')).to_be_visible(timeout=60_000)
            page.reload()
            expect(row).to_be_visible()  # still signed in: session storage
            shot("overview")

            # 2. the RL job: a curve with a point from the live stream, then a sampled trajectory
            row.click()
            page.wait_for_function("() => Number(document.querySelector('.chart[data-panel=\"reward\"]')"
                                   "?.dataset.points || 0) >= 1", timeout=420_000)
            card = page.locator("#traj-list .trajectory").first
            expect(card).to_be_visible(timeout=60_000)
            expect(card.locator(".turn.policy").first).to_be_visible()
            assert card.locator(".question").inner_text().strip() != "Q"
            shot("rl-job-live")

            # 3. submit a second job from a preset, cancel it on its page
            page.click("text=← all jobs")
            page.select_option("#preset", "tiny-rl")
            page.click("#submit-preset")
            page.wait_for_url(lambda url: "#/jobs/rl-" in url and rl_id not in url)
            second = page.url.rsplit("/", 1)[-1]
            assert second != rl_id
            page.click("#cancel-job")
            expect(page.locator('#job-state[data-state="cancelled"]')).to_be_visible(timeout=240_000)
            shot("second-job-cancelled")

            # 4. the RL job at the end: every step on the curves, artifacts to download
            status = client.wait(rl_id, timeout_s=600)
            assert status.state == "succeeded", f"{status.error}\n{worker.log_tail()}"
            page.goto(f"{trainer.url}/ui/#/jobs/{rl_id}")
            page.wait_for_function("() => document.querySelector('.chart[data-panel=\"reward\"]')?.dataset.points === '2'")
            expect(page.locator('button.download[data-name="trajectories/step_0002.jsonl"]')).to_be_visible()
            shot("rl-job-done")

            # 5. the eval job: the table and the predictions, right / wrong and two methods side by side
            assert client.wait(eval_id, timeout_s=600).state == "succeeded"
            page.goto(f"{trainer.url}/ui/#/jobs/{eval_id}")
            expect(page.locator('.eval-table tr[data-method="rag"]')).to_be_visible()
            expect(page.locator("#pred-list .prediction")).to_have_count(2)
            expect(page.locator("#pred-list .side-by-side").first).to_be_visible()
            page.select_option("#pred-filter", "right")
            page.select_option("#pred-filter", "all")
            expect(page.locator("#pred-count")).to_have_text("2 of 2 questions")
            shot("eval-job")
        finally:
            browser.close()
    assert client.job(second).state == "cancelled"
    assert all(p.stat().st_size > 10_000 for p in shot.paths)
