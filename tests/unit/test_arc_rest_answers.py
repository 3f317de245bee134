"""gridpilot.arc.rest.ArcRest on answers recorded from a real A-REX 6.17 (tests/fixtures/arc/, kept current by
tests/integration/test_arc_rest_recorded.py), replayed in place of the connection pool: what each method makes of
them, what it sends, and that every answer not as REST 1.0 says is refused naming the field. Also the checks made
before anything is sent (key mode, missing files, job ids, session paths) and the retry rules."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import pytest
import urllib3
from urllib3.exceptions import NewConnectionError, ProtocolError, SSLError

from gridpilot.arc import ArcAnswerError, ArcError, ArcJobGone, ArcRest, Submitted
from gridpilot.arc import rest

from support.arcrecord import UNKNOWN_ID, load

URL = "https://ce.example.org:443/arex/rest/1.0"
IDS = [f"recordedJob{i}abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG" for i in range(3)]


def _fill(text: str) -> str:
    for i, job_id in enumerate(IDS):
        text = text.replace("{JOB%d}" % i, job_id)
    return text


class Answer:
    """One answer the replay gives: a recording by name, or made up (status, content type, body)."""

    def __init__(self, status: int, content_type: str = "", body: Union[str, bytes] = b"",
                 headers: Optional[Dict[str, str]] = None) -> None:
        self.status = status
        self.headers = {"Content-Type": content_type} if content_type else {}
        self.headers.update(headers or {})
        self.body = body.encode() if isinstance(body, str) else body

    @classmethod
    def recorded(cls, name: str, body: Optional[str] = None) -> Answer:
        r = load(name)
        return cls(r["status"], r["content_type"], _fill(r["body"]) if body is None else body)


class Replay:
    """Stands where ArcRest's urllib3 pool is: answers each request with the next of `answers` (an exception is
    raised instead), and keeps what was asked."""

    def __init__(self, *answers: Union[Answer, Exception]) -> None:
        self.answers = list(answers)
        self.asked: List[Dict[str, Any]] = []

    def urlopen(self, method: str, url: str, body: Any = None, headers: Optional[Dict[str, str]] = None,
                preload_content: bool = True, **_: Any) -> urllib3.HTTPResponse:
        data = body.read() if hasattr(body, "read") else body
        self.asked.append({"method": method, "url": url, "body": data, "headers": dict(headers or {})})
        assert self.answers, f"no answer left for {method} {url}"
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return urllib3.HTTPResponse(body=io.BytesIO(a.body), headers=a.headers, status=a.status,
                                    preload_content=preload_content)

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    monkeypatch.setattr(rest, "_BACKOFF_S", (0.0, 0.0))


def client(*answers: Union[Answer, Exception], **kw: Any) -> ArcRest:
    c = ArcRest(URL, token=kw.pop("token", "a-token"), **kw)
    c._pool = Replay(*answers)  # type: ignore[assignment]
    return c


def asked(c: ArcRest) -> List[Dict[str, Any]]:
    return c._pool.asked  # type: ignore[attr-defined,no-any-return]


# -- submit ---------------------------------------------------------------------------------------------------------
def test_one_description_is_posted_as_it_is_and_its_id_returned():
    c = client(Answer.recorded("new_one"))
    xrsl = load("new_one")["request_body"]
    assert c.submit([xrsl]) == [Submitted(id=IDS[0], code=201, reason="Created")]
    (req,) = asked(c)
    assert (req["method"], req["url"]) == ("POST", "/arex/rest/1.0/jobs?action=new")
    assert req["body"] == xrsl.encode()
    assert req["headers"]["Content-Type"] == "application/rsl"
    assert req["headers"]["Authorization"] == "Bearer a-token"


def test_several_descriptions_go_in_one_post_and_come_back_in_order():
    recorded = load("new_bulk")
    c = client(Answer.recorded("new_bulk"))
    got = c.submit([" &(executable=\"/bin/sh\")(arguments=\"-c\" \"exit 3\")(jobname=\"gp-record-fails\")\n",
                    '&(executable="/bin/sh")(arguments="-c" "sleep 600")(jobname="gp-record-sleeps")'])
    assert [s.id for s in got] == [IDS[1], IDS[2]] and {s.code for s in got} == {201}
    (req,) = asked(c)
    assert req["body"] == recorded["request_body"].encode()  # what A-REX took: +(&...)(&...)


def test_a_description_refused_alone_has_no_id_and_the_reason():
    (got,) = client(Answer.recorded("new_one_refused")).submit(['&(executable="/bin/sh")(arguments="-c" "true"'])
    assert got.id is None and got.code == 500 and "xrsl parsing error" in got.reason


@pytest.mark.parametrize("answer", [Answer.recorded("new_bulk_one_broken"), Answer(503),
                                    NewConnectionError(None, "refused")])  # type: ignore[arg-type]
def test_a_failed_bulk_post_is_an_ArcError_and_never_sent_twice(answer):
    c = client(answer, Answer.recorded("new_bulk"))
    with pytest.raises(ArcError) as e:
        c.submit(["&(executable=\"/bin/true\")", "&(executable=\"/bin/true\")"])
    assert len(asked(c)) == 1
    assert e.value.url == URL + "/jobs?action=new"
    if isinstance(answer, Answer):
        assert e.value.status == answer.status


@pytest.mark.parametrize("descriptions, dialect", [([], "xrsl"), ("&(executable=x)", "xrsl"),
                                                   (["(executable=x)"], "xrsl"), (["+(&(a=b))(&(c=d))"], "xrsl"),
                                                   (["&(a=b)"], "adl"), (["&(a=b)"] * (rest.MAX_BULK + 1), "xrsl")])
def test_descriptions_that_are_not_single_xrsl_jobs_are_refused_before_sending(descriptions, dialect):
    c = client()
    with pytest.raises(ValueError):
        c.submit(descriptions, dialect=dialect)
    assert asked(c) == []


# -- answers not as REST 1.0 says -----------------------------------------------------------------------------------
_BULK = json.loads(_fill(load("new_bulk")["body"]))


def _mutated(change) -> str:
    body = json.loads(json.dumps(_BULK))
    change(body)
    return json.dumps(body)


@pytest.mark.parametrize("body, field", [
    ('{"jobs": []}', "job: missing"),
    ('[]', "job: missing"),
    ('{"job": "x"}', "job: neither"),
    ('{"job": [1, 2]}', "job[0]: not an object"),
    (_mutated(lambda b: b["job"].pop()), "job: 1 entries for 2"),
    (_mutated(lambda b: b["job"][1].pop("status-code")), "job[1].status-code"),
    (_mutated(lambda b: b["job"][1].update({"status-code": "OK"})), "job[1].status-code"),
    (_mutated(lambda b: b["job"][1].update({"status-code": True})), "job[1].status-code"),
    (_mutated(lambda b: b["job"][0].update({"status-code": "999"})), "job[0].status-code"),
    (_mutated(lambda b: b["job"][1].pop("id")), "job[1].id: missing"),
    (_mutated(lambda b: b["job"][0].update({"id": "../../etc"})), "job[0].id"),
    (_mutated(lambda b: b["job"][0].update({"id": 7})), "job[0].id"),
    (_mutated(lambda b: b["job"][0].update({"reason": ["x"]})), "job[0].reason"),
    (_mutated(lambda b: b["job"][1].update({"id": b["job"][0]["id"]})), "job[1].id: .* given twice"),
    ("{not json", "not JSON"),
])
def test_a_bulk_answer_not_as_rest_says_names_the_field(body, field):
    with pytest.raises(ArcAnswerError, match=field.replace("[", r"\[").replace("]", r"\]")) as e:
        client(Answer(201, "application/json", body)).submit(["&(a=b)", "&(c=d)"])
    assert e.value.url == URL + "/jobs?action=new" and e.value.status in (None, 201)


def test_an_answer_of_another_content_type_is_refused():
    with pytest.raises(ArcAnswerError, match="Content-Type 'text/html'"):
        client(Answer(201, "text/html", load("new_one")["body"])).submit(["&(a=b)"])


@pytest.mark.parametrize("change, field", [
    (lambda b: b["job"][0].update({"id": "someoneElsesJob"}), "job[0].id: 'someoneElsesJob' was not asked about"),
    (lambda b: b["job"][1].pop("state"), "job[1].state: missing"),
    (lambda b: b["job"][1].update({"state": ""}), "job[1].state"),
])
def test_a_status_answer_not_as_rest_says_names_the_field(change, field):
    body = json.loads(_fill(load("status_mixed")["body"]))
    change(body)
    c = client(Answer(201, "application/json", json.dumps(body)))
    with pytest.raises(ArcAnswerError, match=field.replace("[", r"\[").replace("]", r"\]")):
        c.states([IDS[0], IDS[2], UNKNOWN_ID])


# -- states, kill, clean --------------------------------------------------------------------------------------------
def test_states_has_the_known_jobs_and_leaves_out_the_unknown():
    c = client(Answer.recorded("status_mixed"))
    assert c.states([IDS[0], IDS[2], UNKNOWN_ID]) == {IDS[0]: "ACCEPTED", IDS[2]: "ACCEPTED"}
    (req,) = asked(c)
    assert req["url"] == "/arex/rest/1.0/jobs?action=status"
    assert json.loads(req["body"]) == {"job": [{"id": IDS[0]}, {"id": IDS[2]}, {"id": UNKNOWN_ID}]}
    assert client(Answer.recorded("status_one")).states([IDS[0]]) == {IDS[0]: "ACCEPTED"}
    c = client()
    assert c.states([]) == {} and asked(c) == []


def test_long_lists_go_in_several_requests(monkeypatch):
    monkeypatch.setattr(rest, "MAX_BULK", 2)
    entries = json.loads(_fill(load("status_mixed")["body"]))["job"]
    c = client(Answer(201, "application/json", json.dumps({"job": entries[:2]})),
               Answer(201, "application/json", json.dumps({"job": entries[2]})))
    assert c.states([IDS[0], IDS[2], UNKNOWN_ID]) == {IDS[0]: "ACCEPTED", IDS[2]: "ACCEPTED"}
    assert [len(json.loads(r["body"])["job"]) for r in asked(c)] == [2, 1]


def test_kill_and_clean_give_each_jobs_status_code():
    assert client(Answer.recorded("kill_mixed")).kill([IDS[2], UNKNOWN_ID]) == {IDS[2]: 202, UNKNOWN_ID: 404}
    assert client(Answer.recorded("clean_mixed")).clean([IDS[0], IDS[1], UNKNOWN_ID]) == {
        IDS[0]: 202, IDS[1]: 202, UNKNOWN_ID: 404}
    assert client(Answer.recorded("clean_one")).clean([IDS[2]]) == {IDS[2]: 202}


def test_kill_is_not_retried_on_a_5xx():
    c = client(Answer(503), Answer.recorded("kill_mixed"))
    with pytest.raises(ArcError) as e:
        c.kill([IDS[2], UNKNOWN_ID])
    assert e.value.status == 503 and len(asked(c)) == 1


# -- diagnose -------------------------------------------------------------------------------------------------------
def test_the_live_state_word():
    c = client(Answer.recorded("diagnose_status_inlrms"))
    assert c.diagnose_state(IDS[2]) == "INLRMS"
    assert asked(c)[0]["url"] == f"/arex/rest/1.0/jobs/{IDS[2]}/diagnose/status"


def test_finished_failed_and_killed_are_told_apart_by_diagnose_failed():
    finished = Answer.recorded("diagnose_status_finished")
    assert client(finished, Answer.recorded("diagnose_failed_none"),
                  Answer.recorded("diagnose_status_finished")).diagnose_state(IDS[0]) == "FINISHED"
    assert client(finished, Answer.recorded("diagnose_failed_exit"),
                  Answer.recorded("diagnose_errors_exit")).diagnose_state(IDS[1]) == "FAILED"
    assert client(finished, Answer.recorded("diagnose_failed_killed")).diagnose_state(IDS[2]) == "KILLED"
    # A-REX 6.17 sometimes leaves a killed job's reason empty: its history still went through CANCELING.
    assert client(finished, Answer(200, "text/plain", ""),
                  Answer.recorded("diagnose_errors_killed")).diagnose_state(IDS[2]) == "KILLED"
    assert client(finished, Answer(200, "text/plain", ""),
                  Answer.recorded("diagnose_errors_exit")).diagnose_state(IDS[1]) == "FAILED"


def test_failure_reason():
    assert client(Answer.recorded("diagnose_failed_exit")).failure_reason(IDS[1]) == \
        "LRMS error: (3) Job finished with wrong exit code - 3 != 0"
    assert client(Answer.recorded("diagnose_failed_none"),
                  Answer.recorded("diagnose_status_finished")).failure_reason(IDS[0]) is None
    with pytest.raises(ArcJobGone):
        client(Answer.recorded("diagnose_failed_none"), Answer.recorded("diagnose_status_gone")).failure_reason(
            UNKNOWN_ID)


def test_a_job_unknown_to_arex_is_ArcJobGone():
    with pytest.raises(ArcJobGone) as e:
        client(Answer.recorded("diagnose_status_gone")).diagnose_state(UNKNOWN_ID)
    assert e.value.status == 404 and UNKNOWN_ID in str(e.value)


@pytest.mark.parametrize("body", ["", "finished", "<html>oops</html>", "INLRMS" * 1000])
def test_a_state_that_is_no_state_word_is_refused(body):
    with pytest.raises(ArcAnswerError, match="diagnose/status"):
        client(Answer(200, "text/plain", body)).diagnose_state(IDS[0])


# -- session directory ----------------------------------------------------------------------------------------------
def test_session_listings():
    assert client(Answer.recorded("session_list_empty")).list_session(IDS[2]) == []
    assert client(Answer.recorded("session_list_file_and_dir")).list_session(IDS[2]) == ["in/", "top.txt"]
    c = client(Answer.recorded("session_list_two_files"))
    assert c.list_session(IDS[2], "in") == ["data.txt", "more.txt"]
    assert asked(c)[0]["url"] == f"/arex/rest/1.0/jobs/{IDS[2]}/session/in"


@pytest.mark.parametrize("body", ['{"file": 3}', '{"file": ["a", "../b"]}', '{"dir": [""]}', '["a"]'])
def test_a_listing_not_as_rest_says_is_refused(body):
    with pytest.raises(ArcAnswerError, match="session listing"):
        client(Answer(200, "application/json", body)).list_session(IDS[2])


def test_put_sends_the_bytes_or_streams_the_file(tmp_path):
    c = client(Answer.recorded("session_put"))
    c.put_file(IDS[2], "in/data.txt", b"recorded input\n")
    (req,) = asked(c)
    assert (req["method"], req["url"], req["body"]) == ("PUT", f"/arex/rest/1.0/jobs/{IDS[2]}/session/in/data.txt",
                                                        b"recorded input\n")
    assert req["headers"]["Content-Length"] == "15"
    src = tmp_path / "token"
    src.write_bytes(b"\x00secret\xff" * 1000)
    c = client(Answer(503), Answer.recorded("session_put"))
    c.put_file(IDS[2], "token file", src)
    assert [r["body"] for r in asked(c)] == [src.read_bytes()] * 2  # retried after the 503, from the start
    assert asked(c)[1]["url"].endswith("/session/token%20file")


def test_get_a_file_and_tell_a_missing_file_from_a_gone_job():
    assert client(Answer.recorded("session_get")).get_file(IDS[2], "in/data.txt") == b"recorded input\n"
    with pytest.raises(ArcError) as e:
        client(Answer.recorded("session_get_missing"), Answer.recorded("diagnose_status_inlrms")).get_file(
            IDS[2], "never.txt")
    assert e.value.status == 404 and not isinstance(e.value, ArcJobGone)
    with pytest.raises(ArcJobGone):
        client(Answer.recorded("session_get_gone"), Answer.recorded("diagnose_status_gone")).get_file(
            UNKNOWN_ID, "out.txt")
    with pytest.raises(ArcAnswerError, match="more than 4 bytes"):
        client(Answer.recorded("session_get")).get_file(IDS[2], "in/data.txt", max_bytes=4)


def test_download_is_atomic(tmp_path):
    dest = tmp_path / "out.txt"
    assert client(Answer.recorded("session_get_output")).download(IDS[0], "out.txt", dest) == 9
    assert dest.read_bytes() == b"recorded\n"
    # An answer shorter than its Content-Length leaves the old file as it was and no temporary file beside it.
    short = Answer(200, "application/octet-stream", b"trunc", headers={"Content-Length": "100"})
    with pytest.raises((ArcAnswerError, ArcError)):
        client(short, short, short).download(IDS[0], "out.txt", dest)
    assert dest.read_bytes() == b"recorded\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


@pytest.mark.parametrize("name", ["", "/etc/passwd", "../x", "a/../../b", "a//b", "./a", "a\nb", "a/"])
def test_session_paths_that_leave_the_session_are_refused_before_sending(name):
    c = client()
    for call in (lambda: c.get_file(IDS[0], name), lambda: c.put_file(IDS[0], name, b"x")):
        with pytest.raises(ValueError, match="session path"):
            call()
    assert asked(c) == []


@pytest.mark.parametrize("job_id", ["", "a/b", "..", "a b", "x" * 257, "id?action=clean"])
def test_job_ids_that_are_no_arex_ids_are_refused_before_sending(job_id):
    c = client()
    for call in (lambda: c.diagnose_state(job_id), lambda: c.kill([job_id]), lambda: c.list_session(job_id)):
        with pytest.raises(ValueError, match="ARC job id"):
            call()
    assert asked(c) == []


# -- retries --------------------------------------------------------------------------------------------------------
def test_idempotent_reads_are_retried_a_bounded_number_of_times():
    c = client(Answer(503), ProtocolError("connection reset"), Answer.recorded("diagnose_status_inlrms"))
    assert c.diagnose_state(IDS[2]) == "INLRMS" and len(asked(c)) == 3
    c = client(Answer(502), Answer(503), Answer(500), Answer.recorded("diagnose_status_inlrms"))
    with pytest.raises(ArcError) as e:
        c.diagnose_state(IDS[2])
    assert e.value.status == 500 and len(asked(c)) == 3
    c = client(*[NewConnectionError(None, "refused")] * 3)  # type: ignore[arg-type]
    with pytest.raises(ArcError, match="refused") as e:
        c.diagnose_state(IDS[2])
    assert e.value.status is None


def test_a_tls_failure_is_not_retried():
    c = client(SSLError("certificate verify failed"), Answer.recorded("diagnose_status_inlrms"))
    with pytest.raises(ArcError, match="TLS failed"):
        c.diagnose_state(IDS[2])
    assert len(asked(c)) == 1


# -- construction ---------------------------------------------------------------------------------------------------
def _pem_pair(tmp_path: Path) -> "tuple[Path, Path]":
    """Any certificate and key PEM files: construction checks their presence and mode before loading them."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not loaded\n")
    key.write_text("not loaded\n")
    os.chmod(key, 0o600)
    return cert, key


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_key_others_can_read_is_refused_naming_it(tmp_path, mode):
    cert, key = _pem_pair(tmp_path)
    os.chmod(key, mode)
    with pytest.raises(ArcError, match=f"key {key} is readable by others"):
        ArcRest(URL, cert=cert, key=key)


def test_missing_files_and_incomplete_settings_are_refused_naming_them(tmp_path):
    cert, key = _pem_pair(tmp_path)
    missing = tmp_path / "missing.pem"
    for kw, words in ((dict(cert=missing, key=key), str(missing)), (dict(cert=cert, key=missing), str(missing)),
                      (dict(token="t", ca_file=missing), str(missing)), (dict(token="t", ca_dir=missing),
                                                                         str(missing)),
                      (dict(cert=cert), "go together"), (dict(), "neither a client certificate nor a token"),
                      (dict(token="a\nb"), "line break"), (dict(cert=cert, key=key), "TLS set-up")):
        with pytest.raises(ArcError, match=words.replace("[", r"\[")):
            ArcRest(URL, **kw)  # type: ignore[arg-type]
    for url in ("http://ce.example.org/arex/rest/1.0", "ce.example.org", "https:///x", URL + "?a=b"):
        with pytest.raises(ArcError, match="ARC CE URL"):
            ArcRest(url, token="t")
