from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.storage.helpers import Harness


@pytest.fixture(params=["lmdb", "memory"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """The contract suite runs once per implementation."""
    h = Harness(request.param, tmp_path / "store")
    yield h
    h.close()
