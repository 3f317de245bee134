"""Storage elements built from configuration: a list of {name, url, kind} (YAML file or already-parsed data).

    - name: ALICE::CERN::EOS
      url: root://eos.example.org:1094//eos/alice
      kind: root            # optional: taken from the URL's scheme; when given it must agree with it
      backend: commands     # optional, root only: "bindings" or "commands" (default: bindings when importable)
    - name: LOCAL::DISK
      url: file:///var/lib/gridpilot/se

A file may also hold {storage_elements: [...]}. SE names are matched without regard to case, as in ALICE.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import yaml  # type: ignore[import-untyped]  # (types-PyYAML is not a dependency)

from gridpilot.errors import ConfigError, StorageError, UnsupportedURL
from gridpilot.storage.base import StorageElement
from gridpilot.storage.local import LocalStorageElement
from gridpilot.storage.xrootd_element import XRootDStorageElement

KINDS: dict[str, type[StorageElement]] = {"file": LocalStorageElement, "root": XRootDStorageElement}
_FIELDS = {"name", "url", "kind", "backend"}


def kind_of_url(url: str) -> Optional[str]:
    """The storage kind serving `url`, from its scheme; None for a scheme no kind serves."""
    for kind, cls in KINDS.items():
        if url.startswith(cls.scheme):
            return kind
    return None


class Registry:
    """The configured storage elements, by name (case-insensitive)."""

    def __init__(self, elements: Sequence[StorageElement] = ()) -> None:
        self._by_key: dict[str, StorageElement] = {}
        for se in elements:
            self.add(se)

    def add(self, se: StorageElement) -> None:
        key = se.name.upper()
        if key in self._by_key:
            raise ConfigError(f"storage element {se.name!r} is configured twice")
        self._by_key[key] = se

    def get(self, name: str) -> StorageElement:
        """The element called `name`; StorageError naming the known ones if there is none."""
        se = self._by_key.get(name.upper())
        if se is None:
            known = ", ".join(s.name for s in self) or "none"
            raise StorageError(f"unknown storage element (configured: {known})", se=name, op="lookup")
        return se

    def find(self, name: str) -> Optional[StorageElement]:
        return self._by_key.get(name.upper())

    def for_url(self, pfn: str) -> Optional[StorageElement]:
        """The element whose prefix `pfn` lies under (the longest such prefix), if any."""
        owners = [se for se in self if se.owns(pfn)]
        return max(owners, key=lambda se: len(se.url)) if owners else None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.upper() in self._by_key

    def __iter__(self) -> Iterator[StorageElement]:
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)

    @property
    def names(self) -> list[str]:
        return [se.name for se in self]


def build_storage_element(entry: Mapping[str, Any], where: str = "storage element") -> StorageElement:
    """One element from one {name, url, kind, backend} mapping; `where` names it in errors."""
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a mapping with name and url, got {type(entry).__name__}")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    for field in ("name", "url"):
        if not isinstance(entry.get(field), str) or not entry[field]:
            raise ConfigError(f"{where}: field {field!r} missing or not a string")
    name, url = entry["name"], entry["url"]
    url_kind = kind_of_url(url)
    if url_kind is None:
        scheme = url.split("://", 1)[0] if "://" in url else url
        known = ", ".join(cls.scheme for cls in KINDS.values())
        raise ConfigError(f"{where} ({name}): unsupported URL scheme in {url!r}: {scheme!r} (supported: {known})")
    kind = entry.get("kind", url_kind)
    if kind not in KINDS:
        raise ConfigError(f"{where} ({name}): unknown kind {kind!r} (known: {', '.join(KINDS)})")
    if kind != url_kind:
        raise ConfigError(f"{where} ({name}): kind {kind!r} does not match the URL {url!r}")
    backend = entry.get("backend")
    if backend is not None and kind != "root":
        raise ConfigError(f"{where} ({name}): 'backend' applies to root:// elements only")
    try:
        if kind == "root":
            return XRootDStorageElement(name, url, backend=backend)
        return KINDS[kind](name, url)
    except (UnsupportedURL, StorageError) as e:
        raise ConfigError(f"{where} ({name}): {e}") from e


def build_registry(
    config: Union[Sequence[Mapping[str, Any]], Mapping[str, Any]], source: str = "configuration"
) -> Registry:
    """A Registry from a list of element mappings, or a mapping holding that list under `storage_elements`."""
    if isinstance(config, Mapping):
        if "storage_elements" not in config:
            raise ConfigError(f"{source}: no 'storage_elements' list")
        config = config["storage_elements"]
    if not isinstance(config, Sequence) or isinstance(config, (str, bytes)):
        raise ConfigError(f"{source}: expected a list of storage elements")
    registry = Registry()
    for i, entry in enumerate(config):
        se = build_storage_element(entry, f"{source}: storage element #{i + 1}")
        try:
            registry.add(se)
        except ConfigError as e:
            raise ConfigError(f"{source}: storage element #{i + 1}: {e}") from None
    return registry


def load_registry(path: Union[str, "os.PathLike[str]"]) -> Registry:
    """A Registry from a YAML file (see the module docstring for its form)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    return build_registry(data if data is not None else [], source=str(p))
