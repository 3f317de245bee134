"""The exit codes of the `gridpilot` commands people type: node, demo, jdl, central init|serve|token|keys, submit, jobs,
job, trace, kill, resubmit, why, top, get, ls, cp, spy. `gridpilot runner` exits with the runner's codes
(exitcodes.py) and `gridpilot ce` with the CE's (ce/command.py); a number both use means the same in both (2:
configuration, 10: central unreachable).
"""

from __future__ import annotations

from gridpilot import exitcodes

#: Done.
OK = 0
#: The command ran and the answer is no: central refused (the line says its status and code), a job did not end
#: DONE (`submit --wait`, `trace --follow`), a JDL is invalid (`jdl check`; with `--strict`, an unknown attribute
#: too), a demo job ended unexpectedly, the node cannot run any job (`node check`).
FAILED = 1
#: A bad argument, file or configuration (the line names it), or a missing installation piece (the line says what
#: to install); nothing was sent.
USAGE = exitcodes.CONFIG
#: `--wait`/`--timeout` ran out before the job ended (it goes on).
TIMEOUT = 3
#: Central (for `central init|serve|token|keys`: its database) could not be reached; worth trying again later.
UNREACHABLE = exitcodes.CENTRAL_UNREACHABLE
#: Ctrl-C.
INTERRUPTED = 130
#: Whoever read the output went away (`gridpilot trace 8 | head -2`): the code a program killed by SIGPIPE has
#: in the shell, which is what `set -o pipefail` scripts expect of `cat` or `grep` in the same place.
BROKEN_PIPE = 141

#: For `gridpilot --help` (and docs/users.md says the same).
HELP = f"""\
exit codes (`gridpilot runner` and `gridpilot ce` have their own):
  {OK:<3}  ok
  {FAILED:<3}  ran but failed: central refused, the job did not end DONE, invalid JDL
  {USAGE:<3}  bad argument or configuration (nothing was sent), or a missing extra
  {TIMEOUT:<3}  --wait/--timeout ran out; the job goes on
  {UNREACHABLE:<3}  central (or, for central init|serve|token|keys, its database) unreachable
  {INTERRUPTED:<3}  interrupted (Ctrl-C)
  {BROKEN_PIPE:<3}  the reader of the output went away (e.g. | head)"""

__all__ = ["BROKEN_PIPE", "FAILED", "HELP", "INTERRUPTED", "OK", "TIMEOUT", "UNREACHABLE", "USAGE"]
