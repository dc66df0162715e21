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

Discovery order and the well-known format: docs/decisions.md, and
``federation/discovery.py``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ids import Fqdn, InvalidId

SERVICES = ("as", "ds", "qs")


class ConfigError(ValueError):
    """The configuration file is missing a value or has a wrong one."""


@dataclass(frozen=True)
class Limits:
    """Sizes and times that bound what a homeserver accepts and waits for."""
    max_body_bytes: int = 1 << 20          # larger request bodies get 413
    max_answer_bytes: int = 1 << 20        # larger federation answers are malformed
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 10.0
    discovery_ttl_s: int = 3600
    key_cache_ttl_s: int = 3600
    key_refetch_cooldown_s: int = 10       # unknown key id: at most one refetch per this interval
    # AS configuration (spec/authentication_service.md#configuration; docs/decisions.md)
    token_time_frame_s: int = 86_400       # "anonymous token time-frame"
    token_allowance: int = 100             # "default token allowance" per client and time frame
    token_domain_allowance: int = 10_000   # per other homeserver and time frame (#rate-limiting)
    token_batch_max: int = 100             # tokens per issuance request
    as_max_messages: int = 500             # "maximal number of requested messages" per dequeue
    as_max_client_age_s: int = 90 * 86_400  # "maximal QS client record age": inactive AS client entries go
    as_prune_interval_s: int = 3600        # how often the AS looks for inactive client entries
    registrations_per_source: int = 32     # pending registration starts one network source may hold
    qs_max_client_age_s: int = 90 * 86_400  # "maximal QS client record age" (#qs-configuration-options)
    qs_prune_interval_s: int = 3600        # how often the QS looks for inactive client records
    # DS configuration (spec/delivery_service.md#ds-configuration-options; docs/decisions.md A9)
    ds_max_inactivity_days: int = 90       # "maximal duration of client commit inactivity"
    ds_max_key_package_age_days: int = 90  # maximal age of an added KeyPackage
    # outbound federation queues (GUIDE §3, federation/outbound.py): exponential backoff
    federation_retry_base_s: float = 1.0   # first retry delay after a failed delivery attempt
    federation_retry_max_s: float = 300.0  # cap of the retry delay
    # the HTTP server: a connection is closed after this many requests (clients reconnect)
    max_requests_per_connection: int = 1000


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

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "domain", str(Fqdn(self.domain)))
        except InvalidId as e:
            raise ConfigError(f"domain: {e}") from None
        for svc in self.well_known:
            if svc not in SERVICES:
                raise ConfigError(f"well_known: unknown service {svc!r}")
        for dom, urls in self.discovery.items():
            if set(urls) != set(SERVICES):
                raise ConfigError(f"discovery.{dom}: needs exactly the keys {SERVICES}")
        for where, url in [*(("well_known." + k, v) for k, v in self.well_known.items()),
                           *((f"discovery.{d}.{k}", v) for d, u in self.discovery.items() for k, v in u.items())]:
            if not url.startswith("https://"):
                raise ConfigError(f"{where}: {url!r} is not an https:// URL (federation is TLS-only)")
        for name, target in self.resolve.items():
            ip, sep, port = target.rpartition(":")
            if not sep or not ip or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"resolve.{name}: {target!r} is not ADDRESS:PORT")

    # --- derived values -------------------------------------------------------

    def host(self, service: str) -> str:
        """``as.<domain>`` etc. — spec/federation/use_cases.md#homeserver-domain-and-discovery."""
        return f"{service}.{self.domain}"

    def announced_urls(self) -> dict[str, str]:
        """The service base URLs this homeserver announces in its well-known."""
        port = "" if self.listen_port == 443 else f":{self.listen_port}"
        return {s: self.well_known.get(s, f"https://{self.host(s)}{port}") for s in SERVICES}

    def federates_with(self, domain: str) -> bool:
        """Operator allow/deny lists (spec/general_concepts/federation.md#federation)."""
        d = domain.lower()
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
        def p(v: Any) -> Path | None:
            return None if v is None else (base / _typed(v, str, "path")).resolve()

        try:
            listen = raw.get("listen", {})
            tls = raw.get("tls", {})
            _check_tls_table(tls)
            wk = dict(raw.get("well_known", {}))
            fed = raw.get("federation", {})
            known = {f.name for f in dataclasses.fields(Limits)}
            lim = raw.get("limits", {})
            if set(lim) - known:
                raise ConfigError(f"limits: unknown keys {sorted(set(lim) - known)}")
            perf = raw.get("performance", {})
            if set(perf) - {"gc_thresholds"}:
                raise ConfigError(f"performance: unknown keys {sorted(set(perf) - {'gc_thresholds'})}")
            return cls(
                domain=_typed(raw["domain"], str, "domain"),
                data_dir=p(raw.get("data_dir", "data")),
                keys_dir=p(raw.get("keys_dir", "keys")),
                listen_host=_typed(listen.get("host", "127.0.0.1"), str, "listen.host"),
                listen_port=_typed(listen.get("port", 8443), int, "listen.port"),
                tls_cert=p(tls.get("cert")),
                tls_key=p(tls.get("key")),
                ca_bundle=p(tls.get("ca_bundle")),
                well_known_enabled=_typed(wk.pop("enabled", True), bool, "well_known.enabled"),
                well_known={k: _typed(v, str, f"well_known.{k}") for k, v in wk.items()},
                discovery={d: {k: _typed(v, str, f"discovery.{d}.{k}") for k, v in u.items()}
                           for d, u in raw.get("discovery", {}).items()},
                resolve={k: _typed(v, str, f"resolve.{k}") for k, v in raw.get("resolve", {}).items()},
                federation_allow=tuple(x.lower() for x in fed.get("allow", [])),
                federation_deny=tuple(x.lower() for x in fed.get("deny", [])),
                limits=Limits(**lim),
                performance=Performance(**perf),
            )
        except KeyError as e:
            raise ConfigError(f"missing required key {e}") from None
        except (TypeError, AttributeError) as e:
            raise ConfigError(str(e)) from None

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
        return "\n".join(out) + "\n"


_TLS_KEYS = {"cert", "key", "ca_bundle", "min_version"}


def _check_tls_table(tls: dict[str, Any]) -> None:
    """``[tls]``: known keys only; ``min_version`` may only say "1.3".

    spec/threat_model/stride/security_requirements.md#basic-confidentiality-and-authentication
    requires TLS 1.3 on every connection, so no setting lowers it; a config
    that asks for an older minimum is refused rather than silently upgraded.
    """
    if set(tls) - _TLS_KEYS:
        raise ConfigError(f"tls: unknown keys {sorted(set(tls) - _TLS_KEYS)}")
    wanted = tls.get("min_version", "1.3")
    if wanted != "1.3":
        raise ConfigError(f"tls.min_version = {wanted!r}: Phoenix requires TLS 1.3 on every connection "
                          "(spec/threat_model/stride/security_requirements.md); remove the key or set \"1.3\"")


def _typed(value: Any, typ: type, where: str) -> Any:
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}")
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
