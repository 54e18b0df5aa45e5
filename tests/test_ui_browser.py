"""The Dagster UI in a real browser (headless Chromium driven by Playwright).

A small demo pool is registered with a fresh Dagster instance, `dagster-webserver` serves the
gdo code location on a free loopback port, and the test clicks through the UI: the asset graph
shows every asset of the Definitions, candidate_pool's Partitions tab lists the pool chunks, one
chunk is materialized from the "Materialize" dialog, and after a line is appended to the pool file
an "Observe" of pool_files marks that chunk "Unsynced" (pool_files has a new data version).

Needs Chromium at /usr/bin/chromium (`make test` installs Debian's `chromium` package) and the
`playwright` Python package (dev extra); Playwright's own browser downloads are not used.
Screenshots of every step go to the test's tmp folder; with GDO_UPDATE_SCREENSHOTS=1 the asset
graph and the stale chunk are also copied to docs/img/ for the README (so `make test` leaves the
checkout clean).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus

from dagster_project.definitions import build_definitions
from gdo_assets.partitions import POOL_CHUNKS
from gdo_assets.pool import register_chunks

REPO = Path(__file__).resolve().parents[1]
DOCS_IMG = REPO / "docs" / "img"
CHROMIUM = "/usr/bin/chromium"
CHUNK_LINES = 7  # the small demo pool in a few chunks per file
SERVER_START_S = 180  # webserver up and the code location loaded (2 slow cores, cold imports)
RUN_S = 300  # one run: run worker start, step subprocess, the step itself
UI_S = 60  # a page or a widget of the UI
NUX_S = 15  # the first-visit dialog, when it is coming
VIEWPORT = {"width": 1440, "height": 900}


def _playwright():
    """Playwright's sync API and expect; a clear failure (not a skip) when it cannot run."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: `make test` installs it (pip install -e '.[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs Debian's chromium package "
            "(apt-get install -y chromium, as root or with sudo); this test needs it"
        )
    return sync_playwright, expect


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env(home: Path, data: Path, onevision: Path, video: Path) -> dict[str, str]:
    """The environment of the webserver (and so of its code server and run workers)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GDO_") and k != "DAGSTER_HOME"}
    env.update(
        DAGSTER_HOME=str(home),
        GDO_DEPLOYMENT="local",
        GDO_ONEVISION=str(onevision),
        GDO_VIDEO=str(video),
        GDO_DATA_DIR=str(data),
        GDO_CHUNK_LINES=str(CHUNK_LINES),
        # No settings file (a gdo.toml in the repository would otherwise be read): only these.
        GDO_SETTINGS=os.devnull,
        PYTHONUNBUFFERED="1",
    )
    if "GDO_CACHE_DIR" in os.environ:  # conftest's per-session cache folder
        env["GDO_CACHE_DIR"] = os.environ["GDO_CACHE_DIR"]
    return env


def _dagster_home(path: Path) -> Path:
    """A fresh instance: no telemetry, and runs launched at once (no daemon runs beside the
    webserver, so the default queued coordinator would leave them queued)."""
    path.mkdir(parents=True)
    (path / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )
    return path


def _wait_for_server(proc: subprocess.Popen, url: str, log: Path) -> None:
    """Poll the webserver's /server_info until it answers; fail at once if it exits."""
    deadline_polls = SERVER_START_S * 4
    for _ in range(deadline_polls):
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        try:
            proc.wait(timeout=0.25)  # the pause between polls, and a check that it still runs
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"dagster-webserver exited with {proc.returncode}:\n{_tail(log)}")
    pytest.fail(f"dagster-webserver did not answer {url}/server_info in {SERVER_START_S} s:\n{_tail(log)}")


