"""Fixtures for the certificate lifecycle tests; the hooks and fixtures shared with the
other suites are in tests/conftest.py, the helpers in `watchkeep.testing`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite


@pytest.fixture
def make_site(
    open_sites: Callable[..., contextlib.AbstractContextManager[Callable[..., LocalSite]]],
) -> Iterator[Callable[..., LocalSite]]:
    """Lay out sites of the given servers, whose processes are all stopped after the test."""
    with open_sites() as new_site:

        def make(*servers: tuple[str, ServerRole], **kwargs: Any) -> LocalSite:
            site = new_site("site", **kwargs)
            for name, role in servers:
                site.add_server(name, role)
            return site

        yield make
