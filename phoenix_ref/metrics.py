"""Prometheus metrics of one homeserver, for its operator (``prometheus_client``).

Off unless the config sets ``[operator] metrics_listen``
(:class:`~phoenix_ref.config.OperatorSettings`). Then the homeserver keeps a
:class:`HomeserverMetrics` — its own ``CollectorRegistry``, so that several
homeservers in one process (the test harness) count apart — and
``phoenix-ref serve`` answers ``GET /metrics`` on that loopback address with
:func:`metrics_app`, plain HTTP, beside the public TLS listener, which has no
such path (docs/decisions.md, "Metrics on an operator listener").

What is counted, and from where:

* requests served — ``phoenix_http_requests_total{service, endpoint, status}``
  and ``phoenix_http_request_duration_seconds{service, endpoint}`` (time
  until the answer starts), from the ``in`` records of the homeserver's
  :class:`~phoenix_ref.http.RequestLog`; ``phoenix_rate_limit_given_total{service,
  endpoint}`` counts the 429 answers among them;
* requests sent to other homeservers — ``phoenix_federation_requests_total{destination,
  endpoint, result}`` (``result``: the status, or the failure's class name)
  and ``phoenix_rate_limit_received_total{destination}``, from its ``out``
  records;
* delivery attempts of the outbound queues — ``phoenix_federation_deliveries_total``,
  ``phoenix_federation_retries_total`` and ``phoenix_federation_dead_letters_total``,
  all ``{destination}`` and all counting messages (an attempt record's
  ``messages``), from its ``attempt`` records;
* messages per QS-to-QS request — ``phoenix_federation_batch_messages_sent``
  (every attempt) and ``…_received`` (every request the QS processed):
  histograms, 1 for a lone QsToQsMessage, the entry count of a QsToQsBatch
  (a backlog, docs/decisions.md "QS-to-QS batches");
* Privacy Pass — ``phoenix_privacy_pass_tokens_issued_total{role}`` and
  ``phoenix_privacy_pass_tokens_redeemed_total{service, role}``, ``role``
  being ``local`` (the homeserver's own clients) or ``federated``;
* the outbound queues as they are at the scrape, read from the QS store —
  ``phoenix_federation_queue_depth{destination}``,
  ``phoenix_federation_queue_oldest_age_seconds{destination}``,
  ``phoenix_federation_dead_letters_stored{destination}`` and
  ``phoenix_federation_destination_parked{destination}``.

Label values are endpoint names from the endpoint table, statuses, failure
class names, service names and peer domains — never a path as received, a
user or client id, a pseudonym or a token. A path that names no endpoint
counts as ``other``; at most :data:`MAX_DOMAINS` peer domains get labels of
their own, later ones count as ``other`` (a client can make its homeserver
contact any number of domains).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterable

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

from . import endpoints
from .federation.discovery import WELL_KNOWN_PATH
from .federation.outbound import Delivered, Outcome, Rejected, RetryLater

__all__ = ["HomeserverMetrics", "metrics_app", "Scrape", "MAX_DOMAINS", "OTHER", "METRICS_PATH"]

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
#: The label of whatever may not have one of its own (module docstring).
OTHER = "other"
#: Peer domains with labels of their own, per homeserver and process.
MAX_DOMAINS = 1000

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

#: endpoint path → endpoint name (every path is ``/phoenix/v1/<name>``, unique across services)
_BY_PATH = {ep.path: ep.name for ep in endpoints.ENDPOINTS}
_BY_SERVICE_PATH = {(str(ep.service), ep.path): ep.name for ep in endpoints.ENDPOINTS}


class _DomainLabels:
    """Peer domain → label value: the domain for the first ``limit`` domains
    seen, :data:`OTHER` after that."""

    def __init__(self, limit: int):
        self.limit = limit
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, domain: str | None) -> str:
        if not domain:
            return OTHER
        domain = domain.lower()
        if domain in self._known:
            return domain
        with self._lock:
            if len(self._known) < self.limit:
                self._known.add(domain)
                return domain
        return OTHER


class HomeserverMetrics:
    """The counters of one homeserver (module docstring).

    ``hosts``: the homeserver's host names → service (``as``, ``ds``, ``qs``,
    ``well-known``), as :meth:`~phoenix_ref.homeserver.Homeserver.hosts`
    gives them. ``outbound_store``: returns the QS's outbound store, or None
    while the homeserver is not running. ``now_ms``: the homeserver's clock,
    for the age of the oldest queued message.
    """

    def __init__(self, hosts: dict[str, str], *, outbound_store: Callable[[], Any] = lambda: None,
                 now_ms: Callable[[], int] | None = None, max_domains: int = MAX_DOMAINS):
        self.hosts = dict(hosts)
        self.registry = CollectorRegistry(auto_describe=True)
        self.domain_label = _DomainLabels(max_domains)
        r = self.registry
        self.requests = Counter("phoenix_http_requests", "Requests served, by the status of their answer "
                                "(101: websocket accepted; none: ended before an answer)",
                                ["service", "endpoint", "status"], registry=r)
        self.latency = Histogram("phoenix_http_request_duration_seconds",
                                 "Time from a request's arrival until its answer started",
                                 ["service", "endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.rate_limit_given = Counter("phoenix_rate_limit_given", "Requests answered with 429 Too Many Requests",
                                        ["service", "endpoint"], registry=r)
        self.federation_requests = Counter(
            "phoenix_federation_requests", "Requests sent to other homeservers, by status or failure class",
            ["destination", "endpoint", "result"], registry=r)
        self.rate_limit_received = Counter("phoenix_rate_limit_received",
                                           "429 answers from other homeservers", ["destination"], registry=r)
        self.deliveries = Counter("phoenix_federation_deliveries",
                                  "Outbound queue messages the destination accepted", ["destination"], registry=r)
        self.retries = Counter("phoenix_federation_retries",
                               "Outbound queue messages whose attempt failed for now and will be retried",
                               ["destination"], registry=r)
        self.dead_letters = Counter("phoenix_federation_dead_letters",
                                    "Outbound queue messages the destination refused for good",
                                    ["destination"], registry=r)
        self.batch_sent = Histogram("phoenix_federation_batch_messages_sent",
                                    "Messages per QS-to-QS request sent", buckets=_BATCH_BUCKETS, registry=r)
        self.batch_received = Histogram("phoenix_federation_batch_messages_received",
                                        "Messages per QS-to-QS request accepted", buckets=_BATCH_BUCKETS, registry=r)
        self.tokens_issued = Counter("phoenix_privacy_pass_tokens_issued", "Privacy Pass tokens the AS issued",
                                     ["role"], registry=r)
        self.tokens_redeemed = Counter("phoenix_privacy_pass_tokens_redeemed",
                                       "Privacy Pass tokens redeemed (spent) by a service", ["service", "role"],
                                       registry=r)
        r.register(_OutboundQueues(outbound_store, now_ms, self.domain_label.limit))

    # --- request log records -----------------------------------------------------------------

    def record(self, entry: dict[str, Any]) -> None:
        """A :class:`~phoenix_ref.http.RequestLog` listener."""
        kind = entry.get("dir")
        if kind == "in":
            self._served(entry)
        elif kind == "out":
            self._sent(entry)
        elif kind == "attempt":
            self._attempt(entry)

    def endpoint_of(self, host: str, path: str) -> tuple[str, str]:
        """(service, endpoint) label values of a request served at ``host`` ``path``."""
        service = self.hosts.get(host, "unknown")
        if service == "well-known":
            return service, "well_known" if path == WELL_KNOWN_PATH else OTHER
        return service, _BY_SERVICE_PATH.get((service, path), OTHER)

    def _served(self, entry: dict[str, Any]) -> None:
        service, endpoint = self.endpoint_of(entry.get("host", ""), entry.get("path", ""))
        status = entry.get("status")
        self.requests.labels(service, endpoint, "none" if status is None else str(status)).inc()
        self.latency.labels(service, endpoint).observe(entry.get("ms", 0.0) / 1000)
        if status == 429:
            self.rate_limit_given.labels(service, endpoint).inc()

    def _sent(self, entry: dict[str, Any]) -> None:
        destination = self.domain_label(entry.get("to"))
        path = entry.get("path", "")
        endpoint = "well_known" if path == WELL_KNOWN_PATH else _BY_PATH.get(path, OTHER)
        status = entry.get("status")
        result = str(status) if status is not None else str(entry.get("error") or "unknown")[:64]
        self.federation_requests.labels(destination, endpoint, result).inc()
        if status == 429:
            self.rate_limit_received.labels(destination).inc()

    def _attempt(self, entry: dict[str, Any]) -> None:
        counter = {"delivered": self.deliveries, "retry": self.retries,
                   "dead_letter": self.dead_letters}.get(entry.get("outcome"))
        if counter is not None:
            counter.labels(self.domain_label(entry.get("to"))).inc(entry.get("messages", 1))

    # --- direct observations ------------------------------------------------------------------

    def issued(self, role: str, n: int) -> None:
        self.tokens_issued.labels(role).inc(n)

    def redeemed(self, service: str, role: str) -> None:
        self.tokens_redeemed.labels(service, role).inc()

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The registry in the format ``accept`` asks for (Prometheus text by
        default, OpenMetrics on request): (body, content type)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def attempt_outcome(outcome: Outcome) -> tuple[str, dict[str, Any]]:
    """An outbound attempt's outcome as the request log's ``attempt`` fields."""
    if isinstance(outcome, Delivered):
        return "delivered", {}
    if isinstance(outcome, Rejected):
        return "dead_letter", {"status": outcome.status, "code": outcome.code}
    assert isinstance(outcome, RetryLater)
    return "retry", {}


def attempt_kinds(outcomes: list[Outcome]) -> list[tuple[str, int, dict[str, Any]]]:
    """The outcomes of one attempt grouped as its ``attempt`` records:
    (outcome, how many messages had it, its fields), in order of first
    appearance — one entry unless the messages were answered differently."""
    kinds: dict[tuple, int] = {}
    for outcome in outcomes:
        kind, extra = attempt_outcome(outcome)
        key = (kind, *sorted(extra.items()))
        kinds[key] = kinds.get(key, 0) + 1
    return [(kind, count, dict(extra)) for (kind, *extra), count in kinds.items()]


class _OutboundQueues:
    """The outbound queues' gauges, read from the store at every scrape
    (the scrape runs in a worker thread: :func:`metrics_app`)."""

    def __init__(self, store: Callable[[], Any], now_ms: Callable[[], int] | None, limit: int):
        self.store = store
        self.now_ms = now_ms
        self.limit = limit

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (GaugeMetricFamily("phoenix_federation_queue_depth", "Messages waiting in an outbound queue",
                                  labels=["destination"]),
                GaugeMetricFamily("phoenix_federation_queue_oldest_age_seconds",
                                  "Age of the oldest message waiting in an outbound queue", labels=["destination"]),
                GaugeMetricFamily("phoenix_federation_dead_letters_stored",
                                  "Dead letters kept for the operator (phoenix-ref admin … outbound)",
                                  labels=["destination"]),
                GaugeMetricFamily("phoenix_federation_destination_parked",
                                  "1 while a destination's sender is parked after a programming error",
                                  labels=["destination"]))

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth, age, dead, parked = families = self._families()
        store = self.store()
        if store is None or self.now_ms is None:
            return families
        try:
            queues = store.queue_summary()
            stored = store.dead_letter_counts() if hasattr(store, "dead_letter_counts") else {}
            parked_now = store.parked()
        except Exception:   # the store closed under the scrape (shutdown): no figures this time
            log.debug("outbound store unreadable during a scrape", exc_info=True)
            return families
        now = self.now_ms()
        # the deepest queues get labels of their own; the rest add up under "other"
        ranked = sorted(queues.items(), key=lambda kv: (-kv[1][0], kv[0]))
        rest_n, rest_oldest = 0, None
        for i, (destination, (n, oldest)) in enumerate(ranked):
            if i < self.limit:
                depth.add_metric([destination], n)
                age.add_metric([destination], max(0, now - oldest) / 1000)
            else:
                rest_n += n
                rest_oldest = oldest if rest_oldest is None else min(rest_oldest, oldest)
        if rest_oldest is not None:
            depth.add_metric([OTHER], rest_n)
            age.add_metric([OTHER], max(0, now - rest_oldest) / 1000)
        for destination, n in sorted(stored.items())[:self.limit]:
            dead.add_metric([destination], n)
        for destination in sorted(parked_now)[:self.limit]:
            parked.add_metric([destination], 1)
        return families


def metrics_app(metrics: Callable[[], HomeserverMetrics | None]) -> Callable:
    """The ASGI app of the operator listener: ``GET /metrics`` (and HEAD)
    answers the exposition of ``metrics()``; any other path 404, any other
    method 405. It answers lifespan events, so a server can start it alone."""

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        current = metrics()
        if scope.get("path") != METRICS_PATH or current is None:
            status, body, ctype = 404, b"not found: the operator listener serves GET /metrics only\n", "text/plain"
        elif scope.get("method") not in ("GET", "HEAD"):
            status, body, ctype = 405, b"method not allowed\n", "text/plain"
        else:
            accept = ",".join(v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"accept")
            # the outbound gauges read SQLite: off the Trio thread
            body, ctype = await trio.to_thread.run_sync(current.exposition, accept)
            status = 200
        headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})

    return app


class Scrape:
    """One ``/metrics`` answer, parsed, for the readers of the metrics (the
    tests and ``benchmarks/delivery_bench.py``): ``value(name, **labels)``
    sums the samples named ``name`` whose labels include ``labels``."""

    def __init__(self, text: str):
        self.text = text
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def labels(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}