def _tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def _stop(proc: subprocess.Popen) -> None:
    """End the webserver's process group: the webserver, its code server and any run workers."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _append_to_last_chunk(path: Path) -> None:
    """Append one valid row (a copy of the first one under a new id) to the pool file."""
    lines = path.read_text().splitlines()
    assert len(lines) % CHUNK_LINES, "one appended line must land in the last chunk, not start a new one"
    row = next(json.loads(line) for line in lines if line.startswith("{") and '"id"' in line)
    row["id"] = f"{row['id']}-appended"
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_dagster_ui_shows_assets_materializes_a_chunk_and_marks_the_changed_chunk_stale(tmp_path, monkeypatch):
    sync_playwright, expect = _playwright()
    from gdo_core.demo import make_demo_pool

    shots = tmp_path / "screenshots"
    shots.mkdir()
    pool = make_demo_pool(tmp_path / "pool", n_image_rows=8, n_videos=4)
    home = _dagster_home(tmp_path / "dagster_home")
    env = _server_env(home, tmp_path / "data", pool.onevision, pool.video)
    defs = build_definitions(env=env)
    expected_assets = sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys())

    monkeypatch.setenv("DAGSTER_HOME", str(home))  # this process reads the same instance
    with DagsterInstance.get() as instance:
        chunks, total = register_chunks(instance, pool.onevision, pool.video, CHUNK_LINES)
        assert len(chunks) == total > 2
        # The pool's first observation (its data versions before the edit), here in-process.
        assert build_definitions(env=env, in_process=True).resolve_job_def("observe_pool").execute_in_process(
            instance=instance
        ).success
        edited = max(k for k in chunks if k.startswith(f"{pool.onevision.stem}-"))  # its last chunk

        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log = tmp_path / "webserver.log"
        with log.open("w") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            _wait_for_server(server, url, log)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
                page = browser.new_page(viewport=VIEWPORT)
                page.set_default_timeout(UI_S * 1000)
                expect.set_options(timeout=UI_S * 1000)
                try:
                    _click_through(page, expect, url, shots, expected_assets, chunks, edited, pool, instance)
                except Exception:
                    from playwright.sync_api import Error as PlaywrightError

                    with contextlib.suppress(PlaywrightError):  # the original error is the one to see
                        page.screenshot(path=str(shots / "failure.png"))
                    raise
                finally:
                    browser.close()
        except Exception as exc:
            raise AssertionError(f"{exc}\n\nwebserver log (tail):\n{_tail(log)}\nscreenshots: {shots}") from exc
        finally:
            _stop(server)

    if os.environ.get("GDO_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shots / "01-asset-graph.png", DOCS_IMG / "ui-asset-graph.png")
        shutil.copyfile(shots / "04-stale-chunk.png", DOCS_IMG / "ui-stale-chunk.png")


def _click_through(page, expect, url, shots, expected_assets, chunks, edited, pool, instance) -> None:
    # 1. The asset graph, all groups expanded: exactly the Definitions' assets.
    page.goto(f"{url}/asset-groups")
    materialize_all = page.get_by_role("button", name=re.compile(r"Materialize all"))
    nux = page.get_by_role("dialog").filter(has_text="Join the Dagster community")
    # The dialog hides the page from role queries while it is open: wait for either.
    expect(materialize_all.or_(nux).first).to_be_visible(timeout=SERVER_START_S * 1000)
    _skip_community_dialog(page, expect, nux)
    expect(materialize_all).to_be_visible()
    # Room for the graph: the navigation and the asset explorer beside the graph folded away.
    page.get_by_role("button", name="Hide navigation").click()
    jump_to = page.get_by_role("combobox", name="Jump to")
    jump_to.locator("xpath=ancestor::*[.//button][1]").get_by_role("button").last.click()
    expect(jump_to).to_have_count(0)
    _expand_all_groups(page, expect)
    nodes = page.locator("svg foreignObject [class*='AssetNode_assetName']")
    for name in expected_assets:
        expect(nodes.filter(has_text=re.compile(rf"^{re.escape(name)}$"))).to_be_visible()
    assert sorted(nodes.all_inner_texts()) == expected_assets
    _settled(nodes.filter(has_text=re.compile(r"^candidate_pool$")))
    page.screenshot(path=str(shots / "01-asset-graph.png"))

    # 2. candidate_pool's Partitions tab lists every registered pool chunk.
    page.goto(f"{url}/assets/candidate_pool?view=partitions")
    expect(page.get_by_text(f"Missing ({len(chunks)})")).to_be_visible()
    for key in chunks:
        expect(page.get_by_text(key, exact=True).first).to_be_visible()
    page.screenshot(path=str(shots / "02-partitions.png"))

    # 3. Materialize the pool file's last chunk: Materialize -> pick the partition -> launch.
    page.get_by_role("button", name="Materialize").first.click()
    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize candidate_pool")
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_role("menuitem").filter(has=page.get_by_role("checkbox", name=edited)).click()
    expect(page.get_by_role("checkbox", name=edited)).to_be_checked()
    page.keyboard.press("Escape")  # close the partition list, keep the dialog
    expect(page.get_by_role("menu")).to_have_count(0)
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    page.screenshot(path=str(shots / "03a-materialize-dialog.png"))
    dialog.get_by_role("button", name="Launch 1 run").click()
    run_id = _launched_run(page, expect, instance)
    _wait_for_run(page, expect, url, run_id, instance)
    page.screenshot(path=str(shots / "03b-run-success.png"))
    assert instance.get_run_by_id(run_id).tags.get("dagster/partition") == edited

    _open_partition(page, expect, url, edited, run_id)
    expect(page.get_by_text("Materialized (1)")).to_be_visible()
    assert page.get_by_text(re.compile(r"^Unsynced")).count() == 0, "the chunk is stale before any edit"
    page.screenshot(path=str(shots / "03c-materialized-chunk.png"))

    # 4. A line appended to the pool file changes its last chunk. Observe pool_files from the UI:
    #    only that chunk gets a new data version, and the materialized chunk turns "Unsynced".
    before = _observed_versions(instance)
    assert sorted(before) == sorted(chunks)
    _append_to_last_chunk(pool.onevision)
    page.goto(f"{url}/assets/pool_files")
    page.get_by_role("button", name="Observe").first.click()
    observe_id = _launched_run(page, expect, instance)
    _wait_for_run(page, expect, url, observe_id, instance)
    after = _observed_versions(instance)
    assert sorted(after) == sorted(chunks) == sorted(instance.get_dynamic_partitions(POOL_CHUNKS))
    assert [k for k in chunks if after[k] != before[k]] == [edited]

    _open_partition(page, expect, url, edited, run_id)
    unsynced = page.get_by_text("Unsynced (1)")
    expect(unsynced).to_be_visible()
    unsynced.hover()
    popover = page.get_by_text("1 upstream data version change")
    expect(popover).to_be_visible()
    expect(page.get_by_text("has a new data version")).to_be_visible()
    page.screenshot(path=str(shots / "04-stale-chunk.png"))


def _skip_community_dialog(page, expect, dialog) -> None:
    """Skip the "Join the Dagster community" dialog of a fresh instance's first visit (it opens
    about a second after the page loads), and any later time it shows up."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        dialog.wait_for(timeout=NUX_S * 1000)
    except PlaywrightTimeout:
        pass  # not shown (this instance has seen it): nothing to skip
    else:
        dialog.get_by_role("button", name="Skip").click()
        expect(dialog).to_have_count(0)
    page.add_locator_handler(dialog, lambda: dialog.get_by_role("button", name="Skip").click())


