"""`gridpilot offline [DIR]`: one job on a node without network, as the JobAgent and JobWrapper run it, with no
central and no storage element. The tower (aCT's native mode) puts the job there: an ARC session directory holding
`job.json` (the match: JDL, identity, the inputs with their sizes and checksums) and the input files.

The job goes through the agent's own JobRun (pilot/agent.py) and the ordinary JobWrapper: the same sandbox, samples,
rules, kill reasons, ALICE trace sentences and `proc` lines. What differs is only where things go:
- the reports: JobRun's client is a `RecordingCentral` that keeps every state, trace line and heartbeat sample
  instead of sending it;
- the files: the wrapper stages with an offline catalogue (pilot/offlinecatalogue.py): each input is copied from DIR
  into the work directory and checked against job.json's size and checksums (a missing or corrupt one ends the job
  ERROR_IB, INPUT_FILES, as a failed download would); each output is copied, verified, into DIR/<outputs_dir> and
  listed with its size and checksums.
At the end DIR/result.json is written atomically (docs/offline.md gives its format). A job whose payload and
validation succeeded ends its states with SAVING: the tower makes it DONE once it has stored and verified the
outputs on a real storage element. The pilot's log is DIR/gridpilot-offline.log.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import orjson

from gridpilot.client import CentralClient
from gridpilot.config import PilotConfig, load_config
from gridpilot.errors import CentralUnreachable, ConfigError, GridpilotError, JdlError
from gridpilot.isolation import cgroupfs, gpus as gpus_mod
from gridpilot.isolation.slot import Slot
from gridpilot.jdl import JobDescription, parse_job
from gridpilot.pilot import fdlimit, protocol
from gridpilot.pilot.agent import JobRun
from gridpilot.pilot.agentsettings import AgentSettings
from gridpilot.pilot.finalstate import final_path
from gridpilot.pilot.gpuarch import gpu_arch
from gridpilot.pilot.offlinecatalogue import OUTPUTS_SE, storage_elements
from gridpilot.pilot.sitemap import batch_job_id, node_gpus
from gridpilot.pilot.watchdog import LoopBeat
from gridpilot.states import JobStatus, KillReason
from gridpilot.storage.checksum import digest_file, normalize

log = logging.getLogger("gridpilot.offline")

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
LOG_FILE = "gridpilot-offline.log"
#: A kill request for the job: its existence in DIR is central's kill (the tower puts it there; docs/offline.md).
KILL_FILE = "kill.request"
#: What of kill.request is read: its first line, at most this many bytes, becomes the kill's reason in the trace.
MAX_KILL_REASON = 200
#: Seconds between two looks for kill.request: the offline run's control poll (pilot/heartbeat.py), a stat of one
#: file rather than a request to central, so the site's kill_poll_interval (sized for central's load) gives way.
KILL_POLL_S = 2.0
#: The version of job.json and result.json this runner reads and writes.
FORMAT = 1
#: Bounds of job.json (docs/offline.md): the file, its lists and its strings.
MAX_JOB_FILE_BYTES = 16 << 20
MAX_JDL_CHARS = 1 << 20
MAX_INPUTS = 10_000
MAX_PATH_CHARS = 4096
MAX_NAME_CHARS = 256
MAX_RESUBMISSION = 1_000_000
MAX_SIZE = (1 << 53) - 1
#: The work directories below DIR (one per job: alien-job-<id>, removed at the end unless keep_workdir).
WORK_SUBDIR = "workdir"
#: The files of DIR that are the runner's own: no input may be one of them.
RESERVED = frozenset({JOB_FILE, RESULT_FILE, LOG_FILE, WORK_SUBDIR, KILL_FILE})
#: What a job's final state becomes in result.json when the wrapper saved its outputs: the tower decides DONE.
SAVED = (JobStatus.DONE, JobStatus.DONE_WARN)

_HEX = re.compile(r"^(0x)?[0-9a-fA-F]+$")


class OfflineJobError(ConfigError):
    """job.json is not what docs/offline.md says: the message names the field (`inputs[2].size`)."""


@dataclass(frozen=True)
class OfflineInput:
    """An input job.json lists: the file DIR/name holds the content of `lfn`."""

    name: str
    lfn: str
    size: int
    adler32: Optional[str]
    md5: Optional[str]


@dataclass(frozen=True)
class OfflineJob:
    """job.json, checked."""

    job_id: int
    resubmission: int
    jdl: str
    user: str
    site: str
    ce: str
    inputs: List[OfflineInput]
    outputs_dir: str
    #: The catalogue directory of the outputs (central's match says it); None: /gridpilot/jobs/<job id>.
    output_dir: Optional[str] = None

    @classmethod
    def read(cls, job_dir: Path) -> OfflineJob:
        path = job_dir / JOB_FILE
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_JOB_FILE_BYTES + 1)
        except OSError as e:
            raise OfflineJobError(f"{path}: cannot be read: {e.strerror or e}") from None
        if len(data) > MAX_JOB_FILE_BYTES:
            raise OfflineJobError(f"{path}: larger than {MAX_JOB_FILE_BYTES} bytes")
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise OfflineJobError(f"{path}: not JSON: {e}") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Any) -> OfflineJob:
        if not isinstance(doc, dict):
            raise OfflineJobError("job.json: not a JSON object")
        if doc.get("format") != FORMAT:
            raise OfflineJobError(f"job.json: format: must be {FORMAT}, not {doc.get('format')!r}")
        outputs_dir = doc.get("outputs_dir", "out")
        _relative_path(outputs_dir, "outputs_dir", MAX_NAME_CHARS)
        if outputs_dir.split("/")[0] in RESERVED:
            raise OfflineJobError(f"job.json: outputs_dir: {outputs_dir!r} is one of the runner's own files")
        output_dir = doc.get("output_dir")
        if output_dir is not None and not (isinstance(output_dir, str) and output_dir.startswith("/")
                                           and 1 < len(output_dir) <= MAX_PATH_CHARS):
            raise OfflineJobError(f"job.json: output_dir: an absolute LFN directory of at most {MAX_PATH_CHARS} "
                                  f"characters, not {_show(output_dir)}")
        raw_inputs = doc.get("inputs", [])
        if not isinstance(raw_inputs, list) or len(raw_inputs) > MAX_INPUTS:
            raise OfflineJobError(f"job.json: inputs: a list of at most {MAX_INPUTS} entries")
        inputs = [_input(item, f"inputs[{i}]", outputs_dir) for i, item in enumerate(raw_inputs)]
        seen: Dict[str, str] = {}
        for i, item in enumerate(inputs):
            for key, value in (("lfn", item.lfn), ("name", item.name)):
                if f"{key}:{value}" in seen:
                    raise OfflineJobError(f"job.json: inputs[{i}].{key}: {value!r} is listed twice "
                                          f"(also {seen[f'{key}:{value}']})")
                seen[f"{key}:{value}"] = f"inputs[{i}]"
        return cls(
            job_id=_int(doc.get("job_id"), "job_id", 1, MAX_SIZE),
            resubmission=_int(doc.get("resubmission"), "resubmission", 0, MAX_RESUBMISSION),
            jdl=_text(doc.get("jdl"), "jdl", MAX_JDL_CHARS),
            user=_text(doc.get("user"), "user", MAX_NAME_CHARS),
            site=_text(doc.get("site"), "site", MAX_NAME_CHARS),
            ce=_text(doc.get("ce"), "ce", MAX_NAME_CHARS),
            inputs=inputs,
            outputs_dir=outputs_dir,
            output_dir=output_dir,
        )


def _show(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def _int(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OfflineJobError(f"job.json: {field}: an integer from {low} to {high}, not {_show(value)}")
    return value


def _text(value: Any, field: str, limit: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit or "\x00" in value:
        raise OfflineJobError(f"job.json: {field}: a non-empty string of at most {limit} characters, not "
                              f"{_show(value)}")
    return value


def _relative_path(value: Any, field: str, limit: int) -> str:
    _text(value, f"{field}", limit)
    parts = value.split("/")
    if value.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise OfflineJobError(f"job.json: {field}: a relative path inside the job directory (no '..', '.' or "
                              f"empty part), not {_show(value)}")
    return value


def _checksum(value: Any, field: str, algo: str, digits: int) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not _HEX.match(value) or len(normalize(algo, value)) != digits:
        raise OfflineJobError(f"job.json: {field}: null or {digits} hexadecimal digits, not {_show(value)}")
    return normalize(algo, value)


def _input(item: Any, where: str, outputs_dir: str) -> OfflineInput:
    if not isinstance(item, dict):
        raise OfflineJobError(f"job.json: {where}: not an object")
    name = _relative_path(item.get("name"), f"{where}.name", MAX_PATH_CHARS)
    top = name.split("/")[0]
    if top in RESERVED or top == outputs_dir.split("/")[0]:
        raise OfflineJobError(f"job.json: {where}.name: {name!r} is the runner's own (or the outputs directory)")
    lfn = _text(item.get("lfn"), f"{where}.lfn", MAX_PATH_CHARS)
    if not lfn.startswith("/"):
        raise OfflineJobError(f"job.json: {where}.lfn: an absolute LFN, not {_show(lfn)}")
    return OfflineInput(name=name, lfn=lfn, size=_int(item.get("size"), f"{where}.size", 0, MAX_SIZE),
                        adler32=_checksum(item.get("adler32"), f"{where}.adler32", "adler32", 8),
                        md5=_checksum(item.get("md5"), f"{where}.md5", "md5", 32))


class RecordingCentral(CentralClient):
    """What JobRun calls on central, kept instead of sent: states (with their fields), trace entries, heartbeat
    samples. Its answer to a heartbeat or control poll is a kill while DIR/kill.request exists (job_dir given), so
    that JobRun ends the job as it ends one central kills. Any other call is central being unreachable: there is
    none here."""

    def __init__(self, job_dir: Optional[Path] = None) -> None:
        super().__init__("http://offline.invalid", None, retries=0)
        self.job_dir = job_dir
        self.states: List[Dict[str, Any]] = []
        self.trace_entries: List[Dict[str, Any]] = []
        self.samples: List[Dict[str, Any]] = []
        #: The resources of the final state report (the monitor's summary and the payload's rusage).
        self.resources: Dict[str, Any] = {}
        #: The reason read from kill.request when it was first seen (None: not seen).
        self.kill_seen: Optional[str] = None

    def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        raise CentralUnreachable(self.url, f"offline: no central to {method} {path}")

    def set_status(self, job_id: int, state: Any, resubmission: int, **fields: Any) -> Dict[str, Any]:
        name = state.name if isinstance(state, JobStatus) else str(state)
        entry: Dict[str, Any] = {"state": name, "at": float(fields.get("at") or time.time())}
        for key in ("kill_reason", "exit_code", "message"):
            if fields.get(key) is not None:
                entry[key] = fields[key]
        if fields.get("resources"):
            self.resources = dict(fields["resources"])
        self.states.append(entry)
        return {"id": job_id, "state": name}

    def append_trace(self, job_id: int, entries: Sequence[Mapping[str, Any]]) -> int:
        self.trace_entries.extend(dict(e) for e in entries)
        return len(entries)

    def heartbeats_full(self, items: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        commands: List[Dict[str, Any]] = []
        for item in items:
            if item.get("sample"):  # none before the payload runs
                self.samples.append({"at": time.time(), **dict(item["sample"])})
            commands.extend(self.kill_commands(int(item["job_id"])))
        return {"commands": commands, "rejected": []}

    def control(self, job_id: int, resubmission: int) -> Dict[str, Any]:
        return {"commands": self.kill_commands(job_id), "rejected": []}

    def kill_commands(self, job_id: int) -> List[Dict[str, Any]]:
        """Central's kill command for the job while DIR/kill.request exists, else none. The file is opened without
        following a link and without blocking (the payload, the same user, could make it a FIFO), and only a
        regular file's first line is read; whatever it is, its existence is the request."""
        if self.job_dir is None:
            return []
        path = self.job_dir / KILL_FILE
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        except OSError as e:
            # There, but not to be read (a link, no permission): a request all the same, with no reason.
            raw = f"(unreadable: {e.strerror or e})".encode()
        else:
            try:
                raw = os.read(fd, MAX_KILL_REASON) if stat.S_ISREG(os.fstat(fd).st_mode) else b"(not a file)"
            except OSError as e:
                raw = f"(unreadable: {e.strerror or e})".encode()
            finally:
                os.close(fd)
        text = "".join(c if c.isprintable() else " " for c in
                       raw.decode("utf-8", "replace").split("\n", 1)[0]).strip()[:MAX_KILL_REASON]
        reason = f"{KILL_FILE} in the job directory: {text or 'no reason given'}"
        if self.kill_seen is None:
            self.kill_seen = reason
            log.warning("job %d: %s: the job is killed", job_id, reason)
        return [{"job_id": job_id, "command": "kill", "reason": reason}]


