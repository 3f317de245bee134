"""The HTTP API: Starlette routes under /api/v1, JSON in and out, every error as {"error": {"code", "message"}}.

Each route is a thin adapter: read and parse the body (capped at settings.max_body, 413 beyond), then in a worker
thread authenticate the bearer token and call the operation (jobs, matching, reports, catalogue), which raises
ApiError for the caller's mistakes. The process keeps no state between requests except caches (the key set, read
again every few seconds; verified tokens, held against it on each use; parsed Requirements) and its own metrics, so
any number of processes can serve one PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, List, Mapping, Optional

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from gridpilot import __version__
from gridpilot.central import (admission, areas, auth, bounds, broker, bulkreports, catalogue, control, history,
                               jobs, keys, matching, migrations, nodeprobes, nodes, offers, pacing, pilots, reports,
                               scopes, splitting, spy, summary, tokens, ui)
from gridpilot.central.auth import Principal
from gridpilot.central.db import Database, now
from gridpilot.central.access import AccessLog, note_principal
from gridpilot.central.metrics import Metrics
from gridpilot.central.problems import ApiError, bad_request
from gridpilot.central.requestbody import read_capped
from gridpilot.central.settings import CentralSettings
from gridpilot.central.sweeper import SweepReport, Sweeper
from gridpilot.central.ui import web as ui_web
from gridpilot.states import JobStatus

log = logging.getLogger("gridpilot.central")

API = "/api/v1"
JWKS_PATH = "/.well-known/jwks.json"
#: How long a process reuses its list of storage elements before reading it again.
STORAGE_CACHE_S = 5.0


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(e: ApiError) -> JsonResponse:
    retry = e.extra.get("retry_after")
    return JsonResponse(e.body(), status_code=e.status,
                        headers=None if retry is None else {"Retry-After": str(retry)})


def _internal() -> JsonResponse:
    """The answer to a bug: generic, never the exception's text (which may hold paths, SQL or values)."""
    return error_response(ApiError(500, "internal", "internal error; the server log has the details"))


class _Digits(Convertor[str]):
    """A path id as the digits sent. Starlette's `int` converts while routing, outside any handler, where an id of
    5,000 digits (more than int() takes from text) was a bare 500; the route checks the bound (bounds.path_id)."""

    regex = "[0-9]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return str(value)


register_url_convertor("digits", _Digits())


class Central:
    """One process's handle on the service: the database, the token keys, caches, metrics and the sweeper.

    KeyFileError when the process is to sign (not settings.verify_only) and its key file is missing or holds a key
    central does not accept: said at start rather than at the first match."""

    def __init__(self, settings: CentralSettings, db: Database) -> None:
        areas.check_template(settings.user_area)
        self.settings = settings
        self.db = db
        self.keys = keys.Keys(db, None if settings.verify_only else settings.signing_key_path)
        if not settings.verify_only:
            self.keys.signing_key()
        self.verifier = tokens.Verifier(self.keys)
        self.metrics = Metrics(lambda: jobs.count_by_state(db), [s.name for s in JobStatus],
                               lambda: pilots.pilot_counts(db), pilots.PILOT_STATES, lambda: nodes.bad_by_site(db),
                               lambda: nodeprobes.counts(db, now()))
        self.node_policy = nodes.Policy(settings.node_bad_after, settings.node_bad_window_s)
        self.broker_policy = settings.broker_policy()
        self.requirements = broker.RequirementCache()
        self.offers = offers.Recorder()
        self.pacer = pacing.Pacer(db, settings.control_poll_rate)
        self._storage: List[Dict[str, Any]] = []
        self._storage_read = -math.inf
        self.sweeper: Optional[Sweeper] = None
        self.admission = admission.Admission(settings.max_inflight, settings.rate_limit, settings.rate_burst,
                                             self.metrics.registry)
        db.limit_statements(settings.db_statement_timeout_s)

    @property
    def key(self) -> keys.Keys:
        """What tokens.mint signs with (the name callers used when it was one HS256 secret)."""
        return self.keys

    def storage(self) -> List[Dict[str, Any]]:
        t = time.monotonic()
        if t - self._storage_read > STORAGE_CACHE_S:
            self._storage = catalogue.storage_elements(self.db)
            self._storage_read = t
        return self._storage

    def start_sweeper(self) -> None:
        s = self.settings
        if self.sweeper is None and s.sweep_interval_s > 0:
            recorder = history.Recorder(self.db, self.metrics.served, s.history_interval_s, s.history_keep_s)
            self.sweeper = Sweeper(self.db, interval_s=s.sweep_interval_s, zombie_after_s=s.zombie_after_s,
                                   expire_after_s=s.expire_after_s, max_auto_resubmits=s.max_auto_resubmits,
                                   on_report=self._count_sweep, after=recorder)
            self.sweeper.start()

    def _count_sweep(self, r: SweepReport) -> None:
        for state, ids in (("ZOMBIE", r.zombies), ("EXPIRED", r.expired), ("WAITING", r.resubmitted)):
            if ids:
                self.metrics.sweeps.labels(state=state).inc(len(ids))

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()
            self.sweeper = None
        self.db.dispose()