def _expand_all_groups(page, expect) -> None:
    """Graph settings (the gear) -> "Expand all groups" (a no-op when they already are)."""
    page.locator("button:has([role=img][aria-label=settings])").last.click()
    menu = page.get_by_role("menu")
    expect(menu).to_be_visible()
    toggle = menu.get_by_role("menuitem", name=re.compile(r"(Expand|Collapse) all groups"))
    expect(toggle).to_be_visible()
    if "Expand all groups" in toggle.inner_text():
        toggle.click()
    page.keyboard.press("Escape")
    expect(menu).to_have_count(0)


def _settled(node) -> None:
    """Wait until the graph stops moving (it zooms to fit after a layout): the node's box the
    same for ten animation frames in a row."""
    node.evaluate(
        """el => new Promise(done => {
            let last = "", same = 0;
            const tick = () => {
                const r = el.getBoundingClientRect(), now = [r.x, r.y, r.width, r.height].join();
                same = now === last ? same + 1 : 0;
                last = now;
                if (same >= 10) done(); else requestAnimationFrame(tick);
            };
            tick();
        })"""
    )


def _launched_run(page, expect, instance) -> str:
    """The id of the run that the UI's "Launched run <id>" toast names."""
    toast = page.get_by_text(re.compile(r"^Launched run [0-9a-f]{8}$"))
    expect(toast).to_be_visible()
    short = toast.inner_text().split()[-1]
    (run_id,) = [r.run_id for r in instance.get_runs() if r.run_id.startswith(short)]
    return run_id


def _wait_for_run(page, expect, url, run_id, instance) -> None:
    """The run's page, until it shows the run ended; the instance must say SUCCESS."""
    page.goto(f"{url}/runs/{run_id}")
    ended = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
    expect(ended).to_be_visible(timeout=RUN_S * 1000)
    status = instance.get_run_by_id(run_id).status
    assert status == DagsterRunStatus.SUCCESS, f"run {run_id} ended {status}"


def _observed_versions(instance) -> dict[str, str]:
    """Chunk key -> the data version of pool_files' latest observation of it."""
    latest: dict[str, str] = {}
    for record in instance.fetch_observations(AssetKey("pool_files"), limit=1000).records:  # newest first
        latest.setdefault(record.partition_key, record.asset_observation.data_version)
    return latest


def _open_partition(page, expect, url, key, run_id) -> None:
    """candidate_pool's Partitions tab with `key` selected, loaded up to its latest run."""
    page.goto(f"{url}/assets/candidate_pool?view=partitions&partition={key}")
    expect(page.get_by_text(run_id[:8], exact=True)).to_be_visible()
