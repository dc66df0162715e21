"""Homeserver configuration: one TOML file per homeserver.

``phoenix-ref generate-config`` writes it, ``phoenix-ref serve --config``
reads it (stdlib ``tomllib``). Relative paths are relative to the file.
Example (every table but the top-level keys is optional)::

    domain = "a.example"
    data_dir = "data"            # one SQLite database per service
    keys_dir = "keys"            # key material, private keys mode 0600

    [listen]
    host = "127.0.0.1"
    port = 8443

    [tls]                        # TLS 1.3 only, listeners and outgoing connections alike
    cert = "cert.pem"            # server certificate chain for a.example, as./ds./qs.a.example
    key = "key.pem"
    ca_bundle = "ca.pem"         # trust anchors for outbound federation (absent: system store)

    [well_known]                 # what https://a.example/.well-known/phoenix announces
    enabled = true
    as = "https://as.a.example:8443"   # default: subdomain rule + listen port

    [discovery."b.example"]      # static discovery override (labs, tests)
    as = "https://as.b.example:8444"
    ds = "https://ds.b.example:8444"
    qs = "https://qs.b.example:8444"

    [resolve]                    # connection-level override; TLS still checks the name
    "as.b.example" = "127.0.0.1:8444"

    [federation]                 # spec/general_concepts/federation.md: both sides must permit it
    allow = []                   # empty: every domain not denied
    deny = ["spam.example"]

    [limits]
    max_body_bytes = 1048576

    [performance]
    gc_thresholds = [50000, 20, 20]   # CPython's cyclic GC thresholds (default 700, 10, 10)

    [operator]                   # what only the operator reaches; absent keys: off
    metrics_listen = "127.0.0.1:9464"   # Prometheus GET /metrics, plain HTTP, loopback only

Discovery order and the well-known format: docs/decisions.md, and
``federation/discovery.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import idna

from .ids import Fqdn, InvalidId

SERVICES = ("as", "ds", "qs")


class ConfigError(ValueError):
    """The configuration file is missing a value or has a wrong one."""


#: Upper bound of every count and size in ``[limits]``: far above any sensible
#: setting, and small enough that milliseconds derived from it fit SQLite's
#: and the wire's 64-bit integers.
_MAX_LIMIT = 10 ** 12


def _limit(default: int | float, *, minimum: int | float = 1, maximum: int | float = _MAX_LIMIT,
           unit: str = "") -> Any:
    """A ``[limits]`` field with the range a value must lie in (checked at load)."""
    return field(default=default, metadata={"min": minimum, "max": maximum, "unit": unit})


@dataclass(frozen=True)
class Limits:
    """Sizes and times that bound what a homeserver accepts and waits for.

    Every field is checked when the config is built: an ``int`` field takes
    an integer, a ``float`` field an integer or a decimal number (never a
    boolean or a string), each within the range its declaration gives
    (``_limit``); anything else is a :class:`ConfigError` naming the key
    (``spec/threat_model/stride/security_requirements/operators.md#homeserver-management``:
    the homeserver checks that its configuration is valid).
    """
    max_body_bytes: int = _limit(1 << 20, minimum=1024, unit="bytes")       # larger request bodies get 413
    max_answer_bytes: int = _limit(1 << 20, minimum=1024, unit="bytes")     # larger federation answers are malformed
    connect_timeout_s: float = _limit(5.0, minimum=0.001, maximum=3600, unit="seconds")
    request_timeout_s: float = _limit(10.0, minimum=0.001, maximum=3600, unit="seconds")
    discovery_ttl_s: int = _limit(3600, unit="seconds")
    key_cache_ttl_s: int = _limit(3600, unit="seconds")
    key_refetch_cooldown_s: int = _limit(10, unit="seconds")   # unknown key id: at most one refetch per this interval
    # AS configuration (spec/authentication_service.md#configuration; docs/decisions.md)
    token_time_frame_s: int = _limit(86_400, unit="seconds")      # "anonymous token time-frame"
    token_allowance: int = _limit(100, unit="tokens")             # "default token allowance" per client and time frame
    token_domain_allowance: int = _limit(10_000, unit="tokens")   # per other homeserver and time frame (#rate-limiting)
    token_batch_max: int = _limit(100, maximum=10_000, unit="tokens")   # tokens per issuance request
    as_max_messages: int = _limit(500, maximum=100_000, unit="messages")   # "maximal number of requested messages"
    as_max_client_age_s: int = _limit(90 * 86_400, unit="seconds")   # "maximal QS client record age": inactive AS client entries go
    as_max_alias_age_s: int = _limit(90 * 86_400, unit="seconds")   # alias entries whose queue nobody fetched from go (docs/decisions.md)
    registrations_per_source: int = _limit(32, unit="registrations")   # pending registration starts one network source may hold
    qs_max_client_age_s: int = _limit(90 * 86_400, unit="seconds")   # "maximal QS client record age" (#qs-configuration-options)
    # DS configuration (spec/delivery_service.md#ds-configuration-options; docs/decisions.md A9)
    ds_max_inactivity_days: int = _limit(90, unit="days")        # "maximal duration of client commit inactivity"
    ds_max_key_package_age_days: int = _limit(90, unit="days")   # maximal age of an added KeyPackage
    ds_padding_percentile: int = _limit(8, maximum=10, unit="deciles")   # "padding target (1..10)" (A19)
    ds_group_expiry_days: int = _limit(180, unit="days")         # groups without a commit for longer go (decision A18)
    # state expiration (spec/general_concepts/state_expiration.md): one sweeper per
    # homeserver deletes what expired, at start and then every this many seconds (sweeper.py)
    sweep_interval_s: float = _limit(3600.0, minimum=0.01, maximum=86_400, unit="seconds")
    # outbound federation queues (GUIDE §3, federation/outbound.py): exponential backoff
    federation_retry_base_s: float = _limit(1.0, minimum=0.001, maximum=86_400, unit="seconds")   # first retry delay
    federation_retry_max_s: float = _limit(300.0, minimum=0.001, maximum=86_400, unit="seconds")  # cap of the retry delay
    # a QS-to-QS message not delivered within this age moves to the dead letters (docs/decisions.md)
    federation_outbound_max_age_s: int = _limit(7 * 86_400, minimum=60, unit="seconds")
    # a backlog for one destination goes as QsToQsBatches of at most this many messages (the
    # protocol's maximum is 100) and, beyond the first, this many payload bytes (docs/decisions.md)
    federation_batch_max_messages: int = _limit(100, maximum=100, unit="messages")
    federation_batch_max_bytes: int = _limit(512 * 1024, minimum=1024, unit="bytes")
    # while a destination has a backlog (its last batch carried more than one message and more
    # wait), the next batch gathers until this many messages wait, or this long at most; linger 0:
    # never (docs/decisions.md, "Federation batches linger under a backlog")
    federation_batch_linger_ms: int = _limit(250, minimum=0, maximum=10_000, unit="milliseconds")
    federation_batch_gather: int = _limit(16, maximum=100, unit="messages")
    # the HTTP server: a connection is closed after this many requests (clients reconnect)
    max_requests_per_connection: int = _limit(1000, unit="requests")
    # how often a running homeserver looks for key files and revocations that
    # `phoenix-ref admin` changed (docs/decisions.md, "Operator commands beside a running homeserver")
    operator_poll_interval_s: float = _limit(5.0, minimum=0.01, maximum=3600, unit="seconds")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            lo, hi, unit = f.metadata["min"], f.metadata["max"], f.metadata["unit"]
            wants_int = f.type in (int, "int")
            kind = "an integer" if wants_int else "a number"
            ok = (isinstance(value, int) or (not wants_int and isinstance(value, float))) \
                and not isinstance(value, bool)
            if not ok or not lo <= value <= hi:
                raise ConfigError(f"limits.{f.name}: expected {kind} from {lo} to {hi} ({unit}), got {value!r}")
        if self.federation_retry_base_s > self.federation_retry_max_s:
            raise ConfigError(f"limits.federation_retry_base_s ({self.federation_retry_base_s}) is larger than "
                              f"limits.federation_retry_max_s ({self.federation_retry_max_s})")


#: The largest value ``gc.set_threshold`` takes (a C int).
_MAX_GC_THRESHOLD = (1 << 31) - 1


@dataclass(frozen=True)
class Performance:
    """Settings that change how fast a homeserver is, never what it does.

    ``gc_thresholds`` — CPython's cyclic garbage collector thresholds
    (``gc.set_threshold``), set when a homeserver starts; process-wide.
    Default (50 000, 20, 20) instead of CPython's (700, 10, 10): a fan-out to
    1000 queues keeps thousands of container objects alive while it runs,
    nearly all freed by reference counting, and with CPython's thresholds the
    collector traversed them again and again — ~4 ms of CPU of a ~40 ms
    fan-out, ~0.4 ms with these (docs/decisions.md, "Garbage collector
    thresholds"). Garbage in reference cycles, rare here, waits up to
    50 000 allocations to be freed. The first threshold must be positive (0
    would switch the collector off), the others non-negative.
    """
    gc_thresholds: tuple[int, int, int] = (50_000, 20, 20)

    def __post_init__(self) -> None:
        t = self.gc_thresholds
        if (not isinstance(t, (tuple, list)) or len(t) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _MAX_GC_THRESHOLD for v in t)
                or t[0] == 0):
            raise ConfigError(f"performance.gc_thresholds: expected three integers [first > 0, second >= 0, "
                              f"third >= 0], each at most {_MAX_GC_THRESHOLD}, got {t!r}")
        object.__setattr__(self, "gc_thresholds", tuple(t))


@dataclass(frozen=True)
class OperatorSettings:
    """``[operator]``: listeners for the homeserver's operator, never for clients.

    ``metrics_listen`` — ``ADDRESS:PORT`` (IPv6 as ``[ADDRESS]:PORT``) where
    the same process serves Prometheus metrics at ``GET /metrics`` over
    plain HTTP (:mod:`phoenix_ref.metrics`); None (the default, and what
    ``generate-config`` writes) serves none and collects none. The address
    must be a loopback IP literal: the figures are per peer domain and per
    endpoint, metadata a homeserver shows to its operator only, and a plain
    HTTP listener on any other address would show them to the network
    (docs/decisions.md, "Metrics on an operator listener"; a scraper on
    another machine reaches it through a tunnel or a TLS proxy the operator
    runs). The port must differ from the public listener's when both are on
    one address (checked in :class:`Config`).
    """
    metrics_listen: str | None = None

    def __post_init__(self) -> None:
        if self.metrics_listen is None:
            return
        _typed(self.metrics_listen, str, "operator.metrics_listen")
        host, port = split_host_port(self.metrics_listen, "operator.metrics_listen")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"operator.metrics_listen: {host!r} is not an IP address (write the loopback "
                              "address, e.g. \"127.0.0.1:9464\" or \"[::1]:9464\")") from None
        if not ip.is_loopback:
            raise ConfigError(f"operator.metrics_listen: {host} is not a loopback address; the metrics "
                              "listener speaks plain HTTP and is for the operator only (reach it from "
                              "elsewhere through a tunnel or a TLS proxy)")
        object.__setattr__(self, "metrics_listen", f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")

    def metrics_address(self) -> tuple[str, int] | None:
        """``(address, port)`` of the metrics listener, or None when it is off."""
        if self.metrics_listen is None:
            return None
        host, port = split_host_port(self.metrics_listen, "operator.metrics_listen")
        return host, port


def split_host_port(text: str, where: str) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``"[V6]:PORT"`` → (host, port), the port from 1 to 65535."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"{where}: {text!r}: write an IPv6 address in brackets, [ADDRESS]:PORT")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: expected ADDRESS:PORT with a port from 1 to 65535, got {text!r}")
    return host, int(port)


@dataclass(frozen=True)
class Config:
    domain: str
    data_dir: Path
    keys_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 8443
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ca_bundle: Path | None = None
    well_known_enabled: bool = True
    well_known: dict[str, str] = field(default_factory=dict)          # service → base URL
    discovery: dict[str, dict[str, str]] = field(default_factory=dict)  # domain → service → URL
    resolve: dict[str, str] = field(default_factory=dict)             # "host[:port]" → "ip:port"
    federation_allow: tuple[str, ...] = ()
    federation_deny: tuple[str, ...] = ()
    limits: Limits = Limits()
    performance: Performance = Performance()
    operator: OperatorSettings = OperatorSettings()

    def __post_init__(self) -> None:
        # spec/threat_model/stride/security_requirements/operators.md#homeserver-setup:
        # the home domain must be an FQDN; every other domain is normalised the same way
        set_ = functools.partial(object.__setattr__, self)
        set_("domain", domain_name(self.domain, "domain"))
        _typed(self.listen_host, str, "listen.host")
        if not self.listen_host:
            raise ConfigError("listen.host: expected an address or host name, got an empty string")
        _typed(self.listen_port, int, "listen.port")
        if not 0 < self.listen_port < 65536:
            raise ConfigError(f"listen.port: expected a TCP port from 1 to 65535, got {self.listen_port}")
        _typed(self.well_known_enabled, bool, "well_known.enabled")
        for svc in self.well_known:
            if svc not in SERVICES:
                raise ConfigError(f"well_known: unknown service {svc!r} (expected one of {', '.join(SERVICES)})")
        discovery = {}
        for dom, urls in self.discovery.items():
            name = domain_name(dom, f"discovery.{dom!r}")
            if not isinstance(urls, dict) or set(urls) != set(SERVICES):
                raise ConfigError(f"discovery.{name}: needs exactly the keys {', '.join(SERVICES)}")
            if name in discovery:
                raise ConfigError(f"discovery: {dom!r} names {name} a second time")
            discovery[name] = urls
        set_("discovery", discovery)
        for where, url in [*(("well_known." + k, v) for k, v in self.well_known.items()),
                           *((f"discovery.{d}.{k}", v) for d, u in discovery.items() for k, v in u.items())]:
            _check_https_url(url, where)
        resolve = {}
        for name, target in self.resolve.items():
            key = _resolve_key(name)
            _typed(target, str, f"resolve.{key}")
            ip, sep, port = target.rpartition(":")
            if not sep or not ip or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"resolve.{key}: {target!r} is not ADDRESS:PORT")
            resolve[key] = target
        set_("resolve", resolve)
        for which in ("allow", "deny"):
            entries = getattr(self, f"federation_{which}")
            if not isinstance(entries, (list, tuple)):
                raise ConfigError(f"federation.{which}: expected a list of domains, got {entries!r}")
            names = tuple(dict.fromkeys(domain_name(d, f"federation.{which}") for d in entries))
            set_(f"federation_{which}", names)
        if not isinstance(self.limits, Limits):
            raise ConfigError(f"limits: expected a table, got {self.limits!r}")
        if not isinstance(self.operator, OperatorSettings):
            raise ConfigError(f"operator: expected a table, got {self.operator!r}")
        metrics = self.operator.metrics_address()
        if metrics is not None and metrics[1] == self.listen_port \
                and self.listen_host.strip("[]") in (metrics[0], "0.0.0.0", "::", "localhost"):
            raise ConfigError(f"operator.metrics_listen: {self.operator.metrics_listen} is where the public "
                              f"listener ({self.listen_host}:{self.listen_port}) is; the operator listener "
                              "needs a port of its own")

    # --- derived values -------------------------------------------------------

    def host(self, service: str) -> str:
        """``as.<domain>`` etc. — spec/federation/use_cases.md#homeserver-domain-and-discovery."""
        return f"{service}.{self.domain}"

    def announced_urls(self) -> dict[str, str]:
        """The service base URLs this homeserver announces in its well-known."""
        port = "" if self.listen_port == 443 else f":{self.listen_port}"
        return {s: self.well_known.get(s, f"https://{self.host(s)}{port}") for s in SERVICES}

    def federates_with(self, domain: str) -> bool:
        """Operator allow/deny lists (spec/general_concepts/federation.md#federation);
        ``domain`` is compared in its normal form (as the lists are stored)."""
        try:
            d = str(Fqdn(domain))
        except InvalidId:
            return False
        if d in self.federation_deny:
            return False
        return not self.federation_allow or d in self.federation_allow

    # --- TOML -----------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str) -> "Config":
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{path}: {e}") from None
        return cls.from_dict(raw, base=path.parent)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base: Path) -> "Config":
        def p(v: Any, where: str) -> Path | None:
            return None if v is None else (base / _typed(v, str, where)).resolve()

        if not isinstance(raw, dict):
            raise ConfigError(f"expected a TOML table, got {raw!r}")

        _known_keys(raw, "", _TOP_LEVEL_KEYS)
        listen = _table(raw, "listen", {"host", "port"})
        tls = _table(raw, "tls", _TLS_KEYS)
        _check_tls_table(tls)
        wk = dict(_table(raw, "well_known", {"enabled", *SERVICES}))
        fed = _table(raw, "federation", {"allow", "deny"})
        lim = _table(raw, "limits", {f.name for f in dataclasses.fields(Limits)})
        perf = _table(raw, "performance", {"gc_thresholds"})
        operator = _table(raw, "operator", {f.name for f in dataclasses.fields(OperatorSettings)})
        discovery = _table(raw, "discovery", None)
        resolve = _table(raw, "resolve", None)
        if "domain" not in raw:
            raise ConfigError("domain: missing; the home domain of this homeserver is required")
        return cls(
            domain=_typed(raw["domain"], str, "domain"),
            data_dir=p(raw.get("data_dir", "data"), "data_dir"),
            keys_dir=p(raw.get("keys_dir", "keys"), "keys_dir"),
            listen_host=_typed(listen.get("host", "127.0.0.1"), str, "listen.host"),
            listen_port=_typed(listen.get("port", 8443), int, "listen.port"),
            tls_cert=p(tls.get("cert"), "tls.cert"),
            tls_key=p(tls.get("key"), "tls.key"),
            ca_bundle=p(tls.get("ca_bundle"), "tls.ca_bundle"),
            well_known_enabled=_typed(wk.pop("enabled", True), bool, "well_known.enabled"),
            well_known={k: _typed(v, str, f"well_known.{k}") for k, v in wk.items()},
            discovery={d: {k: _typed(v, str, f"discovery.{d}.{k}")
                           for k, v in _table(discovery, d, None, f"discovery.{d}").items()}
                       for d in discovery},
            resolve={k: _typed(v, str, f"resolve.{k}") for k, v in resolve.items()},
            federation_allow=fed.get("allow", ()),
            federation_deny=fed.get("deny", ()),
            limits=Limits(**lim),
            performance=Performance(**perf),
            operator=OperatorSettings(**operator),
        )

    def to_toml(self, base: Path | None = None) -> str:
        """The TOML text of this config; paths relative to ``base`` if inside it."""
        def p(v: Path) -> str:
            if base is not None:
                try:
                    return str(Path(v).resolve().relative_to(Path(base).resolve()))
                except ValueError:
                    pass
            return str(v)

        out = [f"domain = {_q(self.domain)}",
               f"data_dir = {_q(p(self.data_dir))}",
               f"keys_dir = {_q(p(self.keys_dir))}",
               "", "[listen]", f"host = {_q(self.listen_host)}", f"port = {self.listen_port}"]
        tls = [(k, v) for k, v in (("cert", self.tls_cert), ("key", self.tls_key),
                                   ("ca_bundle", self.ca_bundle)) if v is not None]
        if tls:
            out += ["", "[tls]"] + [f"{k} = {_q(p(v))}" for k, v in tls]
        out += ["", "[well_known]", f"enabled = {'true' if self.well_known_enabled else 'false'}"]
        out += [f"{k} = {_q(v)}" for k, v in sorted(self.well_known.items())]
        for dom, urls in sorted(self.discovery.items()):
            out += ["", f"[discovery.{_q(dom)}]"] + [f"{k} = {_q(v)}" for k, v in sorted(urls.items())]
        if self.resolve:
            out += ["", "[resolve]"] + [f"{_q(k)} = {_q(v)}" for k, v in sorted(self.resolve.items())]
        out += ["", "[federation]",
                f"allow = [{', '.join(_q(d) for d in self.federation_allow)}]",
                f"deny = [{', '.join(_q(d) for d in self.federation_deny)}]",
                "", "[limits]"]
        for f in dataclasses.fields(Limits):
            out.append(f"{f.name} = {getattr(self.limits, f.name)!r}")
        out += ["", "[performance]", f"gc_thresholds = [{', '.join(map(str, self.performance.gc_thresholds))}]"]
        out += ["", "[operator]"]
        if self.operator.metrics_listen is None:
            # off unless the operator asks; the commented line shows how
            out += ["# Prometheus metrics at GET http://ADDRESS:PORT/metrics, plain HTTP, loopback only "
                    "(README, \"Metrics and logs\")",
                    '# metrics_listen = "127.0.0.1:9464"']
        else:
            out.append(f"metrics_listen = {_q(self.operator.metrics_listen)}")
        return "\n".join(out) + "\n"


