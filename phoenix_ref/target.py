"""Deployment files: a remote target for the conformance suite (issue 16).

``pytest --phoenix-target FILE`` runs ``spec_tests/`` against homeservers
that somebody else started, described by a TOML file::

    [target]
    description = "my homeservers in the lab"
    expected_failures = "known-failures.toml"   # optional, see load_manifest

    [limits]                     # optional: the configuration the suite may rely on
    token_allowance = 1000000    # (phoenix_ref's names, phoenix_ref.config.Limits)

    [[homeserver]]
    name = "hs1"                 # hs1 → a.example, hs2 → b.example, hs3 → c.example
    domain = "a.example"
    address = "127.0.0.1:8443"   # where to connect; TLS still checks the domain's names
    ca = "ca.pem"                # trust anchors for its certificate

The suite's tests name their domains (``a.example``, ``b.example``,
``c.example``), so a target serves those: each homeserver answers for
``D``, ``as.D``, ``ds.D`` and ``qs.D`` with a certificate the given CA
verifies. ``address`` (``host:port``) sends all four names to one place,
like ``curl --resolve``; without it they resolve through DNS on port 443.
Relative paths are read from the deployment file's folder. Two homeservers
(hs1, hs2) are the minimum; tests that need a third are reported
unsupported against a target of two.

Every problem in a file is a :class:`TargetFileError` that names the file
and the key; nothing here touches the network.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, Limits

#: The homeservers the suite addresses, by name, and the domain each one serves.
SUITE_DOMAINS = {"hs1": "a.example", "hs2": "b.example", "hs3": "c.example"}
_TOP_KEYS = {"target", "limits", "homeserver"}
_TARGET_KEYS = {"description", "expected_failures"}
_HOMESERVER_KEYS = {"name", "domain", "address", "ca"}


class TargetFileError(ValueError):
    """A deployment file or an expected-failures manifest that cannot be used."""


@dataclass(frozen=True)
class TargetHomeserver:
    """One homeserver of a target: the suite's name for it, its domain, where
    to connect (``None``: DNS, port 443) and its CA file (``None``: the system store)."""
    name: str
    domain: str
    address: tuple[str, int] | None
    ca: Path | None

    def hosts(self) -> list[str]:
        """The names it answers for: the domain and its three service hosts."""
        return [self.domain] + [f"{s}.{self.domain}" for s in ("as", "ds", "qs")]


@dataclass(frozen=True)
class Target:
    """A parsed deployment file."""
    path: Path
    description: str
    homeservers: dict[str, TargetHomeserver]
    limits: dict[str, Any] = field(default_factory=dict)   # only the keys the file declares
    expected_failures: Path | None = None

    def declared_limit(self, name: str) -> Any:
        """The value the file declares for limit ``name``, else phoenix_ref's default."""
        return self.limits.get(name, getattr(Limits(), name))

    def missing_limits(self, wanted: Limits) -> list[str]:
        """``key=value`` for every limit where ``wanted`` differs from
        phoenix_ref's default and the target does not declare that value."""
        default = Limits()
        out = []
        for f in dataclasses.fields(Limits):
            value = getattr(wanted, f.name)
            if value != getattr(default, f.name) and self.limits.get(f.name) != value:
                out.append(f"{f.name}={value!r}")
        return out


