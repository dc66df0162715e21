"""Prometheus metrics on the operator listener, and the request lines of the log.

A homeserver with ``[operator] metrics_listen`` counts requests, federation,
delivery attempts and Privacy Pass tokens; ``GET /metrics`` on that loopback
listener shows them (parsed here with ``prometheus_client.parser``), the
public listener has no such path, and a homeserver without the setting
collects and serves nothing. ``phoenix-ref serve --log-format json`` writes
one JSON object per line, none carrying a client id, a user id or a token.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import warnings
from pathlib import Path

import httpx
import pytest
import trio

from phoenix_ref import logs
from phoenix_ref.cli import generate_config
from phoenix_ref.client.messenger import Messenger
from phoenix_ref.client.session import ClientSession
from phoenix_ref.config import Config, Limits, OperatorSettings
from phoenix_ref.endpoints import ENDPOINTS
from phoenix_ref.errors import ProtocolError, RateLimited
from phoenix_ref.federation.client import client_ssl_context, https_transport
from phoenix_ref.homeserver import Homeserver
from phoenix_ref.http import RequestLog
from phoenix_ref.metrics import OTHER, HomeserverMetrics, Scrape
from phoenix_ref.provision import certificate_names
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment

A, B = "a.example", "b.example"
FAST_RETRIES = Limits(federation_retry_base_s=0.05, federation_retry_max_s=0.2)


# --- helpers -------------------------------------------------------------------------------------

async def scrape(node) -> Scrape:
    async with node.metrics_client() as http:
        resp = await http.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return Scrape(resp.text)


async def eventually(check, timeout: float = 20.0):
    """Poll ``check`` (an async callable returning a truth value) until it holds."""
    with trio.fail_after(timeout):
        while True:
            result = await check()
            if result:
                return result
            await trio.sleep(0.05)


async def users(d, http):
    alice = await Messenger.register(http, A, clock=d.clock)
    bob = await Messenger.register(http, B, clock=d.clock)
    for x, y in ((alice, bob), (bob, alice)):
        x.add_contact(y.card())
        await x.trust_domains(A, B)
    return alice, bob


async def receive_until(condition, *ms, timeout: float = 30):
    with trio.fail_after(timeout):
        while not condition():
            for m in ms:
                await m.receive()
            await trio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- counters through a whole story ---------------------------------------------------------------

async def test_scrape_counts_requests_federation_and_privacy_pass():
    async with Deployment("in_process", ["hs1", "hs2"], metrics=True, limits=FAST_RETRIES) as d, \
            d.client() as http:
        a, b = d["hs1"], d["hs2"]
        alice, bob = await users(d, http)
        gid = await alice.create_group()
        await alice.invite(gid, [bob.user_id])
        await receive_until(lambda: gid in bob.groups, bob)
        await alice.send(gid, b"hello bob")
        await receive_until(lambda: bob.text_bodies(gid) == [b"hello bob"], bob)

        sa, sb = await scrape(a), await scrape(b)
        for s, session in ((sa, alice.session), (sb, bob.session)):
            # each homeserver registered exactly one user of its own
            assert s.value("phoenix_http_requests_total", service="as", endpoint="init_user_registration",
                           status="200") == 1
            assert s.value("phoenix_http_requests_total", service="as", endpoint="finish_user_registration",
                           status="200") == 1
            # the latency histogram saw every request the counter saw
            assert s.value("phoenix_http_request_duration_seconds_count") == s.value("phoenix_http_requests_total")
            # every local token issued was spent at one of the three services or is still in the wallet
            issued = s.value("phoenix_privacy_pass_tokens_issued_total", role="local")
            redeemed = s.value("phoenix_privacy_pass_tokens_redeemed_total", role="local")
            assert issued > 0 and issued == redeemed + session.wallet.count(session.domain)
        # the group lives on a's DS: bob got federated tokens from a's AS and spent some there
        assert sa.value("phoenix_privacy_pass_tokens_issued_total", role="federated") > 0
        assert sa.value("phoenix_privacy_pass_tokens_redeemed_total", service="ds", role="federated") > 0
        assert sa.labels("phoenix_privacy_pass_tokens_redeemed_total", "service") >= {"as", "ds", "qs"}

        # federation a → b: every delivery was accepted, each message in one QS-to-QS request
        # (a lone one as a QsToQsMessage, two that waited together as one QsToQsBatch)
        delivered = sa.value("phoenix_federation_deliveries_total", destination=B)
        assert delivered >= 2          # the welcome and the message
        requests = sum(sa.value("phoenix_federation_requests_total", destination=B, endpoint=e, result="200")
                       for e in ("federated_enqueue", "federated_enqueue_batch"))
        assert sa.value("phoenix_federation_batch_messages_sent_count") == requests
        assert sa.value("phoenix_federation_batch_messages_sent_sum") == delivered
        assert sum(sb.value("phoenix_http_requests_total", service="qs", endpoint=e, status="200")
                   for e in ("federated_enqueue", "federated_enqueue_batch")) == requests
        assert sb.value("phoenix_federation_batch_messages_received_count") == requests
        assert sb.value("phoenix_federation_batch_messages_received_sum") == delivered
        assert sa.value("phoenix_federation_retries_total") == 0
        assert sa.value("phoenix_federation_dead_letters_total") == 0
        assert sa.value("phoenix_federation_queue_depth") == 0   # nothing waiting

        # no label value is an id: only endpoint names, services, statuses and domains
        ids = {str(x) for m in (alice, bob) for x in (m.user_id, m.client_id, m.client_id.client_uuid)}
        values = {v for s in (sa, sb) for sample in s.samples for v in sample.labels.values()}
        assert not [(i, v) for i in ids for v in values if i in v]
        assert {v for s in (sa, sb) for v in s.labels("phoenix_http_requests_total", "endpoint")} <= \
            {ep.name for ep in ENDPOINTS} | {"well_known", OTHER}
        assert sa.labels("phoenix_federation_requests_total", "destination") == {B}

        # b goes down: a's queue for b fills and ages, attempts are retried
        await d.set_down("hs2")
        await alice.send(gid, b"while you were away")

        async def waiting():
            s = await scrape(a)
            return s if s.value("phoenix_federation_queue_depth", destination=B) == 1 else None
        await eventually(waiting)
        d.clock.advance(7_000)
        s = await scrape(a)
        assert s.value("phoenix_federation_queue_oldest_age_seconds", destination=B) == pytest.approx(7.0)

        async def retried():
            s = await scrape(a)
            return s if s.value("phoenix_federation_retries_total", destination=B) >= 2 else None
        s = await eventually(retried)
        failed = {sample.labels["result"] for sample in s.samples
                  if sample.name == "phoenix_federation_requests_total" and sample.labels["destination"] == B
                  and not sample.labels["result"].isdigit()}
        assert failed, "the failed attempts are counted by failure class"

        await d.set_up("hs2")
        await receive_until(lambda: len(bob.text_bodies(gid)) == 2, bob)

        async def drained():
            s = await scrape(a)
            return s if s.value("phoenix_federation_queue_depth") == 0 else None
        s = await eventually(drained)
        assert s.value("phoenix_federation_deliveries_total", destination=B) == delivered + 1


@spec("threat_model/stride/security_requirements/operators.md#homeserver-management", "informative")
async def test_batch_sizes_show_a_backlog_sent_as_one_request_and_a_lone_message_alone():
    """b.example is down while a.example queues 20 messages for it; once it
    is back they travel in one QsToQsBatch (the bound is 100), which both
    histograms show as a request of 20 messages. A message sent while the
    queue is empty goes at once, alone (a request of 1)."""
    from spec_tests.qs_http import message, qs_client, read_all
    async with Deployment("in_process", ["hs1", "hs2"], metrics=True, limits=FAST_RETRIES) as d, \
            d.client() as http:
        a, b = d["hs1"], d["hs2"]
        qs = await qs_client(d, http, B)
        bob = await qs.register(B)
        cfg = await qs.client_queue_config(bob)
        await d.set_down("hs2")
        for i in range(20):
            await a.hs.qs.local_enqueue(message([cfg], b"m%d" % i))
        await eventually(lambda: _true(a.hs.qs.outbound_sender.pending_failures(B) >= 2))
        attempts: list[dict] = []
        a.hs.request_log.listeners.append(lambda e: attempts.append(e) if e["dir"] == "attempt" else None)
        await d.set_up("hs2")
        assert await read_all(qs, bob, 20) == [b"m%d" % i for i in range(20)]
        await eventually(lambda: _true(any(e["outcome"] == "delivered" for e in attempts)))
        # the batch that went through is one attempt record, for its 20 messages
        assert [(e["outcome"], e["messages"]) for e in attempts if e["outcome"] != "retry"] == [("delivered", 20)]
        sb = await scrape(b)
        assert sb.value("phoenix_federation_batch_messages_received_count") == 1
        assert sb.value("phoenix_federation_batch_messages_received_sum") == 20
        assert sb.value("phoenix_federation_batch_messages_received_bucket", le="10.0") == 0
        assert sb.value("phoenix_http_requests_total", service="qs", endpoint="federated_enqueue_batch",
                        status="200") == 1
        sa = await scrape(a)
        assert sa.value("phoenix_federation_requests_total", destination=B, endpoint="federated_enqueue_batch",
                        result="200") == 1
        assert sa.value("phoenix_federation_deliveries_total", destination=B) == 20    # messages, not records
        # the sender observed a request of 20 (the one that went through; those that failed while
        # b was down carried what had queued by then)
        assert sa.value("phoenix_federation_batch_messages_sent_bucket", le="20.0") \
            - sa.value("phoenix_federation_batch_messages_sent_bucket", le="10.0") >= 1

        await eventually(lambda: _true(a.hs.qs.outbound_sender.held() == {}))
        await a.hs.qs.local_enqueue(message([cfg], b"alone"))
        assert await read_all(qs, bob, 1) == [b"alone"]
        sb = await scrape(b)
        assert sb.value("phoenix_federation_batch_messages_received_count") == 2
        assert sb.value("phoenix_federation_batch_messages_received_bucket", le="1.0") == 1
        assert sb.value("phoenix_http_requests_total", service="qs", endpoint="federated_enqueue",
                        status="200") == 1


async def _true(value: bool) -> bool:
    return value


async def test_429_given_and_received_are_counted():
    async with Deployment("in_process", ["hs1", "hs2"], metrics=True, limits=FAST_RETRIES) as d, \
            d.client() as http:
        a, b = d["hs1"], d["hs2"]
        alice, bob = await users(d, http)
        gid = await alice.create_group()
        core = b.hs.qs.core
        real = core.federated_enqueue
        refusals = []

        def refuse_once(*args, **kw):      # b's QS is over its rate limit once
            if not refusals:
                refusals.append(1)
                raise RateLimited("slow down", retry_after=0)
            return real(*args, **kw)
        core.federated_enqueue = refuse_once
        await alice.invite(gid, [bob.user_id])
        await receive_until(lambda: gid in bob.groups, bob)

        sa, sb = await scrape(a), await scrape(b)
        assert refusals == [1]
        assert sb.value("phoenix_rate_limit_given_total", service="qs", endpoint="federated_enqueue") == 1
        assert sb.value("phoenix_http_requests_total", service="qs", endpoint="federated_enqueue", status="429") == 1
        assert sa.value("phoenix_rate_limit_received_total", destination=B) == 1
        assert sa.value("phoenix_federation_requests_total", destination=B, endpoint="federated_enqueue",
                        result="429") == 1
        assert sa.value("phoenix_federation_retries_total", destination=B) == 1


async def test_token_allowance_429_is_counted_at_the_as():
    async with Deployment("in_process", ["hs1"], metrics=True, limits=Limits(token_allowance=12)) as d, \
            d.client() as http:
        session = await ClientSession.register(http, A, clock=d.clock, connection_packages=0)
        with pytest.raises(ProtocolError) as refused:
            for _ in range(5):
                await session.fetch_tokens(n=5)
        assert refused.value.status == 429
        s = await scrape(d["hs1"])
        assert s.value("phoenix_rate_limit_given_total", service="as", endpoint="request_tokens") == 1
        assert s.value("phoenix_http_requests_total", service="as", endpoint="request_tokens", status="429") == 1
        assert s.value("phoenix_privacy_pass_tokens_issued_total", role="local") == session.wallet.count(A) == 10


# --- the listener -------------------------------------------------------------------------------

@spec("threat_model/stride/security_requirements/operators.md#homeserver-management", "MUST")
async def test_operator_listener_serves_metrics_and_the_public_one_does_not():
    """Only the operator reaches the metrics: a loopback listener of its own,
    no /metrics on any public host."""
    async with Deployment("sockets", ["hs1"], metrics=True) as d, d.client() as http:
        node = d["hs1"]
        assert (await http.get(node.url("as", "/phoenix/v1/as_credentials"))).status_code == 200
        for service in ("as", "ds", "qs", ""):            # the public listener: no /metrics anywhere
            resp = await http.get(node.url(service, "/metrics"))
            assert resp.status_code == 404 and b"phoenix_http_requests_total" not in resp.content
        listen = node.config.operator.metrics_listen
        assert listen.startswith("127.0.0.1:") and not listen.endswith(f":{node.port}")
        async with httpx.AsyncClient(base_url=f"http://{listen}", trust_env=False) as op:
            resp = await op.get("/metrics")
            assert resp.status_code == 200
            s = Scrape(resp.text)
            assert s.value("phoenix_http_requests_total", service="as", endpoint="as_credentials", status="200") == 1
            # the public 404s count, under no path of their own
            assert s.value("phoenix_http_requests_total", endpoint=OTHER, status="404") == 4
            assert (await op.get("/")).status_code == 404
            assert (await op.get("/metrics/x")).status_code == 404
            assert (await op.post("/metrics")).status_code == 405
            om = await op.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
            assert om.headers["content-type"].startswith("application/openmetrics-text")
        # the operator's scrapes are not requests of the homeserver
        async with httpx.AsyncClient(base_url=f"http://{listen}", trust_env=False) as op:
            again = Scrape((await op.get("/metrics")).text)
        assert again.value("phoenix_http_requests_total") == s.value("phoenix_http_requests_total")


async def test_metrics_are_off_by_default(tmp_path):
    cfg = generate_config(tmp_path / "hs", A, test_ca=True)
    text = (tmp_path / "hs" / "config.toml").read_text()
    assert cfg.operator.metrics_listen is None
    assert '# metrics_listen = "127.0.0.1:9464"' in text        # documented, commented out
    assert not any(line.startswith("metrics_listen") for line in text.splitlines())
    assert Config.load(tmp_path / "hs" / "config.toml").operator == OperatorSettings()
    hs = Homeserver(cfg)
    assert hs.metrics is None and hs.request_log is None
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hs.metrics_asgi), base_url="http://x") as op:
        assert (await op.get("/metrics")).status_code == 404
    async with Deployment("in_process", ["hs1"]) as d, d.client() as http:
        assert d["hs1"].hs.metrics is None
        assert (await http.get(d["hs1"].url("qs", "/metrics"))).status_code == 404


def test_one_attempt_record_per_kind_of_answer():
    from phoenix_ref.federation.outbound import Delivered, Rejected, RetryLater
    from phoenix_ref.metrics import attempt_kinds
    assert attempt_kinds([Delivered()] * 7) == [("delivered", 7, {})]
    mixed = [Delivered(), Rejected(403, "no", "not_group_owner"), Delivered(), Rejected(404, "gone", "unknown"),
             Rejected(403, "no", "not_group_owner"), RetryLater("429", 3), RetryLater("429", 3)]
    assert attempt_kinds(mixed) == [("delivered", 2, {}),
                                    ("dead_letter", 2, {"code": "not_group_owner", "status": 403}),
                                    ("dead_letter", 1, {"code": "unknown", "status": 404}),
                                    ("retry", 2, {})]


def test_domain_labels_are_bounded():
    m = HomeserverMetrics({"as.a.example": "as"}, max_domains=2)
    for i in range(5):
        m.record({"dir": "out", "to": f"d{i}.example", "path": "/phoenix/v1/federated_enqueue", "status": 200})
        m.record({"dir": "attempt", "to": f"d{i}.example", "outcome": "delivered"})
    m.record({"dir": "in", "host": "as.a.example", "path": "/phoenix/v1/not-an-endpoint/alice", "status": 404,
              "ms": 1.0})
    s = Scrape(m.exposition()[0].decode())
    assert s.labels("phoenix_federation_requests_total", "destination") == {"d0.example", "d1.example", OTHER}
    assert s.value("phoenix_federation_deliveries_total", destination=OTHER) == 3
    assert s.labels("phoenix_http_requests_total", "endpoint") == {OTHER}


def test_outbound_gauges_beyond_the_label_limit_add_up_under_other():
    class Store:
        def queue_summary(self):
            return {"a.example": (5, 1000), "b.example": (3, 500), "c.example": (1, 0)}

        def dead_letter_counts(self):
            return {"c.example": 2}

        def parked(self):
            return {"b.example": object()}
    m = HomeserverMetrics({}, outbound_store=Store, now_ms=lambda: 10_000, max_domains=1)
    s = Scrape(m.exposition()[0].decode())
    assert s.value("phoenix_federation_queue_depth", destination="a.example") == 5
    assert s.value("phoenix_federation_queue_depth", destination=OTHER) == 4
    assert s.value("phoenix_federation_queue_oldest_age_seconds", destination=OTHER) == 10.0
    assert s.value("phoenix_federation_queue_oldest_age_seconds", destination="a.example") == 9.0
    assert s.value("phoenix_federation_dead_letters_stored", destination="c.example") == 2
    assert s.value("phoenix_federation_destination_parked", destination="b.example") == 1


# --- logs --------------------------------------------------------------------------------------

def test_text_and_json_request_lines():
    for fmt in ("text", "json"):
        out = io.StringIO()
        handler = logs.configure(fmt, domain=A, stream=out)
        try:
            log = RequestLog(None, A, logger=logging.getLogger(logs.REQUEST_LOGGER))
            log.served(host="qs.a.example", method="POST", path="/phoenix/v1/dequeue_messages", status=200,
                       ms=1.25, agent="tester 1.0")
            log.attempt(destination=B, outcome="retry", attempt=2, ms=3.0, retry_in=0.5)
            try:
                raise ValueError("boom")
            except ValueError:
                logging.getLogger("phoenix_ref.x").exception("it failed")
        finally:
            logging.getLogger().removeHandler(handler)
        lines = out.getvalue().splitlines()
        if fmt == "json":
            served, attempt, failed = (json.loads(line) for line in lines)
            assert served["dir"] == "in" and served["status"] == 200 and served["ms"] == 1.2 and served["hs"] == A
            assert attempt == {"t": attempt["t"], "hs": A, "dir": "attempt", "to": B, "outcome": "retry",
                               "messages": 1, "attempt": 2, "ms": 3.0, "retry_in": 0.5}
            assert failed["level"] == "ERROR" and failed["msg"] == "it failed" and "ValueError: boom" in failed["exc"]
        else:
            assert "phoenix_ref.requests INFO hs=a.example dir=in method=POST host=qs.a.example" in lines[0]
            assert 'agent="tester 1.0"' in lines[0]
            assert "dir=attempt to=b.example outcome=retry messages=1 attempt=2" in lines[1]


def test_httpx_request_lines_are_not_logged_twice():
    """The request log's ``out`` record is the one line per federation
    request; httpx's own INFO line for it is not written, its warnings are."""
    out = io.StringIO()
    handler = logs.configure("text", domain=A, stream=out)
    try:
        logging.getLogger("httpx").info('HTTP Request: POST https://qs.b.example/ "HTTP/2 200 OK"')
        logging.getLogger("httpx").warning("something to see")
        logging.getLogger("phoenix_ref.x").info("ours")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "something to see" in lines[0] and "ours" in lines[1]


