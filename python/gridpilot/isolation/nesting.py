"""Containers inside the job's container: the environment that tells whoever starts one (a payload, or a pilot the
payload runs) which image and runtime the job runs in, so that it uses the same; and DISABLE_NESTED_CONTAINERS.

The names are ALICE's where JAliEn has one:
- JOB_CONTAINER_PATH: the image. JAliEn's Containerizer takes the job container's image from this variable, and a
  JobAgent that finds it set skips its own choice by platform; here the pilot that finds it set (it runs inside that
  container) runs its jobs in that image (images.choose_image: it goes before site_image).
- FORCE_BINPATH: the Apptainer (or Singularity) binary. JAliEn's Apptainer, ApptainerCVMFS and Singularity
  containerizers run this binary when it is set; set here only for those runtimes (Podman and bubblewrap have no
  binary inside that a nested start could reuse).
- DISABLE_NESTED_CONTAINERS: in JAliEn (JobWrapper.executeCommand) its presence among the variables the site passes
  down (META_VARIABLES) stops the JobWrapper from running the payload in a nested ApptainerCVMFS container. Here: a
  pilot whose environment has it starts no container of its own (containers.choose), and it is handed down to the
  wrapper and the payload. Presence is what counts, as in JAliEn (an empty value too), except an explicit
  0/false/no/off, which reads as "not set" rather than as its opposite. An image can ask for the same in its
  container.properties.
JAliEn has no variable for the runtime's name (its nested containers are always ApptainerCVMFS):
- GRIDPILOT_CONTAINER_RUNTIME, the variable of the `container_runtime` setting: inside a job's container it names
  the runtime the job runs in, so a pilot started there is configured to use that runtime (no probing of others).
"""

from __future__ import annotations

from typing import Mapping, Optional

IMAGE_ENV = "JOB_CONTAINER_PATH"
BINARY_ENV = "FORCE_BINPATH"
RUNTIME_ENV = "GRIDPILOT_CONTAINER_RUNTIME"
DISABLE_ENV = "DISABLE_NESTED_CONTAINERS"

#: Values of DISABLE_NESTED_CONTAINERS that do not disable anything (someone wrote "off" meaning off).
_NOT_SET = ("0", "false", "no", "off")

#: The variables this module hands down: an image's container.properties may not set them (env.<NAME>).
HANDED_DOWN = (IMAGE_ENV, BINARY_ENV, RUNTIME_ENV, DISABLE_ENV)


def disabled_by(value: Optional[str]) -> bool:
    """Whether a DISABLE_NESTED_CONTAINERS value (None: unset) disables nested containers."""
    return value is not None and value.strip().lower() not in _NOT_SET


def disabled_in(environ: Mapping[str, str]) -> bool:
    return disabled_by(environ.get(DISABLE_ENV))