@dataclass
class Call:
    """What an operation gets from a request."""

    principal: Principal
    path: Mapping[str, Any]
    query: Mapping[str, str]
    body: Dict[str, Any] = field(default_factory=dict)
    now: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def job_id(self) -> int:
        return int(self.path["job_id"])


async def _read_json(request: Request, limit: int) -> Dict[str, Any]:
    raw = await read_capped(request, limit)
    if not raw.strip():
        raise bad_request("the request needs a JSON object body", "bad_json")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise bad_request(f"malformed JSON: {e}", "bad_json") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", "bad_json")
    return data


Operation = Callable[[Central, Call], Any]


def _route(central: Central, method: str, path: str, op: Operation, *, body: bool = False,
           status: int = 200, authenticate: bool = True) -> Route:
    name = path.replace(":digits}", "}")  # the route template is the metrics label: one series per route
    scope = scopes.for_route(method, path)

    def run(header: Optional[str], call: Call) -> Any:
        if authenticate:
            with central.db.lookup() as conn:
                call.principal = auth.authenticate(conn, central.verifier, header, scope)
        return op(central, call)

    async def endpoint(request: Request) -> Response:
        if not authenticate:  # health and metrics: not admission-controlled (central/admission.py)
            return await handle(request)
        client = request.client.host if request.client is not None else None
        ticket, refusal = central.admission.enter(name, request.headers.get("authorization"), client)
        if refusal is not None:
            central.metrics.requests.labels(method=method, route=name, status=str(refusal.status)).inc()
            return error_response(refusal)
        try:
            return await handle(request)
        finally:
            central.admission.leave(ticket)  # type: ignore[arg-type]

    async def handle(request: Request) -> Response:
        t0 = time.perf_counter()
        call = Call(principal=None, path=request.path_params, query=request.query_params,  # type: ignore[arg-type]
                    headers=request.headers)
        try:
            # Every path parameter is an id (the routes' `digits`) but a node's host name, each bounded before anything
            # else reads it.
            call.path = {k: bounds.text(v, k, bounds.MAX_NAME, what=f"the {k} in the path") if k == "host"
                         else bounds.path_id(v, k) for k, v in request.path_params.items()}
            if body:
                call.body = await _read_json(request, central.settings.max_body)
            call.now = now()
            result = await run_in_threadpool(run, request.headers.get("authorization"), call)
            response = result if isinstance(result, Response) else JsonResponse(result, status_code=status)
        except ApiError as e:
            response = error_response(e)
        except ClientDisconnect:
            # The caller went away before its body arrived: not a bug, and nobody is left to answer.
            log.info("%s %s: the client went away before sending its whole body", method, request.url.path)
            response = error_response(ApiError(400, "incomplete_body", "the request body did not arrive whole"))
        except Exception as e:
            if admission.is_database_unavailable(e):
                log.warning("%s %s: database unavailable: %s", method, request.url.path, str(e).splitlines()[0])
                central.admission.db_busy.labels(route=name).inc()
                response = error_response(admission.database_unavailable(e))
            else:
                log.exception("%s %s failed", method, request.url.path)
                response = _internal()
        # Who asked, for the access log (set even when the operation refused them after authenticating).
        note_principal(request.scope, call.principal)
        central.metrics.requests.labels(method=method, route=name, status=str(response.status_code)).inc()
        central.metrics.latency.labels(method=method, route=name).observe(time.perf_counter() - t0)
        return response

    return Route(path, endpoint, methods=[method], name=f"{method} {path}")


