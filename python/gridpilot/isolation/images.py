"""Choosing a job's container image: pure, on a listing of the images directory.

An image is a directory (or an Apptainer .sif file) named <os><major>[.<minor>][-<arch>][-<tag>]: el9-x86_64,
el9.4-x86_64, el8-aarch64-2024.06, debian12-x86_64. It suits a job whose platform has the same OS family (el, slc,
centos, alma, rocky and rhel are one family) and major release, and the job's architecture (the node's when the job
names none; an image that names none is taken to be the node's). Among those the highest minor release wins, then
the highest tag. The image of the container the pilot itself runs in (JOB_CONTAINER_PATH) overrides the choice, then
the site's image (site_image); the default image (default_image) is what a job gets that names no platform, or one no
image suits.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple, Union

from gridpilot.jdl.platform import Platform, normalise_arch, normalise_os

_IMAGE = re.compile(
    r"^(?P<os>[a-z]+?)(?P<major>\d+)(?:\.(?P<minor>\d+))?"
    r"(?:[-_](?P<arch>x86_64|amd64|aarch64|arm64|riscv64|ppc64le))?(?:[-_](?P<tag>.+?))?(?:\.sif)?$"
)


@dataclass(frozen=True)
class ImageName:
    name: str
    os: str
    major: int
    minor: Optional[int]
    arch: Optional[str]
    tag: Optional[str]


@dataclass(frozen=True)
class ImageChoice:
    """The image a job runs in (None: no container) and why, for the job's trace."""

    path: Optional[str]
    why: str


def parse_image_name(name: str) -> Optional[ImageName]:
    """The parts of an image's name, None for a name that does not follow the scheme (it is then never chosen)."""
    m = _IMAGE.match(name.lower())
    if m is None:
        return None
    minor = m.group("minor")
    return ImageName(name, normalise_os(m.group("os")), int(m.group("major")), int(minor) if minor else None,
                     normalise_arch(m.group("arch")) if m.group("arch") else None, m.group("tag"))


def _version_key(tag: Optional[str]) -> Tuple[Union[Tuple[int, int], Tuple[int, str]], ...]:
    if tag is None:
        return ()
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-_]", tag))


def best_image(names: Iterable[str], platform: Platform, host_arch: str) -> Optional[str]:
    """The name of the highest image that suits `platform`, or None."""
    want_arch = platform.arch or host_arch
    fitting: List[ImageName] = []
    for n in names:
        img = parse_image_name(n)
        if img is None or img.os != platform.os or img.major != platform.major:
            continue
        if (img.arch or host_arch) != want_arch:
            continue
        fitting.append(img)
    if not fitting:
        return None
    best = max(fitting, key=lambda i: (-1 if i.minor is None else i.minor, i.arch is not None, _version_key(i.tag), i.name))
    return best.name


def choose_image(
    listing: Iterable[str],
    *,
    images_dir: Optional[str],
    platform: Optional[Platform],
    host_arch: str,
    default_image: Optional[str] = None,
    site_image: Optional[str] = None,
    inherited_image: Optional[str] = None,
) -> ImageChoice:
    """The job's image from the images directory's `listing` (names only) and the configuration.
    `inherited_image`: the image of the container this pilot itself runs in (JOB_CONTAINER_PATH, see
    isolation/nesting.py), which its jobs run in too, before site_image."""

    def path(name: str) -> str:
        return name if os.path.isabs(name) or images_dir is None else os.path.join(images_dir, name)

    if inherited_image:
        return ImageChoice(path(inherited_image), f"image {path(inherited_image)} from JOB_CONTAINER_PATH")
    if site_image:
        return ImageChoice(path(site_image), f"site image {path(site_image)} (site_image overrides the job's platform)")
    if platform is not None and images_dir:
        best = best_image(listing, platform, host_arch)
        if best is not None:
            return ImageChoice(path(best), f"image {path(best)}, the highest in {images_dir} for platform {platform}")
        if default_image:
            return ImageChoice(path(default_image), f"no image in {images_dir} suits platform {platform} on "
                                                    f"{host_arch}: default image {path(default_image)}")
        return ImageChoice(None, f"no image in {images_dir} suits platform {platform} on {host_arch}, "
                                 f"and no default_image is configured")
    if default_image:
        what = "the job names no platform" if platform is None else "no images_dir is configured"
        return ImageChoice(path(default_image), f"{what}: default image {path(default_image)}")
    if platform is None:
        return ImageChoice(None, "the job names no platform and no default_image is configured")
    return ImageChoice(None, f"no images_dir and no default_image configured for platform {platform}")
