"""A client of ARC's A-REX REST interface, version 1.0 (`https://HOST:PORT/arex/rest/1.0`), on urllib3.

What A-REX 6.17 answers, as recorded in tests/fixtures/arc/ (and what this module holds every answer to):

- `POST /jobs?action=new` with xRSL (`application/rsl`; several jobs as `+(&...)(&...)`): 201 and
  `{"job": {...}}` for one description, `{"job": [{...}, ...]}` for several, in input order; each entry has
  "status-code" (a string: "201" accepted, else refused), "reason", and "id" when accepted. A description that does
  not parse refuses the whole request when it is one of several (HTTP 500, empty body), only itself when alone.
- `POST /jobs?action=status|kill|clean` with `{"job": [{"id": ID}, ...]}`: 201 and one entry per id (an object when
  there was one), each with "id", "status-code" ("200" status, "202" queued for kill/clean, "404" unknown job), and
  for status a "state" (the info provider's view, which lags the live state by up to a minute).
- `GET /jobs/ID/diagnose/status`: text/plain, the live A-REX state word (ACCEPTED, PREPARING, SUBMIT, INLRMS,
  CANCELING, FINISHING, FINISHED, DELETED...). A failed or killed job is FINISHED there too; its reason is in
  `GET /jobs/ID/diagnose/failed` (404 when the job did not fail).
- `GET|PUT /jobs/ID/session/PATH`: a file's bytes; `GET` of a directory: `{"file": NAME|[NAMES], "dir": ...}`.
- 404 for an unknown job id on every per-job path.

Trust: the server's certificate and host name are always verified (against `ca_file`/`ca_dir`, else the system's
CAs); no environment variable changes that (urllib3 reads none). The client authenticates with an X.509
certificate and key (the key must be private to its owner) and/or a bearer token.

Retries: GETs, `action=status` and session PUTs are idempotent and are retried on connection errors and 5xx
answers, a bounded number of times with a short back-off; `action=new` is never retried (a lost answer may still
have created the jobs: the caller decides), nor are kill and clean (their caller polls anyway). TLS failures are
never retried: a certificate that does not verify will not verify on the second try either.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import stat
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union
from urllib.parse import quote, urlsplit

import urllib3
from urllib3.exceptions import HTTPError, SSLError

from gridpilot import private_files
from gridpilot.errors import GridpilotError

#: At most this many descriptions or job ids go into one request (A-REX takes more; a bound keeps one answer
#: small enough to hold and to validate). `states`/`kill`/`clean` split longer lists into several requests.
MAX_BULK = 1000
#: `get_file` holds a file in memory: at most this many bytes (use `download` for bigger ones).
MAX_GET_BYTES = 64 << 20
#: A JSON answer of A-REX's is read whole: at most this many bytes (1000 entries of ~150 bytes fit many times).
MAX_JSON_BYTES = 8 << 20
#: A job id goes into URL paths: A-REX's are 30-64 letters and digits; anything else is refused before sending.
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
#: A-REX's state words: capitals (and, in some versions, a ':' sub-state such as "INLRMS:Q").
_STATE = re.compile(r"^[A-Z][A-Z_]{1,31}(:[A-Za-z_]{1,31})?$")
#: How many times an idempotent request is tried, and the back-off before each retry (seconds).
_ATTEMPTS = 3
_BACKOFF_S = (0.5, 2.0)
#: The reason A-REX writes into diagnose/failed when a kill request ended the job.
_KILLED_REASON = "canceled by external request"
#: A state change into CANCELING in a job's history (diagnose/errors): what a kill request does to a live job.
_CANCELED = re.compile(rb"(?m)^\S+ Job state change [A-Z]+ -> CANCELING ")


class ArcError(GridpilotError):
    """A request to an ARC CE failed: refused, unreachable, not trusted. `status` is the HTTP status when there was
    an answer; `url` the URL asked."""

    def __init__(self, message: str, status: Optional[int] = None, url: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class ArcAnswerError(ArcError):
    """The CE answered, but not as REST 1.0 says; the message names the field, e.g. "job[1].status-code"."""


class ArcJobGone(ArcError):
    """The CE does not know this job (404 for its id): cleaned, or lost."""


class _Transient(ArcError):
    """No answer (connection refused or lost, timeout): worth another try for an idempotent request."""


@dataclass(frozen=True)
class Submitted:
    """What the CE said about one description of a bulk submission: `id` None when it refused that one."""

    id: Optional[str]
    code: int
    reason: str


PathLike = Union[str, "os.PathLike[str]"]


class ArcRest:
    """One A-REX's REST 1.0 interface. Thread-safe as urllib3's pool is; `close()` when done (or use `with`)."""

    def __init__(self, url: str, *, cert: Optional[PathLike] = None, key: Optional[PathLike] = None,
                 ca_dir: Optional[PathLike] = None, ca_file: Optional[PathLike] = None, token: Optional[str] = None,
                 timeout_s: float = 60.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ArcError(f"ARC CE URL {url!r}: not https://HOST[:PORT]/PATH", url=url)
        if parts.query or parts.fragment:
            raise ArcError(f"ARC CE URL {url!r}: no query or fragment allowed", url=url)
        if not timeout_s > 0:
            raise ArcError(f"ARC CE {url}: timeout_s must be > 0, not {timeout_s}", url=url)
        self.url = url.rstrip("/")
        self._path = parts.path.rstrip("/")
        self._host = parts.hostname
        if bool(cert) != bool(key):
            raise ArcError(f"ARC CE {url}: a client certificate and its key go together (cert={cert}, key={key})",
                           url=url)
        if token is not None and (not token or any(c in token for c in "\r\n")):
            raise ArcError(f"ARC CE {url}: the bearer token is empty or holds a line break", url=url)
        for what, path in (("certificate", cert), ("CA file", ca_file)):
            if path is not None and not os.path.isfile(path):
                raise ArcError(f"ARC CE {url}: {what} {path}: no such file", url=url)
        if ca_dir is not None and not os.path.isdir(ca_dir):
            raise ArcError(f"ARC CE {url}: CA directory {ca_dir}: no such directory", url=url)
        if key is not None:
            _check_private_key(Path(key), url)
        if cert is None and token is None:
            raise ArcError(f"ARC CE {url}: neither a client certificate nor a token to authenticate with", url=url)
        try:
            ctx = ssl.create_default_context(cafile=os.fspath(ca_file) if ca_file else None,
                                             capath=os.fspath(ca_dir) if ca_dir else None)
            if cert is not None and key is not None:
                # An empty password, not none: OpenSSL would otherwise prompt on the terminal for an encrypted key.
                ctx.load_cert_chain(os.fspath(cert), os.fspath(key), password=b"")
        except (ssl.SSLError, OSError) as e:
            raise ArcError(f"ARC CE {url}: TLS set-up with cert={cert} key={key} ca_file={ca_file} "
                           f"ca_dir={ca_dir} failed: {e}", url=url) from None
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        self._headers: Dict[str, str] = {}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._pool = urllib3.HTTPSConnectionPool(
            self._host, parts.port or 443, ssl_context=ctx, server_hostname=self._host,
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s), retries=False, maxsize=4, block=False)

    def __enter__(self) -> ArcRest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()

    # -- jobs -------------------------------------------------------------------------------------------------------
    def submit(self, descriptions: Sequence[str], dialect: str = "xrsl") -> List[Submitted]:
        """Submits every description in one POST; what the CE said of each, in input order. ArcError when the
        request as a whole failed (then none was created, as far as the CE says)."""
        if dialect != "xrsl":
            raise ValueError(f"dialect {dialect!r}: only 'xrsl' is supported")
        if isinstance(descriptions, str) or not descriptions:
            raise ValueError("descriptions: a non-empty sequence of xRSL strings")
        if len(descriptions) > MAX_BULK:
            raise ValueError(f"descriptions: {len(descriptions)} > {MAX_BULK} in one request")
        texts = []
        for i, d in enumerate(descriptions):
            text = d.strip() if isinstance(d, str) else ""
            if not text.startswith("&"):
                raise ValueError(f"descriptions[{i}]: one xRSL job description, starting with '&'")
            texts.append(text)
        body = texts[0] if len(texts) == 1 else "+" + "".join(f"({t})" for t in texts)
        path = "/jobs?action=new"
        answer = self._json("POST", path, body=body.encode(), content_type="application/rsl", idempotent=False)
        with self._naming("POST", path):
            entries = _job_entries(answer, len(texts))
            out = []
            seen = set()
            for i, e in enumerate(entries):
                code = _code(e, i)
                reason = _str_field(e, "reason", i, required=False) or ""
                job_id = _str_field(e, "id", i, required=200 <= code < 300)
                if job_id is not None and not _JOB_ID.match(job_id):
                    raise ArcAnswerError(f"job[{i}].id: {job_id[:80]!r} is not an A-REX job id")
                accepted = job_id if 200 <= code < 300 else None
                if accepted is not None and accepted in seen:
                    raise ArcAnswerError(f"job[{i}].id: {accepted!r} given twice")
                seen.add(accepted)
                out.append(Submitted(id=accepted, code=code, reason=reason))
        return out

    def diagnose_state(self, job_id: str) -> str:
        """The job's live state in A-REX (diagnose/status), not the info provider's lagging one. A FINISHED job
        whose diagnose/failed holds a reason is reported as FAILED, or KILLED when that reason is a kill request
        (A-REX itself says FINISHED for all three). ArcJobGone on 404."""
        text = self._text(f"/jobs/{_job(job_id)}/diagnose/status", job_id, "diagnose/status")
        words = text.split()
        if not words or not _STATE.match(words[0]):
            raise ArcAnswerError(f"diagnose/status of {job_id}: {text[:80]!r} is not an A-REX state word",
                                 url=self.url)
        state = words[0]
        if state == "FINISHED":
            reason = self.failure_reason(job_id)
            if reason is not None:
                return "KILLED" if self._was_canceled(job_id, reason) else "FAILED"
        return state

    def failure_reason(self, job_id: str) -> Optional[str]:
        """Why A-REX failed the job (diagnose/failed), None when it did not fail. ArcJobGone on 404 for the job."""
        path = f"/jobs/{_job(job_id)}/diagnose/failed"
        r = self._request("GET", path, idempotent=True)
        try:
            if r.status == 404:
                self._gone_or(job_id, None)
                return None
            self._expect(r, "GET", path, (200,))
            text = _read_bounded(r, MAX_JSON_BYTES, self.url + path).decode("utf-8", "replace").strip()
        finally:
            _release(r)
        return text or "failed (no reason given)"

    def _was_canceled(self, job_id: str, reason: str) -> bool:
        """A kill request ended the job: its failure reason says so, or (A-REX 6.17 leaves the reason empty at
        times) its history in diagnose/errors went through CANCELING."""
        if _KILLED_REASON in reason.lower():
            return True
        path = f"/jobs/{_job(job_id)}/diagnose/errors"
        r = self._request("GET", path, idempotent=True)
        try:
            if r.status == 404:
                return False
            self._expect(r, "GET", path, (200,))
            return _CANCELED.search(_read_bounded(r, MAX_JSON_BYTES, self.url + path)) is not None
        finally:
            _release(r)

    def states(self, job_ids: Iterable[str]) -> Dict[str, str]:
        """action=status: the info provider's state of each job it knows (missing ids are absent). This lags the
        live state (diagnose_state) by up to a minute, but is one request for many jobs."""
        out: Dict[str, str] = {}
        for chunk in _chunks([_job(j) for j in job_ids]):
            for e in self._action("status", chunk):
                if int(e["status-code"]) == 200:
                    out[str(e["id"])] = str(e["state"])
        return out

    def kill(self, job_ids: Iterable[str]) -> Dict[str, int]:
        """Asks A-REX to kill each job: its status code per id (202 queued, 404 unknown...)."""
        return self._codes("kill", job_ids)

    def clean(self, job_ids: Iterable[str]) -> Dict[str, int]:
        """Asks A-REX to remove each job and its session directory: its status code per id (202 queued...).
        Asynchronous: the job answers 404 once A-REX has done it."""
        return self._codes("clean", job_ids)

    # -- session directory ------------------------------------------------------------------------------------------
    def put_file(self, job_id: str, name: str, data: Union[bytes, Path]) -> None:
        """Writes `name` (a path relative to the job's session directory) from bytes or a file (streamed). Retried
        like a GET: writing the same bytes again leaves the same file."""
        path = f"/jobs/{_job(job_id)}/session/{_session_path(name)}"
        for attempt in range(_ATTEMPTS):
            last = attempt + 1 >= _ATTEMPTS
            try:
                if isinstance(data, (bytes, bytearray)):
                    r = self._request("PUT", path, body=bytes(data), content_type="application/octet-stream",
                                      idempotent=False, length=len(data))
                else:
                    with open(data, "rb") as fh:
                        r = self._request("PUT", path, body=fh, content_type="application/octet-stream",
                                          idempotent=False, length=os.fstat(fh.fileno()).st_size)
            except _Transient:
                if last:
                    raise
                time.sleep(_BACKOFF_S[attempt])
                continue
            if r.status >= 500 and not last:
                _discard(r)
                time.sleep(_BACKOFF_S[attempt])
                continue
            try:
                if r.status == 404:
                    self._gone_or(job_id, ArcError(f"PUT {self.url}{path}: HTTP 404", 404, self.url + path))
                self._expect(r, "PUT", path, (200, 201, 204))
            finally:
                _discard(r)
            return

    def get_file(self, job_id: str, name: str, max_bytes: int = MAX_GET_BYTES) -> bytes:
        """The bytes of `name` in the job's session directory (at most `max_bytes`, else ArcAnswerError).
        ArcJobGone when the job is unknown; ArcError with status 404 when only the file is missing."""
        path = f"/jobs/{_job(job_id)}/session/{_session_path(name)}"
        r = self._request("GET", path, idempotent=True)
        try:
            self._file_status(r, job_id, path)
            return _read_bounded(r, max_bytes, self.url + path)
        finally:
            _release(r)

    def download(self, job_id: str, name: str, dest: Path) -> int:
        """Streams `name` from the session directory into `dest` (a temporary file beside it, renamed into place
        once complete, so `dest` is never half written); the number of bytes written. Errors as get_file; a
        connection lost midway starts the download again (bounded)."""
        path = f"/jobs/{_job(job_id)}/session/{_session_path(name)}"
        dest = Path(dest)
        for attempt in range(_ATTEMPTS):
            r = self._request("GET", path, idempotent=True)
            try:
                self._file_status(r, job_id, path)
                fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
                try:
                    written = 0
                    with os.fdopen(fd, "wb") as out:
                        for block in r.stream(1 << 20):
                            out.write(block)
                            written += len(block)
                    expected = r.headers.get("Content-Length")
                    if expected is not None and expected.isdigit() and int(expected) != written:
                        raise ArcAnswerError(f"GET {self.url}{path}: {written} bytes, Content-Length said "
                                             f"{expected}", r.status, self.url + path)
                    os.replace(tmp, dest)
                    return written
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
            except HTTPError as e:
                if isinstance(e, SSLError) or attempt + 1 >= _ATTEMPTS:
                    raise ArcError(f"GET {self.url}{path}: {e}", url=self.url + path) from None
                time.sleep(_BACKOFF_S[attempt])
            finally:
                _release(r)
        raise AssertionError("unreachable")  # pragma: no cover

    def list_session(self, job_id: str, path: str = "") -> List[str]:
        """The names in a directory of the job's session (its top when `path` is empty), sorted; a directory's name
        ends with '/'."""
        rel = _session_path(path) if path else ""
        url_path = f"/jobs/{_job(job_id)}/session/{rel}"
        r = self._request("GET", url_path, idempotent=True)
        try:
            self._file_status(r, job_id, url_path)
            data = _read_bounded(r, MAX_JSON_BYTES, self.url + url_path)
        finally:
            _release(r)
        if not data:
            return []  # an empty session: A-REX answers nothing at all
        answer = self._decode(r, data, "GET", url_path)
        if not isinstance(answer, dict):
            raise ArcAnswerError(f"session listing of {job_id}: not a JSON object", r.status, self.url + url_path)
        names: List[str] = []
        for key, suffix in (("file", ""), ("dir", "/")):
            value = answer.get(key, [])
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(n, str) and n and "/" not in n for n in items):
                raise ArcAnswerError(f"session listing of {job_id}: {key}: not a name or a list of names",
                                     r.status, self.url + url_path)
            names.extend(n + suffix for n in items)
        return sorted(names)

    # -- plumbing ---------------------------------------------------------------------------------------------------
    def _codes(self, action: str, job_ids: Iterable[str]) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for chunk in _chunks([_job(j) for j in job_ids]):
            for e in self._action(action, chunk):
                out[str(e["id"])] = int(e["status-code"])
        return out

    def _action(self, action: str, ids: List[str]) -> List[Mapping[str, Any]]:
        """POST /jobs?action=ACTION for `ids`: its entries, each checked to be one of the ids asked about."""
        body = json.dumps({"job": [{"id": j} for j in ids]}).encode()
        path = f"/jobs?action={action}"
        answer = self._json("POST", path, body=body, content_type="application/json", idempotent=action == "status")
        with self._naming("POST", path):
            entries = _job_entries(answer, len(ids))
            asked = set(ids)
            for i, e in enumerate(entries):
                job_id = _str_field(e, "id", i, required=True)
                if job_id not in asked:
                    raise ArcAnswerError(f"job[{i}].id: {str(job_id)[:80]!r} was not asked about")
                if _code(e, i) == 200 and action == "status":
                    _str_field(e, "state", i, required=True)
        return entries

    @contextmanager
    def _naming(self, method: str, path: str) -> Iterator[None]:
        """An ArcAnswerError raised by the checks of an answer's fields gets the request's URL and names it."""
        try:
            yield
        except ArcAnswerError as e:
            if e.url:
                raise
            raise ArcAnswerError(f"{method} {self.url}{path}: {e}", e.status, self.url + path) from None

    def _json(self, method: str, path: str, *, body: bytes, content_type: str, idempotent: bool) -> Any:
        r = self._request(method, path, body=body, content_type=content_type, idempotent=idempotent)
        try:
            self._expect(r, method, path, (200, 201))
            data = _read_bounded(r, MAX_JSON_BYTES, self.url + path)
        finally:
            _release(r)
        return self._decode(r, data, method, path)

    def _decode(self, r: urllib3.BaseHTTPResponse, data: bytes, method: str, path: str) -> Any:
        ctype = r.headers.get("Content-Type", "")
        if not ctype.startswith("application/json"):
            raise ArcAnswerError(f"{method} {self.url}{path}: Content-Type {ctype!r}, not application/json",
                                 r.status, self.url + path)
        try:
            return json.loads(data)
        except ValueError as e:
            raise ArcAnswerError(f"{method} {self.url}{path}: not JSON ({e})", r.status, self.url + path) from None

    def _text(self, path: str, job_id: str, what: str) -> str:
        r = self._request("GET", path, idempotent=True)
        try:
            if r.status == 404:
                raise ArcJobGone(f"ARC job {job_id} is unknown to {self.url} (404)", 404, self.url + path)
            self._expect(r, "GET", path, (200,))
            try:
                data = _read_bounded(r, 4096, self.url + path)
            except ArcAnswerError:
                raise ArcAnswerError(f"{what} of {job_id}: more than 4096 bytes, not a state word", r.status,
                                     self.url + path) from None
        finally:
            _discard(r)
        return data.decode("ascii", "replace").strip()

    def _file_status(self, r: urllib3.BaseHTTPResponse, job_id: str, path: str) -> None:
        """A session GET's status: 404 means the job is gone or only the file is missing; diagnose/status tells."""
        if r.status == 404:
            self._gone_or(job_id, ArcError(f"GET {self.url}{path}: no such file or directory in the session of "
                                           f"{job_id} (404)", 404, self.url + path))
        self._expect(r, "GET", path, (200,))

    def _gone_or(self, job_id: str, error: Optional[ArcError]) -> None:
        """After a 404 on a path below a job: ArcJobGone when the job itself is unknown, else `error` (if any)."""
        probe = self._request("GET", f"/jobs/{_job(job_id)}/diagnose/status", idempotent=True)
        _discard(probe)
        if probe.status == 404:
            raise ArcJobGone(f"ARC job {job_id} is unknown to {self.url} (404)", 404,
                             f"{self.url}/jobs/{job_id}")
        if error is not None:
            raise error

    def _expect(self, r: urllib3.BaseHTTPResponse, method: str, path: str, ok: Sequence[int]) -> None:
        if r.status in ok:
            return
        body = ""
        try:
            body = r.read(300).decode("utf-8", "replace").strip()
        except HTTPError:
            pass
        raise ArcError(f"{method} {self.url}{path}: HTTP {r.status}{': ' + body if body else ''}", r.status,
                       self.url + path)

    def _request(self, method: str, path: str, *, body: Any = None, content_type: Optional[str] = None,
                 idempotent: bool, length: Optional[int] = None) -> urllib3.BaseHTTPResponse:
        """One exchange, retried when `idempotent` (connection errors, 5xx). The answer is not read yet: callers
        read it bounded (_read_bounded) and give the connection back (release_conn or _discard)."""
        headers = dict(self._headers)
        headers["Accept"] = "application/json, text/plain, application/octet-stream"
        if content_type:
            headers["Content-Type"] = content_type
        if length is not None:
            headers["Content-Length"] = str(length)
        full = self._path + path
        attempts = _ATTEMPTS if idempotent else 1
        for attempt in range(attempts):
            try:
                r = self._pool.urlopen(method, full, body=body, headers=headers, preload_content=False,
                                       redirect=False, retries=False)
            except SSLError as e:
                raise ArcError(f"{method} {self.url}{path}: TLS failed ({_ssl_reason(e)})", url=self.url + path) \
                    from None
            except HTTPError as e:
                if attempt + 1 >= attempts:
                    raise _Transient(f"{method} {self.url}{path}: {e}", url=self.url + path) from None
                time.sleep(_BACKOFF_S[attempt])
                continue
            if r.status >= 500 and attempt + 1 < attempts:
                _discard(r)
                time.sleep(_BACKOFF_S[attempt])
                continue
            return r
        raise AssertionError("unreachable")  # pragma: no cover


# -- answer checks --------------------------------------------------------------------------------------------------
def _job_entries(answer: Any, expected: int) -> List[Mapping[str, Any]]:
    """`{"job": {...}}` or `{"job": [{...}, ...]}` with exactly `expected` objects."""
    if not isinstance(answer, dict) or "job" not in answer:
        raise ArcAnswerError("job: missing (the answer is not an object with a 'job' member)")
    job = answer["job"]
    entries = [job] if isinstance(job, dict) else job
    if not isinstance(entries, list):
        raise ArcAnswerError("job: neither an object nor a list")
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise ArcAnswerError(f"job[{i}]: not an object")
    if len(entries) != expected:
        raise ArcAnswerError(f"job: {len(entries)} entries for {expected} asked")
    return entries


def _code(entry: Mapping[str, Any], i: int) -> int:
    raw = entry.get("status-code")
    # A-REX sends a string of digits; an int is taken too, nothing else.
    if isinstance(raw, bool) or not (isinstance(raw, int) or isinstance(raw, str) and raw.isdigit()):
        raise ArcAnswerError(f"job[{i}].status-code: {str(raw)[:40]!r} is not an HTTP status code")
    code = int(raw)
    if not 100 <= code <= 599:
        raise ArcAnswerError(f"job[{i}].status-code: {code} is not an HTTP status code")
    return code


def _str_field(entry: Mapping[str, Any], name: str, i: int, *, required: bool) -> Optional[str]:
    value = entry.get(name)
    if value is None:
        if required:
            raise ArcAnswerError(f"job[{i}].{name}: missing")
        return None
    if not isinstance(value, str) or (required and not value) or len(value) > 4096:
        raise ArcAnswerError(f"job[{i}].{name}: not a string of 1-4096 characters")
    return value


def _job(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise ValueError(f"ARC job id {str(job_id)[:80]!r}: letters, digits, '_' and '-' only (1-256)")
    return job_id


def _session_path(name: str) -> str:
    """A path relative to a session directory, each part URL-quoted; '..', '.', empty parts and a leading '/'
    refused (A-REX refuses them too, but the request should not leave here)."""
    parts = name.split("/") if isinstance(name, str) else [""]
    if not name or any(p in ("", ".", "..") for p in parts) or any(c in name for c in "\0\r\n"):
        raise ValueError(f"session path {str(name)[:200]!r}: a relative path without '.', '..' or empty parts")
    return "/".join(quote(p, safe="") for p in parts)


def _chunks(ids: List[str]) -> List[List[str]]:
    return [ids[i:i + MAX_BULK] for i in range(0, len(ids), MAX_BULK)]


def _read_bounded(r: urllib3.BaseHTTPResponse, limit: int, url: str) -> bytes:
    out = bytearray()
    for block in r.stream(1 << 20):
        out += block
        if len(out) > limit:
            raise ArcAnswerError(f"GET {url}: more than {limit} bytes", r.status, url)
    return bytes(out)


def _release(r: urllib3.BaseHTTPResponse) -> None:
    """Give an answer's connection back to the pool, never with unread bytes on it: the next request on that
    connection would read them as its own answer (urllib3 then raises ResponseNotReady). A 404 or an error answer
    whose body was not read is discarded first."""
    if r.closed:
        r.release_conn()
    else:
        _discard(r)


def _discard(r: urllib3.BaseHTTPResponse) -> None:
    """Done with an answer whose rest is not wanted: a short rest is read so that the connection can serve again;
    a long or unknown one closes the connection instead of reading whatever a server chose to send."""
    length = r.headers.get("Content-Length", "")
    if length.isdigit() and int(length) <= 1 << 16:
        r.drain_conn()
    else:
        r.close()
    r.release_conn()


def _check_private_key(key: Path, url: str) -> None:
    try:
        st = key.stat()
    except OSError as e:
        raise ArcError(f"ARC CE {url}: key {key}: {e.strerror or e}", url=url) from None
    if not stat.S_ISREG(st.st_mode):
        raise ArcError(f"ARC CE {url}: key {key}: not a regular file", url=url)
    problem = private_files.exposure(st.st_mode)
    if problem:
        raise ArcError(f"ARC CE {url}: key {key} {problem}", url=url)


def _ssl_reason(e: SSLError) -> str:
    """The innermost SSL error's words (urllib3 wraps it in MaxRetryError-like layers)."""
    inner: Optional[BaseException] = e
    while inner is not None and not isinstance(inner, ssl.SSLError) and inner.__context__ is not None:
        inner = inner.__context__
    if isinstance(inner, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {inner.verify_message or inner}"
    return str(inner or e)