# -- operations: each adapts one request to one call of jobs, matching, reports or catalogue --


def op_health(c: Central, call: Call) -> Dict[str, Any]:
    with c.db.read() as conn:
        version = migrations.current_version(conn)
    return {"status": "ok", "version": __version__, "schema": version, "database": c.db.backend}


def op_whoami(c: Central, call: Call) -> Dict[str, Any]:
    return call.principal.claims.to_dict()


def op_submit(c: Central, call: Call) -> Dict[str, Any]:
    out = splitting.submit(c.db, call.principal, call.body, call.now, c.requirements, user_area=c.settings.user_area,
                           max_subjobs=c.settings.max_subjobs)
    c.metrics.submissions.inc()
    return out


def op_list(c: Central, call: Call) -> Dict[str, Any]:
    return {"jobs": splitting.decorate(c.db, jobs.list_jobs(c.db, call.principal, call.query))}


def op_get(c: Central, call: Call) -> Dict[str, Any]:
    return splitting.decorate(c.db, [jobs.get_job(c.db, call.principal, call.job_id)])[0]


def op_kill(c: Central, call: Call) -> Dict[str, Any]:
    # A masterjob's kill is its unfinished subjobs' (splitting.kill); any other job's is jobs.kill.
    return splitting.kill(c.db, call.principal, call.job_id, call.now)


def op_resubmit(c: Central, call: Call) -> Dict[str, Any]:
    # A masterjob's resubmission is its failed subjobs' (splitting.resubmit_master); any other job's resubmit.py's.
    return splitting.resubmit_master(c.db, call.principal, call.job_id, call.now, c.settings.max_user_resubmits)


def op_masterjob(c: Central, call: Call) -> Dict[str, Any]:
    return splitting.masterjob(c.db, call.principal, call.job_id, call.query)


def op_why(c: Central, call: Call) -> Dict[str, Any]:
    return offers.why(c.db, call.principal, call.job_id, call.now, policy=c.broker_policy)


def op_summary(c: Central, call: Call) -> Dict[str, Any]:
    # `gridpilot top`'s one request per refresh (central/summary.py).
    return summary.summary(c.db, call.principal, call.query, call.now)


def _float_query(query: Mapping[str, str], name: str) -> Optional[float]:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        v = float(raw)
    except ValueError:
        raise bounds.bad_field(name, f"query parameter {name} must be a number, got {raw[:40]!r}") from None
    if not math.isfinite(v):
        raise bounds.bad_field(name, f"query parameter {name} must be a finite number")
    return v


def op_trace_read(c: Central, call: Call) -> Dict[str, Any]:
    since = _float_query(call.query, "since")
    limit = jobs.query_int(call.query, "limit", 10_000, 1, 100_000)
    return {"entries": jobs.read_trace(c.db, call.principal, call.job_id, since, limit)}


def op_trace_append(c: Central, call: Call) -> Dict[str, Any]:
    return {"appended": jobs.append_trace(c.db, call.principal, call.job_id, call.body, call.now)}


def op_status(c: Central, call: Call) -> Dict[str, Any]:
    out = reports.set_status(c.db, call.principal, call.job_id, call.body, call.now,
                          max_auto_resubmits=c.settings.max_auto_resubmits, node_policy=c.node_policy)
    c.metrics.status_reports.labels(state=str(call.body.get("state")).upper()[:16]).inc()
    return out


def op_match(c: Central, call: Call) -> Any:
    t0 = time.perf_counter()
    res = matching.match(c.db, call.principal, call.body, call.now, key=c.keys, cache=c.requirements,
                     storage=c.storage(), offers=c.offers, policy=c.broker_policy)
    c.metrics.match_latency.observe(time.perf_counter() - t0)
    c.metrics.matches.labels(result="assigned" if res.job else "empty").inc()
    if res.job is None:
        return Response(status_code=204)
    return {"job": res.job}


def op_probe(c: Central, call: Call) -> Dict[str, Any]:
    return matching.probe(c.db, call.principal, call.body, c.requirements, policy=c.broker_policy)


def op_control(c: Central, call: Call) -> Dict[str, Any]:
    # The running job's short poll for a kill (central/control.py): a read of one row; paced (central/pacing.py).
    return {**control.control(c.db, call.principal, call.job_id, call.query), pacing.FIELD: c.pacer.poll_after()}