def _no_runner(event: str, **fields: Any) -> None:
    """The runner's events (pilot/matching.emit): there is no runner reading them here."""


class OfflineJobRun(JobRun):
    """JobRun with the offline wrapper's registrations kept (protocol.REGISTERED) and no runner to tell."""

    def __init__(self, settings: AgentSettings, recorder: RecordingCentral, match: Dict[str, Any],
                 job: JobDescription, gpus: List[Any], node_gpus: List[Any], job_dir: Path) -> None:
        super().__init__(settings, recorder, match, job, gpus, node_gpus=node_gpus)
        self.job_dir = job_dir
        self.loop_beat = LoopBeat(_no_runner, self.cfg.watchdog_interval)
        self.outbox.on_outage = None
        #: The outputs the wrapper copied into the outputs directory and verified there, as it said.
        self.registered: List[Dict[str, Any]] = []

    def run(self) -> JobStatus:
        self.trace(f"Running offline (no central, no storage element) in {self.job_dir}: inputs from there, outputs "
                   f"to {self.match['offline']['outputs_dir']}")
        return super().run()

    def _handle(self, msg: Dict[str, Any]) -> None:
        if msg["type"] == protocol.REGISTERED:
            self.registered.append({k: msg.get(k) for k in ("lfn", "size", "adler32", "md5", "se", "pfn")})
            return
        super()._handle(msg)

    def _finish(self, state: JobStatus, reason: KillReason, exit_code: Optional[int],
                message: Optional[str] = None) -> JobStatus:
        # The wrapper's own log goes with the work directory: kept in the pilot's log, which the tower publishes.
        wrapper_log = self.workdir / "wrapper.log"
        try:
            text = wrapper_log.read_text(errors="replace")
        except OSError:
            text = ""
        if text.strip():
            log.info("job %d: the JobWrapper's log (%s):\n%s", self.job_id, wrapper_log, text.rstrip())
        return super()._finish(state, reason, exit_code, message=message)


