"""Fixtures for the documentation tests (issue 19); the helpers are in docs_support.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from docs_support import Administrator

from watchkeep.testing import free_loopback_network


@pytest.fixture
def administrator(open_dir: Path) -> Iterator[Administrator]:
    """Someone typing the documentation's commands; their servers stop with the test."""
    admin = Administrator(open_dir, free_loopback_network())
    try:
        yield admin
    finally:
        admin.stop_servers()