def op_control_many(c: Central, call: Call) -> Dict[str, Any]:
    # A pilot's one poll for all of its jobs (central/control.py): a read of their rows; paced (central/pacing.py).
    return {**control.control_many(c.db, call.principal, call.body, call.now), pacing.FIELD: c.pacer.poll_after()}


def op_spy_request(c: Central, call: Call) -> Dict[str, Any]:
    return spy.request(c.db, call.principal, call.job_id, call.body, call.now)


def op_spy_read(c: Central, call: Call) -> Dict[str, Any]:
    return spy.read(c.db, call.principal, call.job_id, int(call.path["request_id"]), call.now)


def op_spy_answer(c: Central, call: Call) -> Dict[str, Any]:
    return spy.answer(c.db, call.principal, call.job_id, int(call.path["request_id"]), call.body, call.now)


def op_heartbeats(c: Central, call: Call) -> Dict[str, Any]:
    res = reports.heartbeats(c.db, call.principal, call.body, call.now)
    c.metrics.heartbeat_requests.inc()
    c.metrics.heartbeats.inc(res.updated)
    return {"commands": res.commands, "rejected": res.rejected, "updated": res.updated}


def op_reports(c: Central, call: Call) -> Dict[str, Any]:
    # A tower's (or an agent's) bulk state and trace reports (central/bulkreports.py).
    out = bulkreports.apply_reports(c.db, call.principal, call.body, call.now,
                                    max_auto_resubmits=c.settings.max_auto_resubmits, node_policy=c.node_policy)
    for body, result in zip(call.body["reports"], out["results"]):
        if result["ok"] and body.get("state") is not None:
            c.metrics.status_reports.labels(state=str(body["state"]).upper()[:16]).inc()
    return out


def op_register_file(c: Central, call: Call) -> Dict[str, Any]:
    return catalogue.register_file(c.db, call.principal, call.body, call.now, c.settings.user_area)


def op_lookup_file(c: Central, call: Call) -> Dict[str, Any]:
    return catalogue.lookup(c.db, call.principal, call.query.get("lfn"))


def op_list_dir(c: Central, call: Call) -> Dict[str, Any]:
    return {"path": call.query.get("path"), "entries": catalogue.list_dir(c.db, call.principal, call.query.get("path"))}


def op_job_files(c: Central, call: Call) -> Dict[str, Any]:
    return catalogue.job_files(c.db, call.principal, call.job_id, call.query)


def op_list_areas(c: Central, call: Call) -> Dict[str, Any]:
    return areas.list_areas(c.db, call.principal, c.settings.user_area, call.query)


def op_grant_area(c: Central, call: Call) -> Dict[str, Any]:
    return areas.grant(c.db, call.principal, call.body, call.now)


def op_revoke_area(c: Central, call: Call) -> Dict[str, Any]:
    return areas.revoke(c.db, call.principal, call.body)


def op_storage(c: Central, call: Call) -> Dict[str, Any]:
    elements = catalogue.storage_elements(c.db)
    return {"elements": elements, "default": catalogue.default_storage_element(elements, c.settings.default_se)}


def op_add_storage(c: Central, call: Call) -> Dict[str, Any]:
    se = catalogue.add_storage_element(c.db, call.principal, call.body)
    c._storage_read = -math.inf
    return se


def op_mint(c: Central, call: Call) -> Dict[str, Any]:
    auth.require_role(call.principal, "admin", action="mint tokens")
    _check_mint_request(call.body)
    token, claims = tokens.mint_request(c.keys, call.body, call.now)
    return {"token": token, "claims": claims.to_dict()}


def _check_mint_request(body: Mapping[str, Any]) -> None:
    """The fields of a mint request, bounded: a subject, site or CE becomes a column (jobs.user, jobs.site...)
    wherever the token is used, so it must fit one."""
    if body.get("role") not in tokens.MINTABLE_ROLES:
        raise bounds.bad_field("role", f"role must be one of {', '.join(tokens.MINTABLE_ROLES)} (job tokens come "
                                       f"from a match), got {body.get('role')!r:.40}")
    bounds.text(body.get("subject"), "subject", bounds.MAX_NAME)
    for k in ("site", "ce"):
        bounds.optional_text(body.get(k), k, bounds.MAX_NAME)
    ttl = body.get("ttl_s")
    if ttl is not None and bounds.number(ttl, "ttl_s", 0, tokens.MAX_TTL_S, what="ttl_s (seconds)") <= 0:
        raise bounds.bad_field("ttl_s", "ttl_s (seconds) must be more than 0")