@dataclass
class Outcome:
    """What `gridpilot offline` did: the result written (or None) and its final state."""

    result_path: Path
    result: Dict[str, Any]


def _outputs(registered: Sequence[Mapping[str, Any]], job_dir: Path, outputs_root: Path,
             trace: Any) -> Optional[List[Dict[str, Any]]]:
    """result.json's outputs from what the wrapper registered, each read again where it lies (size, adler32, md5):
    None if one is not there or differs (the job then fails ERROR_SV: an output the tower would get is wrong)."""
    out = []
    for entry in registered:
        pfn = str(entry.get("pfn") or "")
        path = Path(pfn[len("file://"):]) if pfn.startswith("file://") else None
        if entry.get("se") != OUTPUTS_SE or path is None or outputs_root not in path.resolve().parents:
            trace(f"[FATAL]: output {entry.get('lfn')}: registered outside the outputs directory ({pfn})")
            return None
        try:
            found = digest_file(path, md5=True)
        except OSError as e:
            trace(f"[FATAL]: output {entry.get('lfn')}: {path} cannot be read again: {e.strerror or e}")
            return None
        expected = {"size": entry.get("size"), "adler32": entry.get("adler32")}
        if found.size != expected["size"] or found.adler32 != expected["adler32"] or (
                entry.get("md5") is not None and found.md5 != entry.get("md5")):
            trace(f"[FATAL]: output {entry.get('lfn')}: {path} changed after it was verified ({found})")
            return None
        out.append({"name": str(path.resolve().relative_to(job_dir)), "lfn": str(entry.get("lfn")),
                    "size": found.size, "adler32": found.adler32, "md5": found.md5})
    return out


