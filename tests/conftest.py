"""Shared test settings: the parsed-pool cache of `gdo build` lives in a per-session folder."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _pool_cache_in_tmp(tmp_path_factory):
    """Keep `gdo build`'s parse cache out of the user's ~/.cache during tests."""
    old = os.environ.get("GDO_CACHE_DIR")
    os.environ["GDO_CACHE_DIR"] = str(tmp_path_factory.mktemp("gdo-cache"))
    yield
    if old is None:
        os.environ.pop("GDO_CACHE_DIR", None)
    else:
        os.environ["GDO_CACHE_DIR"] = old


@pytest.fixture(autouse=True, scope="session")
def _no_project_settings_file():
    """Keep a project's own gdo.toml out of the tests: GDO_SETTINGS names an empty file, so the
    definitions see only the variables each test sets (tests/test_settings_file.py sets its own)."""
    old = os.environ.get("GDO_SETTINGS")
    os.environ["GDO_SETTINGS"] = os.devnull
    yield
    if old is None:
        os.environ.pop("GDO_SETTINGS", None)
    else:
        os.environ["GDO_SETTINGS"] = old
