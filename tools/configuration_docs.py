"""Write docs/configuration.md from the settings declarations (gridpilot.settings_loader and the classes declared to
it), so the page cannot drift from what the loaders accept. `--check`: exit 1 when the committed page is stale.

    python tools/configuration_docs.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict

from gridpilot import settings_loader
from gridpilot.ce.settings import SCHEMA as CE_SCHEMA
from gridpilot.central.settings import DB_URL_ENV, SIGNING_KEY_ENV
from gridpilot.cli import build_parser
from gridpilot.config import SCHEMA as PILOT_SCHEMA
from gridpilot.endpoints import STATE_DIR_ENV
from gridpilot.tower.settings import SCHEMA as TOWER_SCHEMA

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def subparser(*path: str) -> argparse.ArgumentParser:
    """The parser of `gridpilot <path...>`."""
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def flags_of(command: str) -> Dict[str, str]:
    """{field name: its long flag} of `gridpilot <command>`, read from the parser itself."""
    out: Dict[str, str] = {}
    for action in subparser(command)._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs:
            out[action.dest] = longs[0]
    return out


def central_flags() -> str:
    """`gridpilot central serve`'s flags, as its parser declares them."""
    rows = ["| flag | default | |", "|---|---|---|"]
    for action in subparser("central", "serve")._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[-1]
        default = "" if action.default in (None, False) else f"`{action.default}`"
        text = " ".join((action.help or "").replace("%(default)s", str(action.default)).split()).replace("|", "\\|")
        rows.append(f"| `{flag}` | {default} | {text} |")
    return "\n".join(rows) + "\n"


def render() -> str:
    doc = settings_loader.__doc__ or ""
    rules = doc[doc.index("\n- "):].strip()  # the rules, not how a class declares its fields
    return f"""# Configuration

<!-- Written by tools/configuration_docs.py from the declarations in python/gridpilot/config.py and
python/gridpilot/ce/settings.py: edit those and run `python tools/configuration_docs.py` (a test fails when this
page is stale). -->

The pilot (`gridpilot runner`) and the computing element (`gridpilot ce`) read their settings the same way, with
one loader (python/gridpilot/settings_loader.py). Sizes are in MB, times in seconds.

## The rules

{rules}

## The pilot: `gridpilot runner`

A YAML file (`--config`, else `$GRIDPILOT_CONFIG`), then `GRIDPILOT_<KEY>` variables, then the flags. Central's URL,
when none is set: the `central.url` that `central serve` wrote into the state directory, else the default.

{settings_loader.reference(PILOT_SCHEMA, flags_of("runner"))}
## The computing element: `gridpilot ce`

A YAML file (`--config`), then the flags; no variables but `GRIDPILOT_CA_FILE`, which is `ca_file`'s default.
A shape is a mapping of {", ".join(f"`{k}`" for k in CE_SCHEMA.rules("shapes").keys)}.

{settings_loader.reference(CE_SCHEMA, flags_of("ce"))}
## Central: `gridpilot central serve`

Central reads no configuration file: its flags, three of them falling back to a variable (`--state-dir` to
`{STATE_DIR_ENV}`, `--db` to `{DB_URL_ENV}`, `--signing-key` to `{SIGNING_KEY_ENV}`), then the defaults
(python/gridpilot/central/settings.py). Every process serving one database should be given the same values.

{central_flags()}
## The tower: `gridpilot tower`

A YAML file (`--config`), then `GRIDPILOT_TOWER_<KEY>` variables, then the flags (docs/tower.md). A site entry is
a mapping of {", ".join(f"`{k}`" for k in TOWER_SCHEMA.rules("sites").keys)}.

{settings_loader.reference(TOWER_SCHEMA, flags_of("tower"))}"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is not what this writes")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE} is stale: run python tools/configuration_docs.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