def _write_result(job_dir: Path, result: Dict[str, Any]) -> Path:
    """result.json, whole or not at all: a temporary beside it, synced, renamed over it."""
    path = job_dir / RESULT_FILE
    tmp = job_dir / f".{RESULT_FILE}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def offline_config(config_path: Optional[str], job_dir: Path, job: OfflineJob,
                   environ: Optional[Mapping[str, str]] = None,
                   overrides: Optional[Mapping[str, Any]] = None) -> PilotConfig:
    """The site's pilot configuration (file, GRIDPILOT_* variables) for this node, with what the job directory
    decides: the work directory below it, site and CE from job.json, no central, kill.request looked for every
    KILL_POLL_S."""
    cfg = load_config(config_path, environ=environ,
                      overrides={"kill_poll_interval": KILL_POLL_S, **(overrides or {}),
                                 "workdir": str(job_dir / WORK_SUBDIR), "site": job.site, "ce": job.ce})
    cfg.central_url = None
    cfg.token = cfg.token_file = None
    return cfg


def run_offline(job_dir: Path, cfg: PilotConfig, job: OfflineJob) -> Outcome:
    """Run the job of `job_dir` to its end and write result.json there."""
    job_dir = job_dir.resolve()
    outputs_root = job_dir / job.outputs_dir
    outputs_root.mkdir(parents=True, exist_ok=True)
    outputs_root = outputs_root.resolve()
    recorder = RecordingCentral(job_dir)
    started = time.time()
    match: Dict[str, Any] = {
        "id": job.job_id, "resubmission": job.resubmission, "token": "", "jdl": job.jdl, "user": job.user,
        "output_dir": job.output_dir, "storage": storage_elements(str(job_dir), str(outputs_root)),
        "offline": {"outputs_dir": str(outputs_root),
                    "inputs": [{"lfn": i.lfn, "pfn": f"file://{job_dir / i.name}", "size": i.size,
                                "adler32": i.adler32, "md5": i.md5} for i in job.inputs]},
    }
    slot = Slot(cfg.cgroups, limits=cfg.cgroup_limits)
    log.info("offline run of job %d (resubmission %d) in %s; cgroups: %s", job.job_id, job.resubmission, job_dir,
             slot.reason)
    cgroup = slot.for_agent(0)
    registered: List[Dict[str, Any]] = []
    try:
        settings = AgentSettings(config=cfg, free_cores=os.cpu_count() or 1, cgroup=str(cgroup) if cgroup else None,
                                 cgroup_v1=slot.v1_for_agent(0), batch_id=batch_job_id())
        final = _run_job(settings, recorder, match, job_dir, registered)
    finally:
        if slot.slot is not None:
            # JobRun moved this process into the agent's cgroup (as an agent's own): back into the slot's runner/,
            # where the runner would be, so that the agent's can go.
            try:
                cgroupfs.move_pid(slot.slot / "runner", os.getpid())
            except GridpilotError as e:
                log.warning("could not leave the agent cgroup: %s", e)
        slot.release_agent(cgroup, 0)
        slot.close()
        try:
            (job_dir / WORK_SUBDIR).rmdir()  # empty once the job's work directory is gone (keep_workdir: kept)
        except OSError:
            pass
    state = final
    outputs = _outputs(registered, job_dir, outputs_root, lambda text: _late_trace(recorder, text))
    if outputs is None:
        outputs = []
        if state in SAVED:
            state = JobStatus.ERROR_SV
            recorder.states[-1] = {"state": state.name, "at": time.time(), "kill_reason": KillReason.OK.name,
                                   "message": "an output changed after it was verified"}
    last = recorder.states[-1] if recorder.states else {"state": state.name}
    if state in SAVED:
        # The tower says DONE once the outputs are on their storage elements, verified there.
        recorder.states = [s for s in recorder.states if JobStatus[s["state"]] not in SAVED]
        summary: Dict[str, Any] = {"state": JobStatus.SAVING.name, "kill_reason": None,
                                   "exit_code": last.get("exit_code")}
    else:
        summary = {"state": state.name, "kill_reason": last.get("kill_reason"), "exit_code": last.get("exit_code")}
    result = {
        "format": FORMAT, "job_id": job.job_id, "resubmission": job.resubmission, "host": cfg.node,
        "started_at": started, "ended_at": time.time(), "states": recorder.states, "trace": recorder.trace_entries,
        "outputs": outputs, "final": summary, "resources": recorder.resources, "samples": recorder.samples,
    }
    path = _write_result(job_dir, result)
    log.info("job %d ends %s%s: %s written (%d output(s), %d trace line(s))", job.job_id, summary["state"],
             f" ({summary['kill_reason']})" if summary["kill_reason"] else "", path, len(outputs),
             len(recorder.trace_entries))
    return Outcome(path, result)


