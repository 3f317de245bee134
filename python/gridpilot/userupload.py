"""A user's local file onto a storage element and into the catalogue, verified: what `gridpilot submit` does with the
JDL's local Executable and InputFile files, and `gridpilot cp file:PATH LFN`.

The copy goes to a fresh physical name (placement.new_pfn, never reused) on the storage element the user names, or
central's default one (`GET /storage` answers it: the `default_se` setting of `central serve`, else the element
`central init` made, else the only one). put() returns only once the element itself has reported the size and
adler32 of the bytes sent (storage/base.py); only then is the LFN registered, with the user's token, which central
allows only in the user's own or granted areas (central/catalogue.py).

Nothing half-done is left behind: a file:// copy is written under a hidden temporary name and renamed when
verified, a root:// copy is opened with persist-on-successful-close (the server keeps it pending, unreadable, for
its `ofs.persist hold`, 10 minutes by default, then drops it, when the client dies without closing it), a copy
that fails verification is removed by put() itself, and a verified copy whose registration fails (central refuses,
or the command is interrupted) is removed here before the error goes on. A process killed (SIGKILL) after the copy
was verified and before central answered leaves at worst a complete, verified file that no LFN points to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from gridpilot.client import API, CentralClient
from gridpilot.errors import CentralError, ConfigError, FileAlreadyExists, StorageError, VerificationError
from gridpilot.storage.base import StorageElement
from gridpilot.storage.checksum import Digest
from gridpilot.storage.placement import new_pfn
from gridpilot.storage.registry import build_storage_element


def storage_listing(client: CentralClient) -> Tuple[List[Dict[str, Any]], Optional[str]]:
    """Central's storage elements and its default one's name (None when it names none)."""
    answer = client.request("GET", f"{API}/storage", idempotent=True)[1]
    return list(answer.get("elements") or []), answer.get("default")


def choose_element(elements: List[Dict[str, Any]], default: Optional[str], se: Optional[str]) -> StorageElement:
    """The storage element named `se` (any case), else central's default; ConfigError (one line, naming the choices)
    when there is no such element, or no default and none named."""
    names = ", ".join(e["name"] for e in elements) or "none"
    want = se if se is not None else default
    if want is None:
        raise ConfigError(f"central names no default storage element for users' files: choose one with --se NAME "
                          f"(central has: {names})")
    for e in elements:
        if e["name"].upper() == want.upper():
            try:
                return build_storage_element({"name": e["name"], "url": e["url"]}, f"storage element {e['name']}")
            except ConfigError as err:
                raise ConfigError(f"cannot use storage element {e['name']} from here: {err}") from None
    what = "--se" if se is not None else "central's default storage element"
    raise ConfigError(f"{what} {want!r}: no such storage element (central has: {names})")


def upload_to(client: CentralClient, element: StorageElement, local: Path, lfn: str,
              expected: Optional[Digest] = None) -> Dict[str, Any]:
    """upload_file on an element already chosen (sandbox.py uploads several files to one). With `expected`, bytes
    that differ from it (the file changed since it was read) are removed, not registered: VerificationError."""
    pfn = new_pfn(element)
    # put(): verified on the element (size, adler32) or removed and StorageError raised.
    digest = element.put(local, pfn)
    try:
        bad = digest.mismatches(expected) if expected is not None else []
        if bad:
            raise VerificationError(f"the local file changed while it was read: {'; '.join(bad)}; not registered",
                                    se=element.name, url=str(local), op="upload")
        return client.register_file(lfn=lfn, size=digest.size, adler32=digest.adler32, md5=digest.md5,
                                    se=element.name, pfn=pfn)
    except BaseException:
        # Refused (another user's LFN, outside the user's areas, a different file already there), central away, or
        # Ctrl-C: a verified copy that no LFN names would never be found again. Remove it, then say why.
        try:
            element.delete(pfn)
        except StorageError:
            pass
        raise


def upload_file(client: CentralClient, local: Path, lfn: str, *, se: Optional[str] = None) -> Dict[str, Any]:
    """Upload the local file `local` to storage element `se` (default: central's default one), verify its size and
    checksums there, register it as `lfn`; returns the registered catalogue entry (lfn, size, adler32, md5, owner,
    replicas, ...).

    An LFN already in the catalogue is refused (FileAlreadyExists) before anything is copied, as alien.py's `cp`
    refuses it: a second upload would only replace the registered copy by another and leave the first unnamed.
    Raises ConfigError for no usable storage element, StorageError (NoSuchFile for a missing local file) when the
    copy fails, CentralError when central refuses the registration; then nothing is registered and no copy is left.
    """
    elements, default = storage_listing(client)
    element = choose_element(elements, default, se)
    try:
        client.lookup_file(lfn)
    except CentralError as e:
        if e.status != 404:
            raise
    else:
        raise FileAlreadyExists("is already in the catalogue", se=element.name, url=lfn, op="upload")
    return upload_to(client, element, Path(local), lfn)


__all__ = ["choose_element", "storage_listing", "upload_file", "upload_to"]
