"""The `gridpilot` command: argument parsing and printing only; the work happens in the pieces it calls."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

import orjson

from gridpilot import __version__

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj: object) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n")


def _cmd_node(args: argparse.Namespace) -> int:
    from gridpilot import _native

    cpu = _native.cpu_info(proc=args.proc, sys=args.sys)
    gpus = _native.list_gpus(sysfs=args.sys, pci_ids=args.pci_ids)
    _print_json({"cpu": cpu.to_dict(), "gpus": [g.to_dict() for g in gpus]})
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gridpilot.demo import run_demo

    return run_demo(seconds=args.seconds)


def _cmd_jdl_check(args: argparse.Namespace) -> int:
    from gridpilot.errors import JdlError
    from gridpilot.jdl import load

    bad = 0
    for path in args.files:
        try:
            load(path)
        except JdlError as e:
            bad += 1
            print(f"{path}:{e.line}:{e.column}: {e.message}")
        except OSError as e:
            bad += 1
            print(f"{path}: cannot read: {e.strerror or e}")
    n = len(args.files)
    if bad:
        print(f"{bad} of {n} JDL file{'s' if n != 1 else ''} invalid", file=sys.stderr)
        return 1
    print(f"{n} JDL file{'s' if n != 1 else ''} OK")
    return 0


def _cmd_jdl_show(args: argparse.Namespace) -> int:
    from gridpilot.errors import JdlError
    from gridpilot.jdl import load

    try:
        job = load(args.file)
    except JdlError as e:
        print(f"{args.file}:{e.line}:{e.column}: {e.message}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{args.file}: cannot read: {e.strerror or e}", file=sys.stderr)
        return 1
    _print_json(job.to_dict())
    return 0


def _cmd_runner(args: argparse.Namespace) -> int:
    import logging

    from gridpilot.config import field_names, load_config
    from gridpilot.errors import ConfigError
    from gridpilot.pilot.runner import run_runner

    overrides = {name: getattr(args, name, None) for name in field_names()}
    try:
        cfg = load_config(args.config, overrides=overrides)
        cfg.agent_token()
    except ConfigError as e:
        sys.stderr.write(f"gridpilot runner: {e}\n")
        return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    return run_runner(cfg)


def _add_runner(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runner", help="run the JobRunner of this batch slot (pulls and runs jobs)")
    p.add_argument("--config", help="YAML configuration file (default: $GRIDPILOT_CONFIG)")
    p.add_argument("--central-url", dest="central_url", help="URL of the central service")
    p.add_argument("--token-file", dest="token_file", help="file holding the agent token")
    p.add_argument("--site")
    p.add_argument("--ce")
    p.add_argument("--partition")
    p.add_argument("--workdir", help="root of the jobs' work directories")
    p.add_argument("--cores", type=int, help="cores of this slot (default: from the batch system)")
    p.add_argument("--memory-mb", dest="memory_mb", type=int)
    p.add_argument("--slot-ttl", dest="slot_ttl", type=float, help="seconds this slot may run")
    p.add_argument("--max-empty-matches", dest="max_empty_matches", type=int)
    p.add_argument("--match-backoff", dest="match_backoff", type=float)
    p.add_argument("--heartbeat-interval", dest="heartbeat_interval", type=float)
    p.add_argument("--cgroups", choices=["auto", "off"])
    p.add_argument("--keep-workdir", dest="keep_workdir", action="store_const", const=True)
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=_cmd_runner)


def _add_node(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("node", help="show this worker node's CPU and GPUs as JSON")
    p.add_argument("--proc", default="/proc", help="procfs root (default /proc)")
    p.add_argument("--sys", default="/sys", help="sysfs root (default /sys)")
    p.add_argument("--pci-ids", default=None, help="pci.ids file for GPU model names (default: search the usual places)")
    p.set_defaults(func=_cmd_node)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the demo with live progress")
    p.add_argument("--seconds", type=float, default=6.0, help="how long the payload runs (default 6)")
    p.set_defaults(func=_cmd_demo)


def _add_jdl(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jdl", help="check job descriptions (JDL) or show them as typed JSON")
    jdl = p.add_subparsers(dest="jdl_command", metavar="ACTION", required=True)
    check = jdl.add_parser("check", help="validate JDL files; print each error as file:line:column: message")
    check.add_argument("files", nargs="+", metavar="FILE", help="JDL files")
    check.set_defaults(func=_cmd_jdl_check)
    show = jdl.add_parser("show", help="print the typed job description of a JDL file as JSON")
    show.add_argument("file", metavar="FILE", help="a JDL file")
    show.set_defaults(func=_cmd_jdl_show)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gridpilot", description="grid job pilot and central services")
    parser.add_argument("--version", action="version", version=f"gridpilot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_node, _add_demo, _add_jdl, _add_runner):
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Optional[Handler] = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
