"""The one settings loader: the pilot's and the CE's configurations follow the same rules, both forms of a list that
either of them accepted before still work, and docs/configuration.md is what the declarations say."""

from __future__ import annotations

import importlib.util

import pytest

from gridpilot.ce.settings import load_settings
from gridpilot.config import load_config
from gridpilot.errors import ConfigError

from support.paths import ROOT


def configuration_docs():
    spec = importlib.util.spec_from_file_location("configuration_docs", ROOT / "tools" / "configuration_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_configuration_page_is_what_the_declarations_say():
    docs = configuration_docs()
    assert (ROOT / "docs" / "configuration.md").read_text() == docs.render(), \
        "docs/configuration.md is stale: run python tools/configuration_docs.py"


def test_the_page_names_every_key_variable_and_flag():
    from gridpilot.ce.settings import SCHEMA as CE
    from gridpilot.config import SCHEMA as PILOT

    docs = configuration_docs()
    page = docs.render()
    for name in PILOT.fields():
        assert f"| `{name}` |" in page and f"`GRIDPILOT_{name.upper()}`" in page
    for name in CE.fields():
        assert f"| `{name}` |" in page
    for flag in (*docs.flags_of("runner").values(), *docs.flags_of("ce").values()):
        assert f"`{flag}`" in page or flag in ("--help", "--config", "--log-level", "--once"), flag


def test_every_flag_of_the_runner_and_the_ce_sets_a_declared_field():
    from gridpilot.ce.settings import SCHEMA as CE
    from gridpilot.config import SCHEMA as PILOT

    docs = configuration_docs()
    assert set(docs.flags_of("runner")) - set(PILOT.fields()) == {"help", "config", "log_level"}
    assert set(docs.flags_of("ce")) - set(CE.fields()) == {"help", "config", "once"}


@pytest.mark.parametrize("text", ["A::B::C,D::E::F", "A::B::C, D::E::F", "A::B::C D::E::F", " A::B::C,\tD::E::F "])
def test_a_list_of_names_splits_on_commas_or_whitespace(text):
    assert load_config(environ={"GRIDPILOT_CLOSE_SE": text}).close_se == ["A::B::C", "D::E::F"]
    assert load_config(environ={}, overrides={"users": text}).users == ["A::B::C", "D::E::F"]


def test_a_list_of_paths_splits_on_commas_only_and_a_command_line_on_whitespace_only(tmp_path):
    binds = load_config(environ={"GRIDPILOT_CONTAINER_BINDS": "/my data:/data:ro, /cvmfs"}).container_binds
    assert binds == ["/my data:/data:ro", "/cvmfs"]
    conf = tmp_path / "ce.yaml"
    conf.write_text('slurm_args: "--qos normal --mail-type=END,FAIL"\n')
    assert load_settings(conf).slurm_args == ["--qos", "normal", "--mail-type=END,FAIL"]
    conf.write_text("slurm_args: [--qos normal]\n")
    assert load_settings(conf).slurm_args == ["--qos normal"], "a YAML list is taken item by item"


def test_an_optional_field_is_unset_by_null_or_by_the_text_none_in_both(tmp_path):
    conf = tmp_path / "ce.yaml"
    conf.write_text("metrics_port: none\nslurm_partition: null\npilot_user: ''\n")
    s = load_settings(conf)
    assert (s.metrics_port, s.slurm_partition, s.pilot_user) == (None, None, None)
    pilot = tmp_path / "pilot.yaml"
    pilot.write_text("slot_ttl: null\ncores: none\n")
    cfg = load_config(pilot, environ={})
    assert (cfg.slot_ttl, cfg.cores) == (None, None)


def test_a_bound_names_where_the_value_was_written(tmp_path):
    with pytest.raises(ConfigError, match=r"^environment variable GRIDPILOT_CORES: field 'cores' must be >= 1, got 0$"):
        load_config(environ={"GRIDPILOT_CORES": "0"})
    with pytest.raises(ConfigError, match=r"^option --pids-max: field 'pids_max' must be >= 0 \(0: no limit\)"):
        load_config(environ={}, overrides={"pids_max": -1})
    pilot = tmp_path / "pilot.yaml"
    pilot.write_text("site: S\ncontainer_order:\n  - podman\n  - rkt\n")
    with pytest.raises(ConfigError, match=r"pilot.yaml:4: field 'container_order' names an unknown runtime 'rkt'"):
        load_config(pilot, environ={})
    with pytest.raises(ConfigError, match=r"^option --per-cycle: field 'per_cycle' must be at least 1, got 0$"):
        load_settings(None, {"per_cycle": 0})