def op_revoke(c: Central, call: Call) -> Dict[str, Any]:
    auth.require_role(call.principal, "admin", action="revoke tokens")
    token = bounds.text(call.body.get("token"), "token", bounds.MAX_TOKEN, what="field 'token' (the token to revoke)")
    # An expired token needs no revocation, but saying so beats a 401 about the wrong token.
    claims = tokens.decode(c.keys, token, verify_exp=False)
    with c.db.write() as conn:
        fresh = tokens.revoke(conn, claims.jti, claims.expires, f"revoked by {call.principal.describe()}")
    return {"jti": claims.jti, "revoked": True, "already": not fresh}


def op_pilot_token(c: Central, call: Call) -> Dict[str, Any]:
    return pilots.mint_pilot_token(c.keys, call.principal, call.body, call.now)


def op_report_pilots(c: Central, call: Call) -> Dict[str, Any]:
    return pilots.report_pilots(c.db, call.principal, call.body, call.now)


def op_list_nodes(c: Central, call: Call) -> Dict[str, Any]:
    return nodes.list_nodes(c.db, call.principal, call.query, call.now, c.node_policy)


def op_node_event(c: Central, call: Call) -> Dict[str, Any]:
    return nodes.report(c.db, call.principal, call.body, call.now, c.node_policy)


def op_clear_node(c: Central, call: Call) -> Dict[str, Any]:
    return nodes.clear(c.db, call.principal, call.body, call.now)


def op_node_probe(c: Central, call: Call) -> Dict[str, Any]:
    return nodeprobes.post(c.db, call.principal, call.body, call.now)


def op_node_probes(c: Central, call: Call) -> Dict[str, Any]:
    return nodeprobes.history(c.db, call.principal, str(call.path["host"]), call.query)


