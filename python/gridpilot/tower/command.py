"""`gridpilot tower --config FILE [--once] [--json]`: check the configuration and every site's token against
central, then cycle (service.py) until SIGTERM or SIGINT, finishing the cycle under way.

Exit status (cli_codes.py): 0 a clean stop, or a `--once` cycle without errors; 1 the `--once` cycle had errors
(each on stderr, or in the JSON); 2 a bad configuration, token or credential (one line naming it); 10 central did
not answer at start, or `--once` and it did not answer during the cycle.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any, Dict, List

import orjson

from gridpilot import cli_codes
from gridpilot.client import CentralClient
from gridpilot.errors import CentralError, CentralUnreachable, CentralUntrusted, ConfigError
from gridpilot.settings_loader import field_names

#: Flags that set a setting of the same name (the rest are only in the file).
_FLAGS = ("central_url", "ca_file", "state_dir", "name", "cycle_interval", "log_level")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tower", help="the ARC control tower: run jobs of sites whose nodes have no network as ARC "
                                     "jobs (match, stage, submit, follow, validate outputs, report)")
    p.add_argument("--config", required=True, help="YAML configuration file (docs/tower.md)")
    p.add_argument("--central-url", dest="central_url")
    p.add_argument("--ca-file", dest="ca_file", metavar="PEM")
    p.add_argument("--state-dir", dest="state_dir", help="the tower's database and job directories")
    p.add_argument("--name", help="this tower's name (default tower@HOST)")
    p.add_argument("--cycle-interval", dest="cycle_interval", type=float, help="seconds between cycles")
    p.add_argument("--once", action="store_true", help="one cycle, then exit (1 if it had errors)")
    p.add_argument("--json", action="store_true", help="print each cycle's report as one JSON line")
    p.add_argument("--log-level", dest="log_level")
    p.set_defaults(func=run)


def _check_tokens(settings: Any) -> None:
    """Each site's token is a tower token bound to that site: a wrong one would have every match refused."""
    for site in settings.site_configs():
        client = CentralClient(settings.central_url, site.token(), ca_file=settings.ca_file, retries=2)
        try:
            me = client.whoami()
        except CentralUntrusted as e:
            raise ConfigError(str(e)) from e
        except CentralError as e:
            if e.status >= 500:
                raise CentralUnreachable(settings.central_url, str(e)) from e
            raise ConfigError(f"central refused the token in {site.token_file} (site {site.site}): {e}") from e
        finally:
            client.close()
        if me.get("role") != "tower":
            raise ConfigError(f"the token in {site.token_file} has role {me.get('role')!r}; a tower needs tower tokens "
                              "(gridpilot central token --role tower --subject NAME --site SITE --ce NAME)")
        if me.get("site") != site.site:
            raise ConfigError(f"the token in {site.token_file} is bound to site {me.get('site')!r}, not {site.site!r}")


def run(args: argparse.Namespace) -> int:
    from gridpilot.tower.service import Tower
    from gridpilot.tower.settings import SCHEMA, load_settings

    overrides = {n: getattr(args, n, None) for n in _FLAGS if n in field_names(SCHEMA)}
    try:
        settings = load_settings(args.config, overrides)
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        _check_tokens(settings)
        tower = Tower(settings)
    except ConfigError as e:
        sys.stderr.write(f"gridpilot tower: {e}\n")
        return cli_codes.USAGE
    except CentralUnreachable as e:
        sys.stderr.write(f"gridpilot tower: {e}\n")
        return cli_codes.UNREACHABLE
    stop = threading.Event()
    if not args.once:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    try:
        while True:
            report = tower.cycle()
            _print(report.to_dict(), args.json)
            if args.once:
                if any("unreachable" in e.lower() or "cannot connect" in e.lower() for e in report.errors):
                    return cli_codes.UNREACHABLE
                return cli_codes.FAILED if report.errors else cli_codes.OK
            if stop.wait(settings.cycle_interval):
                return cli_codes.OK
    finally:
        tower.close()


def _print(report: Dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        counts = ", ".join(f"{k} {report[k]}" for k in ("matched", "submitted", "finished", "published",
                                                          "reports_sent", "cleaned", "held"))
        sys.stdout.write(f"tower cycle: {counts}\n")
        errors: List[str] = report["errors"]
        for e in errors:
            sys.stderr.write(f"gridpilot tower: {e}\n")
    sys.stdout.flush()




__all__ = ["add_parser", "run"]
