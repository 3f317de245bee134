"""Pilot versions as PEP 440 writes them ("1.4.2", "2.0.0rc1", "1.4.2.post1", "1.5.0.dev3+g1234abc"), parsed and
ordered without third-party code: the worker-node package stays light, and central compares a pilot's version (its
site map's `pilot_version`) with a minimum (the `min_pilot_version` setting, a JDL's `MinPilotVersion`).

Only the public forms pip itself writes are taken: an optional epoch `N!`, a release `N(.N)*`, an optional pre-release
(a, b, rc), post-release (.postN) and development release (.devN), and a local label (+...). The local label does not
order (a build of 1.4.2 is 1.4.2 to the broker).
"""

from __future__ import annotations

import re
from typing import Tuple

#: Longest version string taken (a site map field, a JDL value, a setting).
MAX_VERSION_CHARS = 64

_VERSION = re.compile(
    r"(?:(?P<epoch>\d{1,6})!)?(?P<release>\d{1,9}(?:\.\d{1,9}){0,5})"
    r"(?:(?P<pre>a|b|rc)(?P<pren>\d{1,9}))?"
    r"(?:\.post(?P<post>\d{1,9}))?"
    r"(?:\.dev(?P<dev>\d{1,9}))?"
    r"(?:\+(?P<local>[a-z0-9]+(?:\.[a-z0-9]+)*))?"
)

_PRE_RANK = {"a": 0, "b": 1, "rc": 2}

#: What sorts a version: (epoch, release padded, pre, post, dev). A release without a pre-release sorts after its
#: pre-releases; a .devN before the same version without it.
Key = Tuple[int, Tuple[int, ...], Tuple[int, int], int, Tuple[int, int]]


def version_key(text: str) -> Key:
    """The order of a version; ValueError naming what is expected when `text` is not one."""
    m = _VERSION.fullmatch(text.strip().lower()) if isinstance(text, str) and len(text) <= MAX_VERSION_CHARS else None
    if m is None:
        shown = repr(text)[:80] if isinstance(text, str) else type(text).__name__
        raise ValueError(f"{shown} is not a version such as \"1.4.2\" or \"2.0.0rc1\" (PEP 440, at most "
                         f"{MAX_VERSION_CHARS} characters)")
    release = tuple(int(x) for x in m.group("release").split("."))
    while len(release) > 1 and release[-1] == 0:
        release = release[:-1]
    pre = (_PRE_RANK[m.group("pre")], int(m.group("pren"))) if m.group("pre") else (3, 0)
    post = int(m.group("post")) if m.group("post") is not None else -1
    if m.group("dev") is not None and m.group("pre") is None and post < 0:
        pre = (-1, 0)  # 1.5.0.dev3 comes before 1.5.0a1, as PEP 440 orders them
    dev = (0, int(m.group("dev"))) if m.group("dev") is not None else (1, 0)
    return int(m.group("epoch") or 0), release, pre, post, dev


def check_version(text: str) -> str:
    """`text` stripped, once it is a version (ValueError otherwise)."""
    version_key(text)
    return text.strip()


def older_than(version: str, minimum: str) -> bool:
    """Whether `version` sorts before `minimum` (both valid versions)."""
    return version_key(version) < version_key(minimum)


__all__ = ["MAX_VERSION_CHARS", "check_version", "older_than", "version_key"]
