"""`gdo build`'s allocator settings (default and `--low-memory`) reach polars and glibc, and change no output byte."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from test_pool_cache import _pool  # tests/ is on sys.path under pytest's default import mode

from gdo_core.memory import JEMALLOC_ENV, arenas_for, default_conf, low_memory_conf

REPO = Path(__file__).resolve().parents[1]
GLIBC = platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not GLIBC, reason="the mmap threshold is a glibc setting")
PROBE = """
import json, os
from gdo_core.memory import prefer_low_memory
missed = prefer_low_memory()
import polars
polars.DataFrame({"a": [3, 1, 2]}).sort("a")  # jemalloc reads its settings by now
print(json.dumps({"missed": missed, "conf": os.environ.get("_RJEM_MALLOC_CONF")}))
"""


def _python(code: str, conf: str | None = None) -> tuple[dict, str]:
    """(last stdout line as JSON, stderr) of code run in a fresh interpreter with _RJEM_MALLOC_CONF=conf."""
    env = {k: v for k, v in os.environ.items() if k != JEMALLOC_ENV}
    if conf is not None:
        env[JEMALLOC_ENV] = conf
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@needs_glibc
def test_settings_reach_polars_when_applied_before_it_loads():
    result, stderr = _python(PROBE)
    assert result["missed"] == []
    # polars puts its defaults first and what it finds in the variable after them (later wins)
    assert result["conf"].endswith("," + low_memory_conf())
    assert "<jemalloc>" not in stderr  # jemalloc warns about settings it does not know


def test_the_default_setting_reaches_polars():
    code = PROBE.replace("prefer_low_memory", "prefer_prompt_release")
    result, stderr = _python(code)
    assert result["missed"] == []
    assert result["conf"].endswith("," + default_conf())
    assert "<jemalloc>" not in stderr


def test_the_cli_module_loads_without_polars():
    """`gdo build` can only set polars' allocator if nothing imported polars before the command ran."""
    code = "import json, sys\nimport gdo_core.cli\nprint(json.dumps({'polars': 'polars' in sys.modules}))"
    result, _ = _python(code)
    assert result == {"polars": False}


def test_a_users_own_allocator_settings_come_last():
    result, stderr = _python(PROBE, "narenas:2")
    assert result["conf"].endswith(f",{low_memory_conf()},narenas:2")
    assert "<jemalloc>" not in stderr


@pytest.mark.parametrize(
    ("cpus", "arenas"), [(1, 1), (2, 1), (3, 1), (4, 1), (7, 1), (8, 2), (16, 4), (64, 16)]
)
def test_one_arena_per_four_cpus(cpus, arenas):
    assert arenas_for(cpus) == arenas


def test_the_arena_count_follows_the_cpus_the_process_may_use(monkeypatch):
    from gdo_core import memory

    monkeypatch.setattr(memory, "usable_cpus", lambda: 16)
    assert memory.default_conf() == "muzzy_decay_ms:0,narenas:4"
    assert memory.low_memory_conf() == "dirty_decay_ms:100,muzzy_decay_ms:0,narenas:4"


def test_polars_imported_first_is_reported():
    code = "import json, polars\nfrom gdo_core.memory import prefer_low_memory\nprint(json.dumps({'missed': prefer_low_memory()}))"
    result, _ = _python(code)
    assert any("polars" in part for part in result["missed"])


@needs_glibc
def test_allocator_settings_write_the_same_bytes(tmp_path):
    ov, vv = _pool(tmp_path / "pool")
    outputs = {}
    # polars' own defaults (a user's setting wins), gdo build's default, and --low-memory
    polars_defaults = {JEMALLOC_ENV: "dirty_decay_ms:500,muzzy_decay_ms:1000"}
    runs = (("polars", [], polars_defaults), ("plain", [], {}), ("low", ["--low-memory"], {}))
    for name, extra, conf in runs:
        out = tmp_path / name
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "gdo_core.cli",
                "build",
                "--profile",
                "temp_plus",
                "--onevision",
                str(ov),
                "--video",
                str(vv),
                "--out",
                str(out),
                "--no-cache",
                *extra,
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": "0", **conf},
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "not applied" not in done.stderr
        outputs[name] = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
    assert outputs["plain"].keys() == outputs["low"].keys()
    assert "gdo_1x_32f.jsonl" in outputs["low"]
    assert outputs["plain"] == outputs["low"] == outputs["polars"]
