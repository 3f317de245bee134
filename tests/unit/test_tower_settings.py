"""The tower's configuration: a good file loads into its site entries; each bad value is one ConfigError naming the
file's line and the field (sites[i].key), and secrets readable by others are refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gridpilot.errors import ConfigError
from gridpilot.tower.settings import load_settings


def _files(tmp_path: Path) -> dict:
    token = tmp_path / "site.token"
    token.write_text("t0ken\n")
    os.chmod(token, 0o600)
    key = tmp_path / "key.pem"
    key.write_text("KEY")
    os.chmod(key, 0o600)
    cert = tmp_path / "cert.pem"
    cert.write_text("CERT")
    return {"token": token, "key": key, "cert": cert}


def _write(tmp_path: Path, text: str) -> Path:
    f = _files(tmp_path)
    cfg = tmp_path / "tower.yaml"
    cfg.write_text(text.format(**{k: str(v) for k, v in f.items()}))
    return cfg


GOOD = """\
central_url: https://central.example.org
arc_cert: {cert}
arc_key: {key}
sites:
  - site: NOWAN
    token_file: {token}
    arc_ces: [https://arc1.example.org:443/arex/rest/1.0, https://arc2.example.org/arex/rest/1.0]
    install_path: /cvmfs/gridpilot.example.org/latest/x86_64
    site_map: {{cores: 8, ttl: 86400}}
    output_ses: [NOWAN::SE]
    queue: grid
max_jobs: 10
"""


def test_a_good_configuration_loads_its_sites(tmp_path: Path):
    s = load_settings(_write(tmp_path, GOOD), environ={})
    (site,) = s.site_configs()
    assert site.site == "NOWAN" and site.arc_ces[1] == "https://arc2.example.org/arex/rest/1.0"
    assert site.install_path.endswith("/x86_64") and dict(site.site_map) == {"cores": 8, "ttl": 86400}
    assert site.output_ses == ("NOWAN::SE",) and site.queue == "grid" and not site.arc_staging
    assert site.token() == "t0ken"
    assert s.max_jobs == 10 and s.database().name == "tower.sqlite"


@pytest.mark.parametrize("change, words", [
    (("arc_ces: [https://arc1.example.org:443/arex/rest/1.0, https://arc2.example.org/arex/rest/1.0]",
      "arc_ces: [http://arc1.example.org/arex/rest/1.0]"), "sites[0].arc_ces[0]' must be an https://"),
    (("arc_ces: [https://arc1.example.org:443/arex/rest/1.0, https://arc2.example.org/arex/rest/1.0]",
      "arc_ces: []"), "sites[0].arc_ces' must name at least one"),
    (("install_path: /cvmfs/gridpilot.example.org/latest/x86_64", "install_path: relative/path"),
     "sites[0].install_path' must be an absolute path"),
    (("site_map: {{cores: 8, ttl: 86400}}", "site_map: {{site: OTHER}}"), "sites[0].site_map.site' is the token's"),
    (("queue: grid", 'queue: "gr\\"id"'), "sites[0].queue' holds a character"),
    (("queue: grid", "arc_staging: maybe"), "sites[0].arc_staging' must be true or false"),
    (("queue: grid", "colour: red"), "sites[0]' has unknown keys ['colour']"),
    (("max_jobs: 10", "max_jobs: 0"), "field 'max_jobs' must be >= 1"),
    (("max_jobs: 10", "submit_batch: 5000"), "field 'submit_batch' must be at most 1000"),
    (("max_jobs: 10", "log_se: https://logs.example.org"), "field 'log_se' must be a file:// or root://"),
    (("max_jobs: 10", "ce_backoff_base: 100\nce_backoff_max: 10"), "'ce_backoff_max' must be at least"),
    (("arc_key: {key}\n", ""), "'arc_cert' and 'arc_key' go together"),
])
def test_a_bad_value_is_named_with_its_line(tmp_path: Path, change, words):
    old, new = change
    assert old in GOOD
    cfg = _write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, environ={})
    assert words in str(e.value), str(e.value)
    assert str(cfg) in str(e.value)


def test_a_site_served_twice_is_refused(tmp_path: Path):
    start = GOOD.index("  - site: NOWAN")
    end = GOOD.index("max_jobs")
    cfg = _write(tmp_path, GOOD[:end] + GOOD[start:end] + GOOD[end:])
    with pytest.raises(ConfigError, match=r"sites\[1\].site': 'NOWAN' is served twice \(also sites\[0\]\)"):
        load_settings(cfg, environ={})


def test_a_key_others_may_read_is_refused(tmp_path: Path):
    cfg = _write(tmp_path, GOOD)
    os.chmod(tmp_path / "key.pem", 0o644)
    with pytest.raises(ConfigError, match=r"key.pem is readable by others \(mode 0644\); chmod 600 it"):
        load_settings(cfg, environ={})


def test_a_token_others_may_read_is_refused_when_read(tmp_path: Path):
    s = load_settings(_write(tmp_path, GOOD), environ={})
    os.chmod(tmp_path / "site.token", 0o640)
    with pytest.raises(ConfigError, match="site.token is readable by others"):
        s.site_configs()[0].token()


def test_no_credential_for_arc_is_refused(tmp_path: Path):
    text = GOOD.replace("arc_cert: {cert}\narc_key: {key}\n", "")
    with pytest.raises(ConfigError, match="the ARC CEs need a credential"):
        load_settings(_write(tmp_path, text), environ={})


def test_environment_overrides_the_file(tmp_path: Path):
    s = load_settings(_write(tmp_path, GOOD), environ={"GRIDPILOT_TOWER_MAX_JOBS": "7"})
    assert s.max_jobs == 7