def test_what_python_prints_by_itself_is_a_log_line_too():
    """With ``--log-format json`` every stderr line is JSON: a warning, an
    exception raised where no one can catch it and one that ends a thread
    go through the log (a stray line broke a reader of the serve log)."""
    out = io.StringIO()
    hooks = sys.unraisablehook, threading.excepthook
    # an earlier test's configure left logging's capture marked as on, while
    # pytest's per-test warning recorder replaced it: start from off
    logging.captureWarnings(False)
    handler = logs.configure("json", domain=A, stream=out)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("an old call", DeprecationWarning)
        try:
            raise ValueError("in a __del__")
        except ValueError as e:
            sys.unraisablehook(types.SimpleNamespace(exc_type=ValueError, exc_value=e, exc_traceback=e.__traceback__,
                                                     err_msg="Exception ignored in", object="a finaliser"))
        worker = threading.Thread(target=lambda: 1 / 0, name="worker-1")
        worker.start()
        worker.join()
    finally:
        logging.captureWarnings(False)
        sys.unraisablehook, threading.excepthook = hooks
        logging.getLogger().removeHandler(handler)
    warning, unraisable, thread = (json.loads(line) for line in out.getvalue().splitlines())
    assert warning["logger"] == "py.warnings" and "DeprecationWarning: an old call" in warning["msg"]
    assert unraisable["logger"] == "phoenix_ref.unraisable" and "ValueError: in a __del__" in unraisable["exc"]
    assert "a finaliser" in unraisable["msg"]
    assert thread["logger"] == "phoenix_ref.thread" and "worker-1" in thread["msg"]
    assert "ZeroDivisionError" in thread["exc"]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Wait until the operator listener (plain HTTP) of ``proc`` accepts connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "phoenix-ref serve exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


