"""The pilot settings that run a job under each container runtime the pilot tests cover (Podman, bubblewrap, none),
and the `runtime_config` fixture that runs a test once per runtime. A runtime this machine lacks skips, naming its
Debian package (fails under GRIDPILOT_REQUIRE_ALL)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from support.require import require_or_skip

#: The runtimes `runtime_config` runs a test under, and the Debian packages that bring each.
RUNTIMES = ("podman", "bwrap", "none")
PACKAGES = {"podman": "podman runc", "bwrap": "bubblewrap"}


def config_for(runtime: str, image_dir: Optional[Path]) -> Dict[str, Any]:
    """PilotConfig fields for jobs in `runtime` with the test image as the default image (none: no container, and
    no image needed)."""
    if runtime == "none":
        return dict(container_runtime="none")
    if shutil.which(runtime) is None:
        require_or_skip(f"no {runtime} (Debian package {PACKAGES[runtime]})")
    return dict(container_runtime=runtime, default_image=str(image_dir))


@pytest.fixture(params=RUNTIMES)
def runtime_config(request: pytest.FixtureRequest) -> Dict[str, Any]:
    # The image is built (or found in the cache) only for a runtime that uses it.
    image = request.getfixturevalue("image_dir") if request.param != "none" else None
    return config_for(request.param, image)
