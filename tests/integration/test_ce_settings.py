"""`gridpilot ce` configuration and command line: bad input is a clear error naming the file, line or flag and the
field; a good configuration runs one real cycle against a real central with the local backend."""

from __future__ import annotations

import platform
import subprocess
import sys
import time

import pytest
from support.ce import CE, SITE, ce_grid, shell_jdl

from gridpilot.ce.backend import Resources
from gridpilot.ce.settings import load_settings
from gridpilot.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "ce.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, words", [
    ("backend: pbs\n", "field 'backend' must be one of slurm, htcondor, local, arc, got 'pbs'"),
    ("central_url: x\nmax_queued: many\n", "ce.yaml:2: field 'max_queued' must be a whole number"),
    ("max_running: 0\n", "ce.yaml:1: field 'max_running' must be at least 1"),
    ("cycle_interval: -1\n", "field 'cycle_interval' must be more than 0"),
    ("colour: blue\n", "ce.yaml:1: unknown field 'colour'"),
    # A shape's error points at its own item.
    ("shapes:\n  - {cores: 2}\n  - {cores: 2, gpu: 1}\n", "ce.yaml:3: field 'shapes[1]' has unknown keys ['gpu']"),
    ("shapes:\n  - {cores: 1}\n\n  - cores: 0\n", "ce.yaml:4: field 'shapes[1]': cores must be a whole number of at least 1"),
    ("shapes:\n  - {gpu_model: A100}\n", "ce.yaml:2: field 'shapes[0]': gpu_model 'A100' is given but gpus is 0"),
    ("shapes:\n  - {gpus: -1}\n", "ce.yaml:2: field 'shapes[0]': gpus must be a whole number of at least 0"),
    ("shapes:\n  - 4\n", "ce.yaml:2: field 'shapes[0]' must be a mapping"),
    ("environment: [a, b]\n", "field 'environment' must be a mapping"),
    ("environment:\n  GOOD: x\n  A-B: y\n", "ce.yaml:3: field 'environment': variable name 'A-B' is not a valid shell name"),
    ("environment:\n  1ABC: x\n", "ce.yaml:2: field 'environment': variable name '1ABC'"),
    # Pilots whose token would have to outlive what central mints (2 days): queue wait + wall time + margin.
    ("wall_time: 172800\n", "ce.yaml:1: field 'wall_time': pilots of wall time 172800 s need an agent token living "
                            "177060 s (max_queue_time 3600 + cycle_interval 60 + wall time 172800 + token_margin 600)"
                            ", and central mints pilot tokens for at most 172800 s"),
    ("shapes:\n  - {}\n  - {wall_time: 170000}\n", "ce.yaml:3: field 'shapes[1].wall_time': pilots of wall time 170000 s"),
    ("max_queue_time: 170000\n", "ce.yaml:1: field 'max_queue_time': pilots of wall time 3600 s need"),
    ("central_url: 127.0.0.1:8765\n", "ce.yaml:1: field 'central_url' must start with http:// or https://"),
    ("metrics_port: 70000\n", "ce.yaml:1: field 'metrics_port' must be a port number from 0 to 65535, got 70000"),
    ("metrics_port: nine\n", "ce.yaml:1: field 'metrics_port' must be a whole number"),
    ("central_backoff_max: 0\n", "ce.yaml:1: field 'central_backoff_max' must be more than 0"),
    ("central_down_log_interval: -5\n", "ce.yaml:1: field 'central_down_log_interval' must be more than 0"),
    ("- just\n- a list\n", "must be a mapping of field: value"),
    ("backend: [\n", "not valid YAML"),
])
def test_bad_configuration_says_where_and_what(tmp_path, text, words):
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, text))
    assert words in str(e.value)


def test_the_longest_token_central_mints_is_the_limit():
    from gridpilot.central import pilots
    from gridpilot.client import PILOT_TOKEN_MAX_TTL_S

    assert pilots.PILOT_TOKEN_MAX_TTL_S is PILOT_TOKEN_MAX_TTL_S, "central and the CE share one limit"
    wall = int(PILOT_TOKEN_MAX_TTL_S - 3600 - 60 - 600)
    s = load_settings(None, {"wall_time": wall})
    assert s.pilot_token_ttl(wall) == PILOT_TOKEN_MAX_TTL_S
    with pytest.raises(ConfigError, match="option --wall-time: field 'wall_time'"):
        load_settings(None, {"wall_time": wall + 1})


def test_gpu_shapes_are_read(tmp_path):
    p = write(tmp_path, "shapes:\n  - {}\n  - {gpus: 2, gpu_vendor: NVIDIA, gpu_model: A100}\n")
    assert load_settings(p).resource_shapes() == [Resources(1, 2000, 3600),
                                                  Resources(1, 2000, 3600, 2, "NVIDIA", "A100")]


