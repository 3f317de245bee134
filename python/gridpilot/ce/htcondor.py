"""HTCondor: pilots through the `htcondor` Python bindings (`Submit(...)` queued through the schedd), states from the
schedd's queue and then its history, removal with JobAction.Remove.

The submit description is a pure function of the pilot (submit_description), so it is tested without a schedd.
Resources map as the ARC Control Tower maps a job description: request_cpus, request_memory (MB), request_gpus and
MaxRuntime (seconds), which the description also enforces itself (periodic_remove) where the pool has no policy for it.
Every pilot carries `GridpilotCE = "<CE>"` in its ad, so one constraint finds this CE's pilots.

PyPI's `htcondor` 24+ ships the version-2 bindings as `htcondor2` (same Submit / Schedd / JobAction); older
installations have them as `htcondor`. Either is used.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from gridpilot.ce.backend import FAILED, FINISHED, HELD, QUEUED, RUNNING, BatchBackend, PilotSubmission
from gridpilot.errors import BatchError

CE_ATTRIBUTE = "GridpilotCE"
#: JobStatus codes (HTCondor manual, "Job ClassAd Attributes") as pilot states. Completed counts as finished
#: only with ExitCode 0.
_STATUS = {1: QUEUED, 2: RUNNING, 3: FAILED, 4: FINISHED, 5: HELD, 6: RUNNING, 7: HELD}


def bindings() -> Any:
    """The HTCondor Python bindings module; BatchError when neither name imports."""
    try:
        import htcondor2 as htc
    except ImportError:
        try:
            import htcondor as htc  # type: ignore[no-redef,unused-ignore]
        except ImportError as e:
            raise BatchError("the htcondor backend needs the HTCondor Python bindings (pip install htcondor)") from e
    return htc


def _quote(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def submit_description(pilot: PilotSubmission, ce: str, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The submit description of one pilot, as the keys and values `htcondor.Submit` takes."""
    r = pilot.resources
    d = {
        "universe": "vanilla",
        "executable": str(pilot.script),
        "initialdir": str(pilot.workdir),
        "output": str(pilot.output),
        "error": str(pilot.output) + ".err",
        "log": str(pilot.workdir / "condor.log"),
        "batch_name": f"gridpilot.{ce}",
        "request_cpus": str(r.cores),
        "request_memory": str(r.memory_mb),
        "+MaxRuntime": str(r.wall_s),
        # The pilot's wall time, enforced here too: a running pilot past it is removed (its runner stopped long
        # before, at the slot TTL the script gives it).
        "periodic_remove": f"JobStatus == 2 && (time() - EnteredCurrentStatus) > {r.wall_s}",
        # The token file and the installation are on a filesystem the nodes share, as with Slurm.
        "should_transfer_files": "NO",
        "getenv": "false",
        f"+{CE_ATTRIBUTE}": _quote(ce),
        "+GridpilotPilot": _quote(pilot.name),
    }
    if r.gpus:
        d["request_gpus"] = str(r.gpus)
    for k, v in (extra or {}).items():
        d[k] = str(v)
    return d


def state_from_ad(ad: Mapping[str, Any]) -> str:
    st = _STATUS.get(int(ad.get("JobStatus", 1)), QUEUED)
    if st == FINISHED and int(ad.get("ExitCode", 0) or 0) != 0:
        return FAILED
    return st


def exit_from_ad(ad: Mapping[str, Any]) -> Optional[int]:
    """A completed job's exit as one code (-signal when a signal ended it), from its ad; None when the ad has none."""
    if ad.get("ExitBySignal") and ad.get("ExitSignal") is not None:
        return -int(ad["ExitSignal"])
    code = ad.get("ExitCode")
    return None if code is None else int(code)


def _batch_id(ad: Mapping[str, Any]) -> str:
    return f"{int(ad['ClusterId'])}.{int(ad['ProcId'])}"


class HTCondorBackend(BatchBackend):
    name = "htcondor"
    _PROJECTION = ["ClusterId", "ProcId", "JobStatus", "ExitCode", "ExitBySignal", "ExitSignal", "HoldReason"]

    def __init__(self, ce: str, *, schedd: Optional[str] = None, extra: Optional[Mapping[str, str]] = None) -> None:
        self.htc = bindings()
        self.ce = ce
        self.extra = dict(extra or {})
        try:
            if schedd:
                ad = self.htc.Collector().locate(self.htc.DaemonTypes.Schedd, schedd)
                self.schedd = self.htc.Schedd(ad)
            else:
                self.schedd = self.htc.Schedd()
        except Exception as e:  # the bindings raise their own HTCondorException
            raise BatchError(f"no HTCondor schedd {schedd or '(local)'}: {e}") from e
        self.constraint = f"{CE_ATTRIBUTE} == {_quote(ce)}"

    def submit(self, pilot: PilotSubmission) -> str:
        sub = self.htc.Submit(submit_description(pilot, self.ce, self.extra))
        try:
            result = self.schedd.submit(sub, count=1)
        except Exception as e:
            raise BatchError(f"submitting pilot {pilot.name} to the schedd: {e}") from e
        return f"{result.cluster()}.0"

    def states(self) -> Dict[str, str]:
        try:
            ads: List[Any] = self.schedd.query(constraint=self.constraint, projection=self._PROJECTION)
        except Exception as e:
            raise BatchError(f"querying the schedd: {e}") from e
        return {_batch_id(ad): state_from_ad(ad) for ad in ads}

    def _history_ad(self, batch_id: str) -> Optional[Any]:
        """The schedd's history ad of a finished pilot, or None when it has none (yet)."""
        cluster, _, proc = batch_id.partition(".")
        try:
            ads = self.schedd.history(constraint=f"ClusterId == {int(cluster)} && ProcId == {int(proc or 0)}",
                                      projection=self._PROJECTION, match=1)
        except Exception as e:
            raise BatchError(f"reading the schedd's history for {batch_id}: {e}") from e
        for ad in ads:
            return ad
        return None

    def state_of(self, batch_id: str) -> Optional[str]:
        ad = self._history_ad(batch_id)
        return None if ad is None else state_from_ad(ad)

    def exit_code(self, batch_id: str) -> Optional[int]:
        ad = self._history_ad(batch_id)
        return None if ad is None else exit_from_ad(ad)

    def remove(self, batch_id: str) -> None:
        try:
            self.schedd.act(self.htc.JobAction.Remove, [batch_id], reason="gridpilot CE: pilot stuck in the queue")
        except Exception as e:
            raise BatchError(f"removing pilot {batch_id}: {e}") from e