_TLS_KEYS = {"cert", "key", "ca_bundle", "min_version"}
_TOP_LEVEL_KEYS = {"domain", "data_dir", "keys_dir", "listen", "tls", "well_known", "discovery", "resolve",
                   "federation", "limits", "performance", "operator"}


def _known_keys(table: dict[str, Any], where: str, known: set[str]) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        place = f"{where}: " if where else ""
        raise ConfigError(f"{place}unknown keys {unknown} (expected some of {sorted(known)})")


def _table(raw: dict[str, Any], name: str, known: set[str] | None, where: str | None = None) -> dict[str, Any]:
    """``raw[name]``, which must be a table (absent: empty), with only ``known`` keys
    (``None``: any key)."""
    value = raw.get(name, {})
    where = where or name
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table ([{where}]), got {value!r}")
    if known is not None:
        _known_keys(value, where, known)
    return value


def _check_tls_table(tls: dict[str, Any]) -> None:
    """``[tls]``: known keys only; ``min_version`` may only say "1.3".

    spec/threat_model/stride/security_requirements.md#basic-confidentiality-and-authentication
    requires TLS 1.3 on every connection, so no setting lowers it; a config
    that asks for an older minimum is refused rather than silently upgraded.
    """
    wanted = tls.get("min_version", "1.3")
    if wanted != "1.3":
        raise ConfigError(f"tls.min_version = {wanted!r}: Phoenix requires TLS 1.3 on every connection "
                          "(spec/threat_model/stride/security_requirements.md); remove the key or set \"1.3\"")


