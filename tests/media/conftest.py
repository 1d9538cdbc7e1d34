"""Fixtures of the media tests. ``async def`` tests run in a fresh event loop each.

The project does not use pytest-asyncio; this hook is the few lines it would give us.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

# A hang must fail the test, not the whole run: far above what any media test needs.
ASYNC_TEST_TIMEOUT = 60.0


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    arguments: dict[str, Any] = {
        name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames
    }
    asyncio.run(asyncio.wait_for(pyfuncitem.obj(**arguments), ASYNC_TEST_TIMEOUT))
    return True