async def _until_served(http: httpx.AsyncClient, url: str, timeout: float = 30.0) -> None:
    """Wait until the public listener answers ``url`` (it starts after the operator's)."""
    with trio.fail_after(timeout):
        while True:
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await trio.sleep(0.1)


async def test_serve_log_format_json_and_metrics_listener(tmp_path):
    port, metrics_port = free_port(), free_port()
    cfg = generate_config(tmp_path / "hs", A, port=port, test_ca=True,
                          operator=OperatorSettings(metrics_listen=f"127.0.0.1:{metrics_port}"))
    request_file = tmp_path / "requests.jsonl"
    err = open(tmp_path / "stderr", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "phoenix_ref.cli", "serve", "--config", str(tmp_path / "hs" / "config.toml"),
                             "--log-format", "json", "--request-log", str(request_file)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    secrets: list[str] = []
    try:
        await trio.to_thread.run_sync(_wait_listening, metrics_port, proc)

        async def note_authorization(request: httpx.Request) -> None:
            if "authorization" in request.headers:
                secrets.append(request.headers["authorization"].partition("token=")[2])

        transport = https_transport(client_ssl_context(cfg.ca_bundle),
                                    {h: f"127.0.0.1:{port}" for h in certificate_names(A)})
        async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=10.0,
                                     base_url=f"https://as.{A}:{port}",
                                     event_hooks={"request": [note_authorization]}) as http:
            await _until_served(http, f"https://as.{A}:{port}/phoenix/v1/as_credentials")
            session = await ClientSession.register(http, A, base_url=lambda d: f"https://as.{d}:{port}",
                                                   connection_packages=0)
            await session.fetch_tokens(n=3)
            await session.upload_connection_packages(1)       # a request with a token
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}", trust_env=False) as op:
            s = Scrape((await op.get("/metrics")).text)
        async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=10.0) as http:
            assert (await http.get(f"https://qs.{A}:{port}/metrics")).status_code == 404
    finally:
        proc.send_signal(signal.SIGINT)
        await trio.to_thread.run_sync(lambda: proc.wait(timeout=20))
        err.close()
    assert proc.returncode == 0, (tmp_path / "stderr").read_text()[-2000:]

    assert s.value("phoenix_http_requests_total", service="as", endpoint="request_tokens", status="200") == 1
    assert s.value("phoenix_http_requests_total", service="as", endpoint="init_user_registration", status="200") == 1
    assert s.value("phoenix_privacy_pass_tokens_issued_total", role="local") == 3
    assert s.value("phoenix_privacy_pass_tokens_redeemed_total", service="as", role="local") == 1
    assert secrets and all(len(t) > 40 for t in secrets)

    stderr = (tmp_path / "stderr").read_text()
    not_json = [line for line in stderr.splitlines() if not _is_json(line)]
    assert not not_json, f"lines of the serve log that are not JSON:\n{stderr[-3000:]}"   # every line is one JSON object
    records = [json.loads(line) for line in stderr.splitlines()]
    served = [r for r in records if r.get("dir") == "in"]
    paths = [r["path"] for r in served]
    for name in ("as_credentials", "init_user_registration", "finish_user_registration", "request_tokens",
                 "upload_connection_packages"):
        assert f"/phoenix/v1/{name}" in paths
    assert all(set(r) == {"t", "hs", "dir", "method", "host", "path", "status", "ms", "agent"} for r in served)
    assert [json.loads(line) for line in request_file.read_text().splitlines()] == \
        [r for r in records if "dir" in r]                            # the file has the same lines
    assert all(r["hs"] == A for r in records)
    # no client or user id, no token, no password anywhere in the log
    forbidden = [str(session.user_id), str(session.client_id), str(session.client_id.client_uuid),
                 "correct horse", *secrets, *(t[:20] for t in secrets)]
    for text in forbidden:
        assert text not in stderr, text


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True
