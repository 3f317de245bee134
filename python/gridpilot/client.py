"""The HTTP client to central, used by every other piece (pilot, CE, CLI): urllib3 and orjson only.

Errors: central's error answers become `CentralError(status, code, message)`; a central that cannot be reached
after the retries becomes `CentralUnreachable`.

Retries, with exponential backoff and jitter (0.2 s doubling, at most 5 s between tries), or after the Retry-After
central (or a proxy) gave, plus up to half of it again (reachability.retry_after_delay), so that the clients refused
together do not come back together; at most `retries` of them, and none that would end past the call's `deadline`:
- a connection that could not be made is retried for every call: the request never left this machine;
- 503 overloaded and 429 rate_limited (central/admission.py) are retried for every call too: central gives them
  before any of the request runs;
- a 5xx answer, a timeout or a dropped connection is retried only for idempotent calls (reads, kill, state
  reports, heartbeats, file registration, trace appends whose entries carry keys), because repeating them is
  harmless: central treats a repeated state report as a no-op and stores a keyed trace entry once. Submitting,
  matching, unkeyed trace appends and minting tokens are not repeated after the request may have reached central;
  a lost match answer leaves the job ASSIGNED until the sweeper gives it back.

https: central's certificate is always verified, against `ca_file` / `ca_data` (central's CA) when given, else the
system's CA certificates. A certificate that does not verify is `CentralUntrusted` at once, not retried: trying
again would not change it.
"""

from __future__ import annotations

import base64
import binascii
import random
import ssl
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import quote, urlencode

import orjson
import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, NameResolutionError, SSLError

from gridpilot.errors import CentralError, CentralUnreachable, CentralUntrusted
from gridpilot.reachability import not_started, parse_retry_after, retry_after_delay
from gridpilot.tls import CA_FILE_ENV, ca_context

API = "/api/v1"
StateLike = Union[str, int]
#: The longest life central gives a pilot's agent token (POST /api/v1/ce/tokens): central refuses a longer one, and
#: a CE refuses a configuration whose pilots would need one.
PILOT_TOKEN_MAX_TTL_S = 2 * 86400.0


