"""Shared test fixtures: every test session writes data into a temporary MTLKIT_DATA_DIR, never into the repo."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def mtlkit_data_dir(tmp_path_factory: pytest.TempPathFactory):
    """Point ``MTLKIT_DATA_DIR`` at a session-wide temp folder (caches built once are shared by all tests)."""
    path = tmp_path_factory.mktemp("mtlkit-data")
    patch = pytest.MonkeyPatch()
    patch.setenv("MTLKIT_DATA_DIR", str(path))
    yield path
    patch.undo()
