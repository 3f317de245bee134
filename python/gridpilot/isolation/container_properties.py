"""`container.properties` at the root of an image directory: the runtime options the image itself asks for.

ALICE's images on CVMFS are unpacked directories, and JAliEn reads its site-side settings from `.properties` files
(`container.properties` is where its JobAgent tells a site to turn off the container check). The file here is read
in the same Java-properties syntax, kept to what a site needs:

    # comment (also "!"), blank lines ignored
    KEY = value            (or KEY: value; spaces around the separator and at both ends are dropped)

Keys (case as written; unknown keys are ignored with a log line, so an image can carry keys for other tools):
- RUNTIMES: the runtimes that may run this image, comma- or space-separated names of config.CONTAINER_RUNTIMES.
  It filters the site's probe order (container_order), never reorders it; a forced container_runtime it does not
  name means no container for this image.
- ADDITIONAL_BINDS: extra binds, comma-separated `src[:dst[:ro|rw]]` (JAliEn's variable of that name, in
  container_binds' syntax: read-only unless `rw`).
- DISABLE_NESTED_CONTAINERS: true/false (1/0, yes/no, on/off): no container inside this one (isolation/nesting.py).
- env.<NAME>: a variable set in the container's environment (not the ones the pilot sets itself: HOME, TMPDIR,
  TMP, PATH, the GRIDPILOT_* ones and those of nesting.HANDED_DOWN).

Bounded: at most MAX_BYTES bytes (a longer file is refused, not cut), values of at most MAX_VALUE characters, UTF-8.
A bad line or value raises ConfigError naming the file and the line. Java's line continuations (a trailing
backslash) and escapes are not supported: such a line is refused rather than read differently than Java would.
A .sif image has no directory to hold the file: it has no properties.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from gridpilot.config import CONTAINER_RUNTIMES
from gridpilot.errors import ConfigError
from gridpilot.isolation import nesting
from gridpilot.isolation.runtimes import Bind

log = logging.getLogger(__name__)

FILE_NAME = "container.properties"
MAX_BYTES = 64 * 1024
MAX_VALUE = 4096

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
#: Variables the pilot sets inside the container itself: an image may not replace them.
_PILOT_ENV = ("HOME", "TMPDIR", "TMP", "PATH", *nesting.HANDED_DOWN)


@dataclass(frozen=True)
class ContainerProperties:
    """What an image's container.properties asks for (all empty when it has none)."""

    #: The file read, None when the image has none.
    path: Optional[str] = None
    runtimes: Optional[Tuple[str, ...]] = None
    binds: Tuple[Bind, ...] = ()
    disable_nested: bool = False
    env: Dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """The options, for the job's trace."""
        parts = []
        if self.runtimes is not None:
            parts.append("RUNTIMES=" + ",".join(self.runtimes))
        if self.binds:
            parts.append("ADDITIONAL_BINDS=" + ",".join(b.spec() for b in self.binds))
        if self.disable_nested:
            parts.append("DISABLE_NESTED_CONTAINERS=true")
        parts += [f"env.{k}={v}" for k, v in sorted(self.env.items())]
        return ", ".join(parts) or "no options"


def read_properties(image: str) -> ContainerProperties:
    """The container.properties of the image directory `image`; empty properties when there is none (or the image
    is a file). ConfigError naming the file (and line) when it cannot be read or says something invalid."""
    path = os.path.join(image, FILE_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return ContainerProperties()
    except NotADirectoryError:
        return ContainerProperties()  # the image is a file (.sif)
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e.strerror}") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{path}: not a regular file")
        data = os.read(fd, MAX_BYTES + 1)
        while len(data) <= MAX_BYTES:  # a short read is not the end of the file
            more = os.read(fd, MAX_BYTES + 1 - len(data))
            if not more:
                break
            data += more
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{path}: longer than {MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 (byte {e.start})") from e
    return parse_properties(text, path)


def parse_properties(text: str, path: str) -> ContainerProperties:
    """The options in `text`, the content of the file `path` (named in errors)."""
    runtimes: Optional[Tuple[str, ...]] = None
    binds: List[Bind] = []
    disable_nested = False
    env: Dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        where = f"{path}:{number}"
        if line.endswith("\\"):
            raise ConfigError(f"{where}: a line continued with a backslash is not supported; write it on one line")
        cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        if cut <= 0:
            raise ConfigError(f"{where}: not \"KEY = value\": {_short(line)!r}")
        key, value = line[:cut].strip(), line[cut + 1:].strip()
        if len(value) > MAX_VALUE:
            raise ConfigError(f"{where}: the value of {key} is longer than {MAX_VALUE} characters")
        if key == "RUNTIMES":
            names = tuple(n for n in re.split(r"[,\s]+", value) if n)
            unknown = [n for n in names if n not in CONTAINER_RUNTIMES]
            if unknown or not names:
                raise ConfigError(f"{where}: RUNTIMES must name runtimes among {', '.join(CONTAINER_RUNTIMES)}, "
                                  f"got {value!r}")
            runtimes = names
        elif key == "ADDITIONAL_BINDS":
            binds += [Bind.parse(b.strip(), f"{where}: ADDITIONAL_BINDS") for b in value.split(",") if b.strip()]
        elif key == "DISABLE_NESTED_CONTAINERS":
            if value.lower() not in _TRUE + _FALSE:
                raise ConfigError(f"{where}: DISABLE_NESTED_CONTAINERS must be true or false, got {_short(value)!r}")
            disable_nested = value.lower() in _TRUE
        elif key.startswith("env."):
            name = key[len("env."):]
            if not _NAME.match(name):
                raise ConfigError(f"{where}: {_short(key)!r} does not name an environment variable")
            if name in _PILOT_ENV or name.startswith("GRIDPILOT_"):
                raise ConfigError(f"{where}: {name} is set by the pilot, not by the image")
            env[name] = value
        else:
            log.warning("%s: unknown key %r ignored", where, _short(key))
    return ContainerProperties(path, runtimes, tuple(binds), disable_nested, env)


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."
