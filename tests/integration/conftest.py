"""Session fixtures of the integration level."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.wheels import build_wheel


@pytest.fixture(scope="session")
def gridpilot_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's wheel for this machine, built once for every test that needs one."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))
