"""Pilot configuration layers and the errors bad values give."""

from __future__ import annotations

import pytest

from gridpilot.config import load_config
from gridpilot.endpoints import DEFAULT_CENTRAL_URL, URL_FILE
from gridpilot.errors import ConfigError


def test_defaults(tmp_path):
    cfg = load_config(environ={"GRIDPILOT_STATE_DIR": str(tmp_path)})
    # Site and CE unset: the runner takes the agent token's.
    assert cfg.site is None and cfg.ce is None and cfg.cores is None and cfg.cgroups == "auto"
    assert cfg.central_url == DEFAULT_CENTRAL_URL and cfg.startup_window == 300.0


def test_central_url_resolution_order(tmp_path):
    """A set URL (flag, then environment, then file) wins; else the central.url `central serve` wrote into the
    state directory (state_dir, else GRIDPILOT_STATE_DIR); else the default."""
    state, other = tmp_path / "state", tmp_path / "other"
    for d, port in ((state, 8801), (other, 8802)):
        d.mkdir()
        (d / URL_FILE).write_text(f"http://127.0.0.1:{port}\n")
    f = tmp_path / "pilot.yaml"
    f.write_text("central_url: http://file.example:1/\n")
    env = {"GRIDPILOT_STATE_DIR": str(state), "GRIDPILOT_CENTRAL_URL": "http://env.example:2"}
    flag = {"central_url": "https://flag.example:3"}
    assert load_config(f, environ=env, overrides=flag).central_url == "https://flag.example:3"
    assert load_config(f, environ=env).central_url == "http://env.example:2"
    del env["GRIDPILOT_CENTRAL_URL"]
    assert load_config(f, environ=env).central_url == "http://file.example:1"
    assert load_config(environ=env).central_url == "http://127.0.0.1:8801"
    assert load_config(environ=env, overrides={"state_dir": str(other)}).central_url == "http://127.0.0.1:8802"
    (state / URL_FILE).unlink()
    assert load_config(environ=env).central_url == DEFAULT_CENTRAL_URL


def test_central_url_needs_a_scheme(tmp_path):
    with pytest.raises(ConfigError, match=r"field 'central_url' must start with http:// or https://, got '127.0.0.1:8799'"):
        load_config(environ={"GRIDPILOT_CENTRAL_URL": "127.0.0.1:8799"})


def test_layers_override_in_order(tmp_path):
    f = tmp_path / "pilot.yaml"
    f.write_text("site: CERN\ncores: 4\nclose_se: [ALICE::CERN::EOS]\nheartbeat_interval: 30\n")
    env = {"GRIDPILOT_CORES": "8", "GRIDPILOT_CLOSE_SE": "A::B::C, D::E::F", "GRIDPILOT_KEEP_WORKDIR": "yes"}
    cfg = load_config(f, environ=env, overrides={"cores": 2, "site": None})
    assert cfg.site == "CERN"  # from the file; the flag was not given
    assert cfg.cores == 2  # flag beats environment beats file
    assert cfg.close_se == ["A::B::C", "D::E::F"]
    assert cfg.keep_workdir is True
    assert cfg.heartbeat_interval == 30.0


def test_pci_ids_is_a_path_or_the_usual_places(tmp_path):
    assert load_config(environ={}).pci_ids is None, "None: the usual places"
    f = tmp_path / "p.yaml"
    f.write_text("pci_ids: /opt/site/pci.ids\n")
    assert load_config(f, environ={}).pci_ids == "/opt/site/pci.ids"
    assert load_config(f, environ={"GRIDPILOT_PCI_IDS": "/x/pci.ids"}).pci_ids == "/x/pci.ids"
    assert load_config(f, environ={}, overrides={"pci_ids": "/y/pci.ids"}).pci_ids == "/y/pci.ids"


def test_config_path_from_environment(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("ce: X::Y\n")
    assert load_config(environ={"GRIDPILOT_CONFIG": str(f)}).ce == "X::Y"


@pytest.mark.parametrize(
    "text,match",
    [
        ("site: A\nbogus: 1\n", r"p.yaml:2: unknown field 'bogus'"),
        ("site: A\ncores: many\n", r"p.yaml:2: field 'cores' must be an integer"),
        ("keep_workdir: maybe\n", r"p.yaml:1: field 'keep_workdir' must be true or false"),
        ("close_se: {a: 1}\n", r"p.yaml:1: field 'close_se' must be a list"),
        ("site: [unclosed\n", r"p.yaml:2:1: not valid YAML"),
        ("- a\n- b\n", r"must be a mapping"),
        ("cgroups: sometimes\n", r"'cgroups' must be 'auto' or 'off'"),
        ("cores: 0\n", r"'cores' must be >= 1"),
        ("stdout_max_mb: -1\n", r"'stdout_max_mb' must be >= 0 \(0: no cap\), got -1"),
        ("startup_window: 0\n", r"'startup_window' must be more than 0, got 0.0"),
        ("max_empty_matches: 0\n", r"'max_empty_matches' must be >= 1, got 0"),
    ],
)
def test_bad_file_says_where(tmp_path, text, match):
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(f, environ={})


def test_bad_environment_and_flag_say_which():
    with pytest.raises(ConfigError, match="environment variable GRIDPILOT_SLOT_TTL: field 'slot_ttl' must be a number"):
        load_config(environ={"GRIDPILOT_SLOT_TTL": "soon"})
    with pytest.raises(ConfigError, match="option --max-empty-matches"):
        load_config(environ={}, overrides={"max_empty_matches": "x"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/pilot.yaml", environ={})


def test_token_from_file(tmp_path):
    t = tmp_path / "token"
    t.write_text("abc.def.ghi\n")
    assert load_config(environ={"GRIDPILOT_TOKEN_FILE": str(t)}).agent_token() == "abc.def.ghi"
    with pytest.raises(ConfigError, match="no agent token"):
        load_config(environ={}).agent_token()
    assert load_config(environ={"GRIDPILOT_SLOT_TTL": "none"}).slot_ttl is None


def test_idle_window_and_report_grace(tmp_path):
    assert load_config(environ={}).idle_window_s == 900.0  # the ALICE pilot's 15 minutes
    f = tmp_path / "pilot.yaml"
    f.write_text("idle_window_s: 5\n")
    cfg = load_config(f, environ={"GRIDPILOT_REPORT_GRACE": "30"})
    assert (cfg.idle_window_s, cfg.report_grace) == (5.0, 30.0)
