from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tcmd.store.jsonfile import JsonFileStore


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    """Where a test's store lives."""
    return tmp_path / "state"


@pytest.fixture
def store(directory: Path) -> Iterator[JsonFileStore]:
    """A real JSON file store, open, closed after the test (unless the test crashed it)."""
    s = JsonFileStore(directory)
    s.open()
    yield s
    s.close()
