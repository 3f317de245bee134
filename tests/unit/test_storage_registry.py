"""Storage elements from configuration, and the errors bad configuration gives."""

from __future__ import annotations

import pytest
from support.xrootd_server import backend_or_skip

from gridpilot.errors import ConfigError, StorageError
from gridpilot.storage.local import LocalStorageElement
from gridpilot.storage.registry import build_registry, load_registry
from gridpilot.storage.xrootd_element import XRootDStorageElement


def test_yaml_list_builds_both_kinds_and_lookups_ignore_case(tmp_path):
    backend_or_skip("commands")
    cfg = tmp_path / "ses.yaml"
    cfg.write_text(
        f"""
storage_elements:
  - name: ALICE::CERN::EOS
    url: root://127.0.0.1:1094//eos/alice
    backend: commands
  - name: LOCAL::SITE::DISK
    url: file://{tmp_path}/se
    kind: file
"""
    )
    reg = load_registry(cfg)
    assert reg.names == ["ALICE::CERN::EOS", "LOCAL::SITE::DISK"]
    eos = reg.get("alice::cern::eos")
    assert isinstance(eos, XRootDStorageElement) and eos.kind == "root" and eos.backend == "commands"
    assert isinstance(reg.get("Local::Site::Disk"), LocalStorageElement)
    assert reg.for_url(f"file://{tmp_path}/se/ab/x") is reg.get("LOCAL::SITE::DISK")
    assert reg.for_url("root://elsewhere//x") is None
    with pytest.raises(StorageError, match="NO::SUCH::SE.*unknown storage element.*ALICE::CERN::EOS"):
        reg.get("NO::SUCH::SE")


def test_unknown_scheme_names_the_entry_and_the_scheme():
    with pytest.raises(ConfigError, match=r"#2 \(B\): unsupported URL scheme.*'s3'"):
        build_registry([{"name": "A", "url": "file:///a"}, {"name": "B", "url": "s3://bucket/x"}])


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "A"}, "'url' missing"),
        ({"url": "file:///a"}, "'name' missing"),
        ({"name": "A", "url": "file:///a", "kind": "root"}, "does not match"),
        ({"name": "A", "url": "file:///a", "kind": "tape"}, "unknown kind"),
        ({"name": "A", "url": "file:///a", "backend": "commands"}, "root:// elements only"),
        ({"name": "A", "url": "file://relative"}, "absolute path"),
        ({"name": "A", "url": "file:///a", "colour": "red"}, "unknown field"),
        ({"name": "A", "url": "root://h//x", "backend": "telepathy"}, "unknown XRootD back end"),
    ],
)
def test_bad_entries_say_what_is_wrong(entry, message):
    with pytest.raises(ConfigError, match=message):
        build_registry([entry])


def test_the_same_name_twice_is_refused():
    with pytest.raises(ConfigError, match="configured twice"):
        build_registry([{"name": "A::B", "url": "file:///a"}, {"name": "a::b", "url": "file:///b"}])


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_registry(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage_elements: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_registry(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert len(load_registry(empty)) == 0
