from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite


@pytest.fixture
def make_site(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., LocalSite]]:
    sites: list[LocalSite] = []

    def make(*servers: tuple[str, ServerRole], **kwargs: Any) -> LocalSite:
        site = LocalSite(tmp_path / f"site{len(sites)}", **kwargs)
        sites.append(site)
        site.init_ca()
        for name, role in servers:
            site.add_server(name, role)
        return site

    yield make
    failed = getattr(request.node, "rep_call", None)
    for site in sites:
        site.stop_all()
        if failed is not None and failed.failed:
            for name in site.servers:
                print(f"===== {name}\n{site.log_text(name)[-4000:]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