def token_expires(token: str) -> Optional[float]:
    """When a token expires (its `exp` claim, unix time), read without checking its signature: for a holder
    planning around its own token's life, never for trusting one. None when it is not a token that says."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None

#: Errors raised before the request was sent: always safe to try again.
_NOT_SENT = (NewConnectionError, ConnectTimeoutError, NameResolutionError)


def _name(v: Any) -> Any:
    """Enum members (JobStatus, KillReason) by name; central takes names."""
    return getattr(v, "name", v)


class CentralClient:
    """A connection pool to one central, authenticated with one token (user, agent, job, ce, tower or admin).

    `ca_file` (a PEM file) or `ca_data` (its text) is the CA central's https certificate is verified against; a
    file that cannot be read or holds no CA certificate is a ConfigError naming it, raised here."""

    def __init__(
        self,
        url: str,
        token: Optional[str],
        *,
        timeout: float = 10.0,
        retries: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        pool_size: int = 4,
        ca_file: Optional[str] = None,
        ca_data: Optional[str] = None,
        deadline: Optional[float] = None,
        rng: Optional[Callable[[], float]] = None,
        sleep: Optional[Callable[[float], None]] = None,
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"central URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.ca_file = ca_file or None
        tls: Dict[str, Any] = {}
        if self.url.startswith("https://"):
            # One context for the pool, made (and so checked) now; urllib3 verifies the certificate chain and the
            # host name with it on every connection.
            tls["ssl_context"] = ca_context(self.ca_file, ca_data)
            self._trust = f"the CA file {self.ca_file}" if self.ca_file else (
                "the CA certificates given" if ca_data else
                f"the system's CA certificates (give central's CA with --ca-file, {CA_FILE_ENV} or ca_file)")
        self.token = token
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        #: Seconds one call may spend in all (its tries and the waits between them; None: only `retries` bound it).
        #: A wait that would end past it is not waited: the last answer is the call's.
        self.deadline = deadline
        # Injected by tests; else looked up at each call (so that a test's monkeypatch of time.sleep applies too).
        self.rng: Callable[[], float] = rng or (lambda: random.random())
        self.sleep: Callable[[float], None] = sleep or (lambda s: time.sleep(s))
        self.clock: Callable[[], float] = clock or (lambda: time.monotonic())
        self._pool = urllib3.PoolManager(
            num_pools=2, maxsize=pool_size, block=False, retries=False,
            timeout=urllib3.Timeout(connect=min(timeout, 5.0), read=timeout), **tls,
        )

    # -- transport --

    def _delay(self, attempt: int, retry_after: Optional[float] = None) -> float:
        """The wait before try `attempt` + 1: central's Retry-After with jitter when it gave one, else the backoff."""
        if retry_after is not None:
            return retry_after_delay(retry_after, self.rng)
        # Full jitter on half the step: many pilots retrying after one outage do not come back in lockstep.
        step = min(self.max_backoff, self.backoff * (2 ** attempt))
        return step * (0.5 + self.rng() / 2)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Optional[Mapping[str, Any]] = None,
        query: Optional[Mapping[str, Any]] = None,
        idempotent: bool = False,
        raw: bool = False,
    ) -> Tuple[int, Any]:
        """Send one API request; return (status, parsed JSON body or None). Raises CentralError for 4xx/5xx."""
        url = self.url + path
        q = {k: v for k, v in (query or {}).items() if v is not None}
        if q:
            url += "?" + urlencode(q)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = None
        if body is not None:
            payload = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        attempt = 0
        started = self.clock()
        while True:
            retry_after: Optional[float] = None
            try:
                resp = self._pool.request(method, url, body=payload, headers=headers, redirect=False,
                                          preload_content=True)
            except _NOT_SENT as e:
                failure: Optional[str] = f"cannot connect: {_reason(e)}"
            except SSLError as e:
                bad = _verification_error(e)
                if bad is not None:
                    why = getattr(bad, "verify_message", "") or _reason(bad)
                    raise CentralUntrusted(self.url, f"its certificate does not verify ({why}); checked against "
                                                     f"{self._trust}") from None
                # Any other TLS failure happened in the handshake, before the request was sent.
                failure = f"TLS: {_reason(e)}"
            except HTTPError as e:
                if not idempotent:
                    raise CentralUnreachable(self.url, f"{method} {path} failed and is not safe to repeat: "
                                                       f"{_reason(e)}") from e
                failure = _reason(e)
            else:
                retry_after = parse_retry_after(resp.headers.get("Retry-After")) if resp.status >= 429 else None
                if not self._worth_repeating(resp, idempotent) or attempt >= self.retries:
                    return resp.status, self._parse(resp, raw)
                delay = self._delay(attempt, retry_after)
                if self.deadline is not None and self.clock() + delay > started + self.deadline:
                    return resp.status, self._parse(resp, raw)
                self.sleep(delay)
                attempt += 1
                continue
            if attempt >= self.retries:
                raise CentralUnreachable(self.url, f"{failure} (after {attempt + 1} attempts)")
            delay = self._delay(attempt)
            if self.deadline is not None and self.clock() + delay > started + self.deadline:
                raise CentralUnreachable(self.url, f"{failure} (after {attempt + 1} attempts, {self.deadline:g} s "
                                                   f"deadline)")
            self.sleep(delay)
            attempt += 1

    @staticmethod
    def _worth_repeating(resp: urllib3.BaseHTTPResponse, idempotent: bool) -> bool:
        """A 5xx of an idempotent call; any call's 503 overloaded or 429 rate_limited (central did none of it)."""
        if resp.status in (429, 503) and not_started(resp.status, _error(resp.status, resp.data).code):
            return True
        return resp.status >= 500 and idempotent

    def _parse(self, resp: urllib3.BaseHTTPResponse, raw: bool) -> Any:
        data = resp.data
        if resp.status >= 400:
            e = _error(resp.status, data)
            e.retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            raise e
        if raw:
            return data.decode("utf-8", "replace")
        if resp.status == 204 or not data:
            return None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise CentralError(resp.status, "bad_response", f"central answered with non-JSON: {data[:200]!r}") from None

    def close(self) -> None:
        self._pool.clear()

    def __enter__(self) -> CentralClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs --

    def submit(self, jdl_text: str, name: Optional[str] = None, *, priority: Optional[int] = None,
               collections: Optional[Mapping[str, str]] = None) -> int:
        """Queue a job; its id (a masterjob's, for a JDL with Split). `collections`: the text of each collection
        its InputDataCollection names, by the name written there (central/splitting.py)."""
        return int(self.submit_job(jdl_text, name, priority=priority, collections=collections)["id"])

    def submit_job(self, jdl_text: str, name: Optional[str] = None, *, priority: Optional[int] = None,
                   collections: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
        """As submit, central's whole answer: {"id", "state": "WAITING"}; for a JDL with Split {"id", "state":
        "SPLIT", "subjobs" (how many it made), "first_subjob", "last_subjob", "split"}."""
        body: Dict[str, Any] = {"jdl": jdl_text}
        if name is not None:
            body["name"] = name
        if priority is not None:
            body["priority"] = priority
        if collections:
            body["collections"] = dict(collections)
        return self.request("POST", f"{API}/jobs", body=body)[1]

    def get_job(self, job_id: int) -> Dict[str, Any]:
        return self.request("GET", f"{API}/jobs/{int(job_id)}", idempotent=True)[1]

    def list_jobs(self, **filters: Any) -> List[Dict[str, Any]]:
        """Filters: user, state (name, or several joined by commas), site, name (a prefix), master, limit, offset."""
        q = {k: (",".join(_name(s) for s in v) if isinstance(v, (list, tuple, set)) else _name(v))
             for k, v in filters.items()}
        return self.request("GET", f"{API}/jobs", query=q, idempotent=True)[1]["jobs"]

    def jobs_summary(self, *, user: Optional[str] = None, site: Optional[str] = None,
                     running: Optional[int] = None) -> Dict[str, Any]:
        """Counts of jobs per state and per site, and the newest trace line of at most `running` jobs a pilot holds
        (GET /jobs/summary, what `gridpilot top` shows): one request, whatever the number of jobs."""
        q = {"user": user, "site": site, "running": None if running is None else str(int(running))}
        return self.request("GET", f"{API}/jobs/summary", query=q, idempotent=True)[1]

    def why(self, job_id: int) -> Dict[str, Any]:
        """Why a WAITING job has not matched: per offer central kept (site, ce, node, seen, clause, reason, offer)."""
        return self.request("GET", f"{API}/jobs/{int(job_id)}/why", idempotent=True)[1]

    def masterjob(self, job_id: int, ids: bool = False) -> Dict[str, Any]:
        """A masterjob's subjobs counted by state ({id, state, split, subjobs, states}; with `ids`, ids by state)."""
        q = {"ids": "1"} if ids else None
        return self.request("GET", f"{API}/jobs/{int(job_id)}/subjobs", query=q, idempotent=True)[1]

    def kill(self, job_id: int) -> Dict[str, Any]:
        return self.request("POST", f"{API}/jobs/{int(job_id)}/kill", body={}, idempotent=True)[1]

    def resubmit(self, job_id: int) -> Dict[str, Any]:
        """Send an ended job back to WAITING. Not repeated once it may have reached central: a repeat could use a
        second of the job's resubmissions."""
        return self.request("POST", f"{API}/jobs/{int(job_id)}/resubmit", body={})[1]

    def trace(self, job_id: int, since: Optional[float] = None) -> List[Dict[str, Any]]:
        q = {"since": repr(float(since))} if since is not None else None
        return self.request("GET", f"{API}/jobs/{int(job_id)}/trace", query=q, idempotent=True)[1]["entries"]

    def append_trace(self, job_id: int, entries: Sequence[Mapping[str, Any]]) -> int:
        """Append entries ({ts?, category, text, key?}). When every entry has a key (unique within the job; the
        agent's are its run of the job and a sequence number) central stores a repeated entry once, so the call is
        retried like the other idempotent ones; without keys it is not repeated once it may have reached central."""
        keyed = bool(entries) and all(e.get("key") for e in entries)
        _, data = self.request("POST", f"{API}/jobs/{int(job_id)}/trace", body={"entries": list(entries)},
                               idempotent=keyed)
        return int(data["appended"])

    # -- the pilot's calls --

    def match(self, sitemap: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
        """The job assigned to this agent (id, jdl, resubmission, token, user, ...), or None when none fits."""
        _, data = self.request("POST", f"{API}/match", body=dict(sitemap))
        return None if data is None else data["job"]

    def probe(self, sitemap: Mapping[str, Any]) -> Dict[str, Any]:
        """How many WAITING jobs could run on this site map, assigning none ({"waiting", "scanned", "capped"})."""
        return self.request("POST", f"{API}/queue/probe", body=dict(sitemap), idempotent=True)[1]

    def set_status(self, job_id: int, state: StateLike, resubmission: int, **fields: Any) -> Dict[str, Any]:
        """Report a state change. Fields: kill_reason, exit_code, resources, message, at (when it changed, seconds
        since the epoch; central's time of receipt when absent). Safe to repeat."""
        body: Dict[str, Any] = {"state": _name(state), "resubmission": int(resubmission)}
        body.update({k: _name(v) for k, v in fields.items() if v is not None})
        return self.request("POST", f"{API}/jobs/{int(job_id)}/status", body=body, idempotent=True)[1]

    def heartbeats(self, items: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
        """Send {job_id, resubmission, sample} for many jobs; returns the commands ({job_id, command: "kill"})."""
        _, data = self.request("POST", f"{API}/heartbeats", body={"heartbeats": list(items)}, idempotent=True)
        return list(data["commands"])

    def heartbeats_full(self, items: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        """As heartbeats(), with the whole answer: commands, rejected items and the count updated."""
        return self.request("POST", f"{API}/heartbeats", body={"heartbeats": list(items)}, idempotent=True)[1]

    def reports(self, items: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
        """Report on many jobs in one request (a tower's bulk reports, POST /reports): each item {job_id,
        resubmission, state?, at?, kill_reason?, exit_code?, message?, resources?, trace?: [{ts, category, text,
        key}], arc_job_id?, pilot_log_url?}, at most 1000. Returns one result per item, in order: {job_id, ok: true,
        state, resubmission} or {job_id, ok: false, status, error: {code, message, ...}}; each item is applied whole
        or not at all. Retried like set_status (a repeated state is a no-op) when every trace line has a key (stored
        once); a repeated report of a state the job has since left is answered 409 for that item."""
        body = [{k: _name(v) for k, v in item.items() if v is not None} for item in items]
        keyed = all(e.get("key") for item in body for e in item.get("trace") or ())
        _, data = self.request("POST", f"{API}/reports", body={"reports": body}, idempotent=keyed)
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list) or len(results) != len(body):
            raise CentralError(200, "bad_response", f"central answered POST /reports without one result per report "
                                                    f"({len(body)} sent): {str(data)[:200]}")
        return list(results)

    def control(self, job_id: int, resubmission: int) -> Dict[str, Any]:
        """Whether central wants this run of the job ended, without a heartbeat: {commands, rejected}, as
        heartbeats_full answers (central/control.py)."""
        return self.request("GET", f"{API}/jobs/{int(job_id)}/control",
                            query={"resubmission": str(int(resubmission))}, idempotent=True)[1]

    # -- catalogue and storage --

    def register_file(self, **fields: Any) -> Dict[str, Any]:
        """Fields: lfn, size, adler32, md5, se, pfn, job_id."""
        body = {k: v for k, v in fields.items() if v is not None}
        return self.request("POST", f"{API}/catalogue/files", body=body, idempotent=True)[1]

    def lookup_file(self, lfn: str) -> Dict[str, Any]:
        return self.request("GET", f"{API}/catalogue/files", query={"lfn": lfn}, idempotent=True)[1]

    def list_dir(self, path: str) -> List[Dict[str, Any]]:
        return self.request("GET", f"{API}/catalogue/dirs", query={"path": path}, idempotent=True)[1]["entries"]

    def job_files(self, job_id: int, *, offset: int = 0, limit: Optional[int] = None) -> Dict[str, Any]:
        """One page of the files job `job_id` registered (GET /jobs/{id}/files): {"id", "state", "output_dir",
        "files", "more", ...}; `offset` pages on."""
        query: Dict[str, Any] = {"offset": offset}
        if limit is not None:
            query["limit"] = limit
        return self.request("GET", f"{API}/jobs/{int(job_id)}/files", query=query, idempotent=True)[1]

    def areas(self, user: Optional[str] = None) -> Dict[str, Any]:
        """A user's catalogue areas, where its jobs may write ({"user", "areas": [{path, granted, granted_by}]}): a
        user token's own; an admin's for `user`, or every grant when no user is named."""
        q = {"user": user} if user else None
        return self.request("GET", f"{API}/areas", query=q, idempotent=True)[1]

    def grant_area(self, user: str, path: str) -> Dict[str, Any]:
        """(admin) Let `user`'s jobs have an OutputDir in `path` too."""
        return self.request("POST", f"{API}/areas", body={"user": user, "path": path}, idempotent=True)[1]

    def revoke_area(self, user: str, path: str) -> Dict[str, Any]:
        """(admin) Take back a grant; jobs already queued keep their OutputDir."""
        return self.request("POST", f"{API}/areas/revoke", body={"user": user, "path": path}, idempotent=True)[1]

    def storage_elements(self) -> List[Dict[str, Any]]:
        return self.request("GET", f"{API}/storage", idempotent=True)[1]["elements"]

    def add_storage_element(self, name: str, url: str, kind: str = "disk") -> Dict[str, Any]:
        body = {"name": name, "url": url, "kind": kind}
        return self.request("POST", f"{API}/storage", body=body, idempotent=True)[1]

    # -- tokens and service --

    def mint_token(self, role: str, subject: str, *, site: Optional[str] = None, ce: Optional[str] = None,
                   ttl_s: Optional[float] = None, scope: Optional[str] = None) -> str:
        """A token of `role` (admin only); `scope`: fewer scopes than the role's, space-separated."""
        body = {"role": role, "subject": subject, "site": site, "ce": ce, "ttl_s": ttl_s, "scope": scope}
        _, data = self.request("POST", f"{API}/tokens", body={k: v for k, v in body.items() if v is not None})
        return str(data["token"])

    def revoke_token(self, token: str) -> Dict[str, Any]:
        return self.request("POST", f"{API}/tokens/revoke", body={"token": token}, idempotent=True)[1]

    # -- the computing element's calls --

    def mint_pilot_token(self, subject: str, *, ttl_s: Optional[float] = None) -> str:
        """A short-lived agent token for one pilot, bound to this CE token's site and CE."""
        body: Dict[str, Any] = {"subject": subject}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        _, data = self.request("POST", f"{API}/ce/tokens", body=body)
        return str(data["token"])

    def report_pilots(self, counts: Mapping[str, int], backend: str = "",
                      ended: Optional[Mapping[str, int]] = None) -> Dict[str, Any]:
        """This CE's pilots in its batch system by state (queued, running, finished, failed, held), and those it saw
        end by exit reason (`ended`, exitcodes.reason())."""
        body: Dict[str, Any] = {"pilots": dict(counts), "backend": backend}
        if ended is not None:
            body["ended"] = dict(ended)
        return self.request("POST", f"{API}/ce/pilots", body=body, idempotent=True)[1]

    # -- worker nodes (nodeBad) --

    def report_node_event(self, kind: str, seconds: float, *, job_id: Optional[int] = None,
                          host: Optional[str] = None, detail: Optional[str] = None) -> Dict[str, Any]:
        """A failure of a node: `kind` error_connecting or stall, lasting `seconds`. An agent names the job it runs
        (the node is the job's); a CE or an admin names the host. Repeating one is harmless: a report overlapping
        one already counted for the host is not counted again."""
        body: Dict[str, Any] = {"kind": kind, "seconds": seconds, "job_id": job_id, "host": host, "detail": detail}
        return self.request("POST", f"{API}/nodes/events", body={k: v for k, v in body.items() if v is not None},
                            idempotent=True)[1]

    def nodes(self, *, site: Optional[str] = None, bad: Optional[bool] = None, arch: Optional[str] = None,
              gpu: Optional[str] = None) -> Dict[str, Any]:
        """The nodes central knows ({"nodes": [...], "window_s", "bad_after"}): an admin's every site, a CE's its own;
        only those of `arch` (exact), with a GPU whose model holds `gpu` (any case)."""
        q: Dict[str, str] = {}
        for name, value in (("site", site), ("arch", arch), ("gpu", gpu)):
            if value:
                q[name] = value
        if bad is not None:
            q["bad"] = "true" if bad else "false"
        return self.request("GET", f"{API}/nodes", query=q or None, idempotent=True)[1]

    def post_node_probe(self, probe: Mapping[str, Any]) -> Dict[str, Any]:
        """This node's probe (`gridpilot node check --json` with top-level `host` and `pilot_version`): central keeps
        the latest and a history row when it changed ({"host", "site", "digest", "changed", "history"})."""
        return self.request("POST", f"{API}/nodes/probe", body=dict(probe), idempotent=True)[1]

    def node_probes(self, host: str, *, limit: Optional[int] = None) -> Dict[str, Any]:
        """(admin) A node's latest probe and its changes, newest first ({"host", "site", "latest", "history"})."""
        q = {"limit": str(limit)} if limit else None
        return self.request("GET", f"{API}/nodes/{quote(host, safe='')}/probes", query=q,
                            idempotent=True)[1]

    def clear_node(self, host: str) -> Dict[str, Any]:
        """(admin) Clear a nodeBad node: the broker matches it again, its failures so far no longer count."""
        return self.request("POST", f"{API}/nodes/clear", body={"host": host}, idempotent=True)[1]

    def whoami(self) -> Dict[str, Any]:
        return self.request("GET", f"{API}/whoami", idempotent=True)[1]

    def health(self) -> Dict[str, Any]:
        return self.request("GET", f"{API}/health", idempotent=True)[1]

    def metrics(self) -> str:
        return self.request("GET", "/metrics", idempotent=True, raw=True)[1]

    def control_many(self, runs: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        """The control poll of many runs at once ([{job_id, resubmission}], at most 1000): {commands, rejected}, as
        heartbeats_full answers (central/control.py). It writes nothing, so it is safe to repeat."""
        body = {"jobs": [{"job_id": int(r["job_id"]), "resubmission": int(r["resubmission"])} for r in runs]}
        return self.request("POST", f"{API}/control", body=body, idempotent=True)[1]


def _verification_error(e: BaseException) -> Optional[ssl.SSLCertVerificationError]:
    """The certificate verification failure (chain, host name, expiry) behind a TLS error of urllib3, if that is
    what it was."""
    seen: List[BaseException] = []
    cur: Optional[BaseException] = e
    while cur is not None and cur not in seen:
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__ or next((a for a in cur.args if isinstance(a, BaseException)), None)
    return None


def _reason(e: BaseException) -> str:
    inner = getattr(e, "reason", None)
    text = str(inner or e)
    return text.split(": ", 1)[-1] if text.startswith("<") else text


def _error(status: int, data: bytes) -> CentralError:
    try:
        err = orjson.loads(data)["error"]
        return CentralError(status, str(err.get("code", f"http_{status}")), str(err.get("message", "")),
                            line=err.get("line"), column=err.get("column"))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        text = data[:300].decode("utf-8", "replace").strip()
        return CentralError(status, f"http_{status}", text or f"HTTP {status}")


__all__ = ["PILOT_TOKEN_MAX_TTL_S", "CentralClient", "CentralError", "CentralUnreachable", "CentralUntrusted",
           "token_expires"]