def _late_trace(recorder: RecordingCentral, text: str) -> None:
    """A trace line after the job's run (its outbox is drained): straight into the record, keyed apart."""
    log.error("%s", text)
    recorder.trace_entries.append({"ts": time.time(), "category": "trace", "text": text,
                           "key": f"offline.{len(recorder.trace_entries) + 1}"})


def _run_job(settings: AgentSettings, recorder: RecordingCentral, match: Dict[str, Any], job_dir: Path,
             registered: List[Dict[str, Any]]) -> JobStatus:
    """The job's run through JobRun, as run_agent does after a match (pilot/agent.py)."""
    cfg = settings.config
    try:
        job = parse_job(match["jdl"])
    except JdlError as e:
        return _unstarted(recorder, match, JobStatus.ERROR_A, KillReason.JOBBROKER, f"the JDL could not be read: {e}")
    kill = recorder.kill_commands(int(match["id"]))
    if kill:
        # The request came while the ARC job waited in its batch system: nothing of the job starts. (Through JobRun
        # the wrapper, still starting, could miss the kill and start the payload before the agent ends it.)
        return _unstarted(recorder, match, JobStatus.KILLED, KillReason.KILLED,
                          f"kill requested by central ({kill[0]['reason']}) before the job started: nothing of it "
                          "runs")
    every_gpu = node_gpus(cfg.sysfs, cfg.pci_ids)
    gpus = gpus_mod.claim(job, every_gpu, arch_of=lambda g: gpu_arch(g, cfg.sysfs))
    if gpus is None:
        return _unstarted(recorder, match, JobStatus.WAITING, KillReason.OK,
                          "the GPUs the job asks for are not on this node")
    run = OfflineJobRun(settings, recorder, match, job, gpus, every_gpu, job_dir)
    previous = signal.signal(signal.SIGTERM, lambda *_: run.request_stop())
    try:
        state = run.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    registered.extend(run.registered)
    return state