def op_metrics(c: Central, call: Call) -> Response:
    body, content_type = c.metrics.render(call.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


#: How long others may cache the key set: a verifier that meets an unknown kid fetches it again anyway.
JWKS_MAX_AGE_S = 60


def _jwks_routes(central: Central) -> List[Route]:
    """The public keys, for anyone to verify central's tokens with: the JWK Set, and the OpenID discovery document
    that WLCG token verifiers look for at <iss>/.well-known/openid-configuration. No token needed."""
    cache = {"Cache-Control": f"public, max-age={JWKS_MAX_AGE_S}"}

    async def jwks(request: Request) -> Response:
        try:
            body = await run_in_threadpool(central.keys.jwks)
        except Exception:
            log.exception("GET %s failed", request.url.path)
            return error_response(ApiError(500, "internal", "internal error; the server log has the details"))
        return JsonResponse(body, headers=cache)

    async def discovery(request: Request) -> Response:
        try:
            issuer = await run_in_threadpool(lambda: central.keys.issuer)
        except Exception:
            log.exception("GET %s failed", request.url.path)
            return error_response(ApiError(500, "internal", "internal error; the server log has the details"))
        # An issuer that is central's URL (as the profile wants) names where its keys are; else this server does.
        base = issuer if issuer.startswith(("https://", "http://")) else str(request.base_url)
        return JsonResponse({"issuer": issuer, "jwks_uri": base.rstrip("/") + JWKS_PATH,
                             "scopes_supported": list(scopes.SCOPES),
                             "id_token_signing_alg_values_supported": [keys.ALGORITHM]}, headers=cache)

    return [Route(JWKS_PATH, jwks, methods=["GET"], name="GET jwks"),
            Route("/.well-known/openid-configuration", discovery, methods=["GET"], name="GET openid-configuration")]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith(ui.PREFIX + "/"):
        return ui_web.http_error_page(request, exc.status_code, exc.headers)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    msg = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
    return JsonResponse({"error": {"code": code, "message": msg}}, status_code=exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _internal()


def create_app(central: Central, *, run_sweeper: bool = True, close_on_shutdown: bool = True) -> Starlette:
    """The ASGI app over an open Central. Its lifespan starts the sweeper and, when asked, closes the Central."""
    r = _route
    routes = [
        r(central, "GET", f"{API}/health", op_health, authenticate=False),
        r(central, "GET", f"{API}/whoami", op_whoami),
        r(central, "POST", f"{API}/jobs", op_submit, body=True, status=201),
        r(central, "GET", f"{API}/jobs", op_list),
        r(central, "GET", f"{API}/jobs/summary", op_summary),
        r(central, "GET", f"{API}/jobs/{{job_id:digits}}", op_get),
        r(central, "POST", f"{API}/jobs/{{job_id:digits}}/kill", op_kill, status=202),
        r(central, "POST", f"{API}/jobs/{{job_id:digits}}/resubmit", op_resubmit),
        r(central, "GET", f"{API}/jobs/{{job_id:digits}}/why", op_why),
        r(central, "GET", f"{API}/jobs/{{job_id:digits}}/subjobs", op_masterjob),
        r(central, "GET", f"{API}/jobs/{{job_id:digits}}/trace", op_trace_read),
        r(central, "POST", f"{API}/jobs/{{job_id:digits}}/trace", op_trace_append, body=True),
        r(central, "POST", f"{API}/jobs/{{job_id:digits}}/status", op_status, body=True),
        r(central, "GET", f"{API}/jobs/{{job_id:digits}}/control", op_control),
        r(central, "POST", f"{API}/jobs/{{job_id:digits}}/spy", op_spy_request, body=True, status=202),
        r(central, "GET", f"{API}/jobs/{{job_id:digits}}/spy/{{request_id:digits}}", op_spy_read),
        r(central, "POST", f"{API}/jobs/{{job_id:digits}}/spy/{{request_id:digits}}/answer", op_spy_answer, body=True),
        r(central, "POST", f"{API}/match", op_match, body=True),
        r(central, "POST", f"{API}/queue/probe", op_probe, body=True),
        r(central, "POST", f"{API}/heartbeats", op_heartbeats, body=True),
        r(central, "POST", f"{API}/control", op_control_many, body=True),
        r(central, "POST", f"{API}/catalogue/files", op_register_file, body=True, status=201),
        r(central, "GET", f"{API}/catalogue/files", op_lookup_file),
        r(central, "GET", f"{API}/catalogue/dirs", op_list_dir),
        r(central, "GET", f"{API}/jobs/{{job_id:digits}}/files", op_job_files),
        r(central, "GET", f"{API}/areas", op_list_areas),
        r(central, "POST", f"{API}/areas", op_grant_area, body=True),
        r(central, "POST", f"{API}/areas/revoke", op_revoke_area, body=True),
        r(central, "GET", f"{API}/storage", op_storage),
        r(central, "POST", f"{API}/storage", op_add_storage, body=True),
        r(central, "POST", f"{API}/tokens", op_mint, body=True, status=201),
        r(central, "POST", f"{API}/tokens/revoke", op_revoke, body=True),
        r(central, "POST", f"{API}/ce/tokens", op_pilot_token, body=True, status=201),
        r(central, "POST", f"{API}/ce/pilots", op_report_pilots, body=True),
        r(central, "GET", f"{API}/nodes", op_list_nodes),
        r(central, "POST", f"{API}/nodes/events", op_node_event, body=True),
        r(central, "POST", f"{API}/nodes/clear", op_clear_node, body=True),
        r(central, "POST", f"{API}/nodes/probe", op_node_probe, body=True),
        r(central, "GET", f"{API}/nodes/{{host}}/probes", op_node_probes),
        r(central, "POST", f"{API}/reports", op_reports, body=True),
        r(central, "GET", "/metrics", op_metrics, authenticate=False),
        *_jwks_routes(central),
        *ui.routes(central),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if run_sweeper:
            central.start_sweeper()
        try:
            yield
        finally:
            if close_on_shutdown:
                central.close()
            elif central.sweeper is not None:
                central.sweeper.stop()
                central.sweeper = None

    # Exception: what escapes a route's own handling (it catches its operation's errors) is still logged with its
    # traceback and answered with the generic 500 body.
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _unexpected},
                    lifespan=lifespan, middleware=[Middleware(AccessLog), Middleware(ui_web.SecurityHeaders)])
    app.state.central = central
    return app