def test_flags_override_the_file_and_shapes_default_to_the_queue(tmp_path):
    p = write(tmp_path, "backend: slurm\ncores: 2\nmemory_mb: 4000\nwall_time: 7200\nshapes:\n"
                        "  - {cores: 8}\n  - {}\n")
    s = load_settings(p, {"backend": "local", "per_cycle": "3", "site": None})
    assert (s.backend, s.per_cycle) == ("local", 3)
    assert s.resource_shapes() == [Resources(2, 4000, 7200), Resources(8, 4000, 7200)]
    with pytest.raises(ConfigError, match="option --max-queued: field 'max_queued' must be a whole number"):
        load_settings(p, {"max_queued": "lots"})


def gridpilot(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "gridpilot", "ce", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_the_command_says_what_is_wrong(tmp_path):
    r = gridpilot("--backend", "local", "--token-file", str(tmp_path / "missing"), "--once")
    assert r.returncode == 2 and f"token_file {tmp_path / 'missing'}: No such file or directory" in r.stderr
    r = gridpilot("--config", str(write(tmp_path, "per_cycle: 0\n")), "--once")
    assert r.returncode == 2 and "field 'per_cycle' must be at least 1" in r.stderr


def test_a_bad_environment_name_is_refused_before_central_is_asked(tmp_path):
    # Nothing listens on port 9 and there is no token file: a CE that got that far would say so instead.
    p = write(tmp_path, f"central_url: http://127.0.0.1:9\ntoken_file: {tmp_path / 'missing'}\n"
                        "environment:\n  X509_CERT_DIR: /etc/grid-security/certificates\n  SITE-NAME: x\n")
    r = gridpilot("--config", str(p), "--once")
    assert r.returncode == 2
    assert f"{p}:5: field 'environment': variable name 'SITE-NAME' is not a valid shell name" in r.stderr, r.stderr


def test_one_cycle_from_the_command_line(tmp_path):
    with ce_grid(tmp_path / "grid") as g:
        job_id = g.user.submit(shell_jdl("true"))
        conf = g.settings("local", pilot_dir=str(tmp_path / "pilots"))
        yaml_text = "".join(f"{k}: {v!r}\n" for k, v in (
            ("central_url", conf.central_url), ("token_file", conf.token_file), ("backend", "local"),
            ("pilot_dir", conf.pilot_dir), ("install_path", conf.install_path), ("memory_mb", 500)))
        yaml_text += "environment:\n" + "".join(f"  {k}: {v!r}\n" for k, v in conf.environment.items())
        p = write(tmp_path, yaml_text)
        r = gridpilot("--config", str(p), "--once")
        assert r.returncode == 0, r.stderr
        assert f"site {SITE}, CE {CE}" in r.stdout and "backend local" in r.stdout
        assert "waiting jobs 1c/500MB/3600s: 1" in r.stdout and "submitted 1" in r.stdout, r.stdout
        # The pilot it left running on its own runs the job.
        deadline = time.monotonic() + 90
        while g.job(job_id)["state"] != "DONE":
            assert time.monotonic() < deadline, g.trace_text(job_id)
            time.sleep(0.3)
        assert 'BatchId GRIDPILOT_BATCH_ID = "local:' in g.trace_text(job_id)
        # A CE must hold a ce token, and one bound to the site it says.
        r = gridpilot("--config", str(p), "--site", "ELSEWHERE", "--once")
        assert r.returncode == 2 and "field 'site' is 'ELSEWHERE' but the CE token is bound to site" in r.stderr
        agent_token = tmp_path / "agent.token"
        agent_token.write_text(g.admin.mint_token("agent", "a", site=SITE, ce=CE))
        r = gridpilot("--config", str(p), "--token-file", str(agent_token), "--once")
        assert r.returncode == 2 and "has role 'agent'; `gridpilot ce` needs a ce token" in r.stderr


def test_a_pilot_version_missing_from_the_tree_is_refused_by_the_command(tmp_path):
    # Before central is asked anything (nothing listens on port 9): the flags name the field and the offer.
    launcher = tmp_path / "tree" / "1.0.0" / platform.machine() / "bin" / "gridpilot"
    launcher.parent.mkdir(parents=True)
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    r = gridpilot("--central-url", "http://127.0.0.1:9", "--pilot-tree", str(tmp_path / "tree"), "--pilot-version",
                  "2.0.0", "--once")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"gridpilot ce: option --pilot-version: field 'pilot_version': pilot_version 2.0.0: pilot_tree "
        f"{tmp_path / 'tree'} has no version 2.0.0 (offered: 1.0.0); no pilot of another version is submitted "
        "instead"], r.stderr
    r = gridpilot("--central-url", "http://127.0.0.1:9", "--pilot-tree", str(tmp_path / "tree"), "--pilot-version",
                  "../1.0.0", "--once")
    assert r.returncode == 2 and "option --pilot-version: field 'pilot_version' must be 'latest' or a version" \
        in r.stderr, r.stderr