def _unstarted(recorder: RecordingCentral, match: Dict[str, Any], state: JobStatus, reason: KillReason,
               message: str) -> JobStatus:
    """A job that cannot start here: its end, as matching.end_unstarted reports it to central."""
    log.error("job %s: %s", match["id"], message)
    prefix = f"{match['resubmission']}.unstarted"
    recorder.append_trace(int(match["id"]), [{"ts": time.time(), "category": "trace", "text": message,
                                              "key": f"{prefix}.message"}])
    if reason is not KillReason.OK:
        recorder.append_trace(int(match["id"]), [{"ts": time.time(), "category": "trace",
                                                  "text": f"Kill reason {reason.describe()}",
                                                  "key": f"{prefix}.kill_reason"}])
    for step in final_path(None, state):
        recorder.set_status(int(match["id"]), state=step, resubmission=int(match["resubmission"]),
                            kill_reason=reason.name if step is state else None, message=message)
    return state


def log_to(job_dir: Path, level: str = "INFO") -> None:
    """The pilot's log: DIR/gridpilot-offline.log, and stderr (which ARC keeps as the job's own log)."""
    fmt = logging.Formatter("%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    root = logging.getLogger()
    root.setLevel(level)
    for handler in (logging.FileHandler(job_dir / LOG_FILE), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(fmt)
        root.addHandler(handler)


def prepare() -> None:
    """What the agent does first (pilot/agent.py main): the descriptor budget the job monitor needs."""
    fdlimit.raise_nofile()


__all__ = ["FORMAT", "JOB_FILE", "KILL_FILE", "KILL_POLL_S", "LOG_FILE", "RESULT_FILE", "OfflineInput", "OfflineJob", "OfflineJobError",
           "OfflineJobRun", "Outcome", "RecordingCentral", "log_to", "offline_config", "prepare", "run_offline"]
