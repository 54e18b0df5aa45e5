"""`--low-memory`: the allocator settings reach polars and glibc, and change no output byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_pool_cache import _pool  # tests/ is on sys.path under pytest's default import mode

from gdo_core.memory import JEMALLOC_CONF, JEMALLOC_ENV

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import json, os
from gdo_core.memory import prefer_low_memory
missed = prefer_low_memory()
import polars
print(json.dumps({"missed": missed, "conf": os.environ.get("_RJEM_MALLOC_CONF")}))
"""


def _python(code: str, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
        env={**os.environ, **(env or {})}, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_settings_reach_polars_when_applied_before_it_loads():
    env = {k: v for k, v in os.environ.items() if k != JEMALLOC_ENV}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, env=env, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["missed"] == []  # Linux with glibc: both parts apply
    # polars puts its defaults first and what it finds in the variable after them (later wins)
    assert result["conf"].endswith("," + JEMALLOC_CONF)


def test_a_users_own_allocator_settings_come_last():
    result = _python(PROBE, {JEMALLOC_ENV: "narenas:2"})
    assert result["conf"].endswith(f",{JEMALLOC_CONF},narenas:2")


def test_polars_imported_first_is_reported():
    result = _python("import json, polars\nfrom gdo_core.memory import prefer_low_memory\n"
                     "print(json.dumps({'missed': prefer_low_memory()}))")
    assert len(result["missed"]) == 1 and "polars" in result["missed"][0]


def test_low_memory_build_writes_the_same_bytes(tmp_path):
    ov, vv = _pool(tmp_path / "pool")
    outputs = {}
    for name, extra in (("plain", []), ("low", ["--low-memory"])):
        out = tmp_path / name
        done = subprocess.run(
            [sys.executable, "-m", "gdo_core.cli", "build", "--profile", "temp_plus",
             "--onevision", str(ov), "--video", str(vv), "--out", str(out), "--no-cache", *extra],
            capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONHASHSEED": "0"}, check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "not applied" not in done.stderr
        outputs[name] = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
    assert outputs["plain"].keys() == outputs["low"].keys()
    assert "gdo_1x_32f.jsonl" in outputs["low"]
    assert outputs["plain"] == outputs["low"]
