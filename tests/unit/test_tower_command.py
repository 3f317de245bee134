"""`gridpilot tower` on bad input: one line naming the problem on stderr and exit 2 (cli_codes.USAGE), before any
request is sent."""

from __future__ import annotations

import os
from pathlib import Path

from gridpilot import cli, cli_codes


def test_a_missing_configuration_file_is_one_line_and_exit_2(tmp_path: Path, capsys):
    code = cli.main(["tower", "--config", str(tmp_path / "nope.yaml"), "--once"])
    err = capsys.readouterr().err
    assert code == cli_codes.USAGE
    assert err.count("\n") == 1 and "nope.yaml: cannot read the tower configuration" in err, err


def test_a_token_file_others_can_read_is_refused(tmp_path: Path, capsys):
    token = tmp_path / "t.token"
    token.write_text("x")
    os.chmod(token, 0o644)
    key = tmp_path / "k.pem"
    key.write_text("k")
    os.chmod(key, 0o600)
    cfg = tmp_path / "tower.yaml"
    cfg.write_text(f"central_url: http://127.0.0.1:9\narc_cert: {key}\narc_key: {key}\nsites:\n"
                   f"  - {{site: S, token_file: {token}, arc_ces: [https://arc/rest], install_path: /gp}}\n")
    code = cli.main(["tower", "--config", str(cfg), "--once", "--state-dir", str(tmp_path / "st")])
    err = capsys.readouterr().err
    assert code == cli_codes.USAGE and "t.token is readable by others" in err, err
