"""A homeserver's directory made from nothing: config, key material, and
certificates from a private test CA (``phoenix-ref generate-config``; the
options are described in ``cli.py``). Used by the command line, the demo
(``demo.py``) and the test harness (``testing.py``)."""

from __future__ import annotations

import os
from pathlib import Path

from .clock import Clock
from .config import Config, ConfigError
from .keystore import Keystore, KeystoreError

SERVICES = ("as", "ds", "qs")


def certificate_names(domain: str) -> list[str]:
    return [domain] + [f"{s}.{domain}" for s in SERVICES]


def load_or_create_ca(ca_dir: Path):
    """The lab CA in ``ca_dir`` (``ca.pem``, ``ca-key.pem``), created if absent."""
    import trustme
    ca_dir.mkdir(parents=True, exist_ok=True)
    cert, key = ca_dir / "ca.pem", ca_dir / "ca-key.pem"
    if cert.exists() and key.exists():
        return trustme.CA.from_pem(cert.read_bytes(), key.read_bytes())
    ca = trustme.CA(organization_name="phoenix-ref test CA")
    ca.cert_pem.write_to_path(str(cert))
    _write_private(key, ca.private_key_pem.bytes())
    return ca


def write_server_cert(ca, domain: str, out_dir: Path) -> tuple[Path, Path]:
    """Issue a certificate for ``domain`` and its service hosts; write cert.pem, key.pem."""
    leaf = ca.issue_cert(*certificate_names(domain))
    cert, key = out_dir / "cert.pem", out_dir / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    _write_private(key, leaf.private_key_pem.bytes())
    return cert, key


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def generate_config(out_dir: Path, domain: str, *, port: int = 8443, host: str = "127.0.0.1",
                    test_ca: bool = False, test_ca_dir: Path | None = None,
                    peers: dict[str, int] | None = None, cert: Path | None = None,
                    key: Path | None = None, ca_bundle: Path | None = None,
                    now_ms: int | None = None, **overrides) -> Config:
    """Create a homeserver directory (see module docstring); return its Config.

    Raises ConfigError if ``out_dir`` already holds a config or key material.
    ``overrides`` are further :class:`Config` fields (tests, labs).
    """
    out_dir = Path(out_dir).resolve()
    cfg_path = out_dir / "config.toml"
    if cfg_path.exists():
        raise ConfigError(f"{cfg_path} exists; refusing to overwrite it")
    out_dir.mkdir(parents=True, exist_ok=True)
    if test_ca:
        ca = load_or_create_ca(Path(test_ca_dir or out_dir).resolve())
        cert, key = write_server_cert(ca, domain, out_dir)
        ca_bundle = Path(test_ca_dir or out_dir).resolve() / "ca.pem"
    resolve = dict(overrides.pop("resolve", {}))
    for peer, peer_port in (peers or {}).items():
        for name in certificate_names(peer):
            resolve[name] = f"127.0.0.1:{peer_port}"
    config = Config(domain=domain, data_dir=out_dir / "data", keys_dir=out_dir / "keys",
                    listen_host=host, listen_port=port, tls_cert=cert, tls_key=key,
                    ca_bundle=ca_bundle, resolve=resolve, **overrides)
    try:
        Keystore.create(config.keys_dir, config.domain, now_ms if now_ms is not None else Clock().now_ms())
    except KeystoreError as e:
        raise ConfigError(str(e)) from None
    config.data_dir.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(config.to_toml(base=out_dir), encoding="utf-8")
    return config