def domain_name(value: Any, where: str) -> str:
    """A domain from the config in its one normal form: lower case, no
    trailing dot, internationalised labels as IDNA A-labels (UTS #46
    mapping, ``xn--…``). Anything that is not a valid FQDN is a ConfigError
    naming ``where``."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a domain name (string), got {value!r}")
    text = value
    if not text.isascii():
        try:
            text = idna.encode(text.rstrip("."), uts46=True).decode("ascii")
        except idna.IDNAError as e:
            raise ConfigError(f"{where}: {value!r} is not a valid internationalised domain name ({e})") from None
    try:
        return str(Fqdn(text))
    except InvalidId as e:
        raise ConfigError(f"{where}: {e}") from None


def _resolve_key(name: Any) -> str:
    """A ``[resolve]`` key, ``HOST`` or ``HOST:PORT``, with the host normalised."""
    if not isinstance(name, str):
        raise ConfigError(f"resolve: expected host names as keys, got {name!r}")
    host, sep, port = name.rpartition(":")
    if not sep:
        return domain_name(name, f"resolve.{name!r}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"resolve.{name!r}: expected HOST or HOST:PORT with a port from 1 to 65535")
    return f"{domain_name(host, f'resolve.{name!r}')}:{int(port)}"


def _check_https_url(url: Any, where: str) -> None:
    """A service base URL: ``https://HOST[:PORT]`` with a valid host, nothing after it."""
    if not isinstance(url, str) or not url.startswith("https://"):
        raise ConfigError(f"{where}: {url!r} is not an https:// URL (federation is TLS-only)")
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.hostname is None or port == -1 or parts.path not in ("", "/") or parts.query or parts.fragment \
            or parts.username is not None:
        raise ConfigError(f"{where}: {url!r} is not https://HOST[:PORT] (a base URL without path or query)")
    domain_name(parts.hostname, where)


def _typed(value: Any, typ: type, where: str) -> Any:
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if not ok:
        name = {str: "a string", int: "an integer", bool: "true or false"}.get(typ, typ.__name__)
        raise ConfigError(f"{where}: expected {name}, got {value!r}")
    return value


def _q(s: str) -> str:
    """A TOML basic string (escapes backslash, quote and control characters)."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