def _fail(path: Path, what: str) -> TargetFileError:
    return TargetFileError(f"{path}: {what}")


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise TargetFileError(f"{path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise _fail(path, f"not valid TOML ({e})") from None
    except OSError as e:
        raise _fail(path, f"cannot be read ({e.strerror or e})") from None


def _unknown(path: Path, where: str, got: dict, known: set[str]) -> None:
    extra = sorted(set(got) - known)
    if extra:
        raise _fail(path, f"{where}: unknown key(s) {', '.join(extra)} (known: {', '.join(sorted(known))})")


def _string(path: Path, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(path, f"{where}: expected a non-empty string, got {value!r}")
    return value


def _address(path: Path, where: str, value: Any) -> tuple[str, int]:
    text = _string(path, where, value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _fail(path, f"{where}: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _file(path: Path, where: str, value: Any) -> Path:
    p = Path(_string(path, where, value))
    p = p if p.is_absolute() else path.parent / p
    if not p.is_file():
        raise _fail(path, f"{where}: {p} is not a file")
    return p


def _homeserver(path: Path, i: int, entry: Any) -> TargetHomeserver:
    where = f"homeserver #{i + 1}"
    if not isinstance(entry, dict):
        raise _fail(path, f"{where}: expected a table")
    _unknown(path, where, entry, _HOMESERVER_KEYS)
    domain = _string(path, f"{where}.domain", entry.get("domain")).lower()
    by_domain = {d: n for n, d in SUITE_DOMAINS.items()}
    name = entry.get("name", by_domain.get(domain))
    if name not in SUITE_DOMAINS:
        raise _fail(path, f"{where}.name: expected one of {', '.join(SUITE_DOMAINS)}, got {name!r}")
    if domain != SUITE_DOMAINS[name]:
        raise _fail(path, f"{where}: the suite addresses {name} as {SUITE_DOMAINS[name]!r}, not {domain!r} "
                          "(its tests name their domains; serve that name under your test CA)")
    address = _address(path, f"{where}.address", entry["address"]) if "address" in entry else None
    ca = _file(path, f"{where}.ca", entry["ca"]) if "ca" in entry else None
    return TargetHomeserver(name, domain, address, ca)


def _limits(path: Path, table: Any) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise _fail(path, "[limits]: expected a table")
    known = {f.name for f in dataclasses.fields(Limits)}
    _unknown(path, "[limits]", table, known)
    try:
        Limits(**table)   # the same ranges as a phoenix_ref config
    except (ConfigError, TypeError) as e:
        raise _fail(path, f"[limits]: {e}") from None
    return dict(table)


def load_target(path: Path | str) -> Target:
    """Parse and check a deployment file (module docstring)."""
    path = Path(path).resolve()
    data = _read_toml(path)
    _unknown(path, "top level", data, _TOP_KEYS)
    head = data.get("target", {})
    if not isinstance(head, dict):
        raise _fail(path, "[target]: expected a table")
    _unknown(path, "[target]", head, _TARGET_KEYS)
    description = head.get("description", path.name)
    if not isinstance(description, str):
        raise _fail(path, f"[target].description: expected a string, got {description!r}")
    manifest = _file(path, "[target].expected_failures", head["expected_failures"]) \
        if "expected_failures" in head else None
    entries = data.get("homeserver")
    if not isinstance(entries, list) or not entries:
        raise _fail(path, "expected [[homeserver]] tables (two or three: hs1, hs2 and optionally hs3)")
    homeservers: dict[str, TargetHomeserver] = {}
    for i, entry in enumerate(entries):
        hs = _homeserver(path, i, entry)
        if hs.name in homeservers:
            raise _fail(path, f"homeserver #{i + 1}: {hs.name} ({hs.domain}) appears twice")
        homeservers[hs.name] = hs
    if not {"hs1", "hs2"} <= set(homeservers):
        raise _fail(path, "a target needs at least hs1 (a.example) and hs2 (b.example)")
    return Target(path, description, dict(sorted(homeservers.items())),
                  _limits(path, data.get("limits", {})), manifest)


def load_manifest(path: Path | str) -> dict[str, str]:
    """An expected-failures manifest: test id → why it fails on this target.

    The file is TOML with one table, keys being pytest node ids as the run
    prints them::

        [expected_failures]
        "spec_tests/test_ds_groups.py::test_x[target]" = "our DS does not pad yet"
    """
    path = Path(path).resolve()
    data = _read_toml(path)
    _unknown(path, "top level", data, {"expected_failures"})
    table = data.get("expected_failures")
    if not isinstance(table, dict):
        raise _fail(path, "expected an [expected_failures] table of \"test id\" = \"reason\"")
    out = {}
    for test, reason in table.items():
        if "::" not in test:
            raise _fail(path, f"{test!r}: not a test id (file.py::test_name[params])")
        out[test] = _string(path, f"reason of {test!r}", reason)
    return out
