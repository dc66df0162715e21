"""``phoenix-ref``: command line of the reference homeserver.

``phoenix-ref generate-config --domain D --dir DIR [--port P] [--test-ca]``
    Write ``DIR/config.toml``, fresh key material in ``DIR/keys`` (private
    keys mode 0600, see ``keystore.py``) and an empty data directory. With
    ``--test-ca``, also a private test CA (``trustme``) and a certificate for
    ``D``, ``as.D``, ``ds.D`` and ``qs.D``: ``ca.pem`` (+ ``ca-key.pem``) in
    ``--test-ca-dir`` (default DIR; an existing CA there is reused, so several
    homeservers of one lab share it), ``cert.pem`` and ``key.pem`` in DIR.
    ``--peer B=PORT`` adds resolve overrides sending ``B``, ``as.B``, ``ds.B``,
    ``qs.B`` to ``127.0.0.1:PORT`` (labs on one machine).

``phoenix-ref serve --config FILE [--request-log FILE] [--log-format text|json]``
    Serve the homeserver with anycorn over TLS 1.3 (HTTP/2 and 1.1) on Trio.
    Its log goes to stderr, with one line per request served, per federation
    request sent and per outbound delivery attempt
    (:class:`phoenix_ref.http.RequestLog`), as text or, with ``--log-format
    json``, as JSON objects (:mod:`phoenix_ref.logs`). ``--request-log``
    also appends those request lines, as JSON, to a file. With ``[operator]
    metrics_listen`` in the config, the same process answers Prometheus
    scrapes at ``http://ADDRESS:PORT/metrics`` (loopback only, plain HTTP;
    :mod:`phoenix_ref.metrics`).

``phoenix-ref demo [--trace FILE] [--keep]``
    Three homeservers on loopback and a story through them, traced from
    their request logs (``demo.py``).

``phoenix-ref client --state DIR COMMAND``
    A person's client (``client_cli.py``): ``register --domain D``, ``connect``,
    ``accept``, ``create-group``, ``invite``, ``send``, ``read``, ``listen``, …

``phoenix-ref admin --config FILE COMMAND``
    Operator commands on the homeserver's data and keys directories, safe
    while ``serve`` runs (``admin.py``): ``count-users``, ``list-users``,
    ``delete-user``, ``outbound`` (QS-to-QS queues per destination, parked
    senders, dead letters; ``--unpark``), ``keys``, ``rotate-key``,
    ``revoke-intermediate``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import ssl
import sys
from pathlib import Path
from typing import Sequence

from . import admin, client_cli, demo, logs
from .config import Config, ConfigError
from .errors import describe
from .keystore import Keystore, KeystoreError
# provisioning lives in provision.py (the demo uses it too); it is
# re-exported here, where tests, examples and the harness have found it
from .provision import (SERVICES, certificate_names, generate_config, load_or_create_ca,  # noqa: F401
                        write_server_cert)

#: The only TLS version a listener accepts and a client offers:
#: spec/threat_model/stride/security_requirements.md#basic-confidentiality-and-authentication
#: asks for "a unilaterally authenticated TLS 1.3 connection" (docs/decisions.md).
TLS_VERSION = ssl.TLSVersion.TLSv1_3


def server_ssl_context(cert: Path, key: Path, alpn: Sequence[str] = ("h2", "http/1.1")) -> ssl.SSLContext:
    """The server side of every Phoenix listener: TLS 1.3 only, ``cert``/``key``, ALPN."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = TLS_VERSION
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_alpn_protocols(list(alpn))
    ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return ctx


def server_config(config: Config, *, bind: Sequence[str] | None = None, tls: bool = True):
    """The anycorn settings that serve ``config`` (HTTP/2 and 1.1, TLS 1.3 only).

    anycorn's own :meth:`~anycorn.Config.create_ssl_context` allows TLS 1.2,
    so the returned config builds its context with :func:`server_ssl_context`
    instead. ``tls=False`` serves plain HTTP: the operator's loopback metrics
    listener and the test harness's plain-HTTP variant, never the public
    listener of ``phoenix-ref serve``. Raises ConfigError when the
    certificate or key is missing.
    """
    from anycorn import Config as ServerConfig

    class TlsOnlyConfig(ServerConfig):
        def create_ssl_context(self) -> ssl.SSLContext | None:
            if not self.ssl_enabled:
                return None
            return server_ssl_context(Path(self.certfile), Path(self.keyfile), self.alpn_protocols)

    sc = TlsOnlyConfig()
    sc.bind = list(bind or [f"{config.listen_host}:{config.listen_port}"])
    if tls:
        if config.tls_cert is None or config.tls_key is None:
            raise ConfigError("serving needs [tls] cert and key: Phoenix endpoints are TLS-only")
        sc.certfile = str(config.tls_cert)
        sc.keyfile = str(config.tls_key)
    sc.alpn_protocols = ["h2", "http/1.1"]
    sc.accesslog = None
    sc.errorlog = logging.getLogger("anycorn.error")
    sc.graceful_timeout = 2.0
    sc.ssl_handshake_timeout = config.limits.request_timeout_s
    sc.keep_alive_max_requests = config.limits.max_requests_per_connection
    return sc


def metrics_server_config(config: Config):
    """The anycorn settings of the operator listener (``[operator]
    metrics_listen``): plain HTTP/1.1 on its configured address."""
    sc = server_config(config, bind=[config.operator.metrics_listen], tls=False)
    sc.alpn_protocols = ["http/1.1"]
    return sc


async def serve(config: Config, *, homeserver=None, sock=None, tls: bool = True,
                shutdown_trigger=None, task_status=None) -> None:
    """Serve one homeserver with anycorn (on Trio) until ``shutdown_trigger`` returns.

    ``sock`` is an already bound and listening socket to serve on (the test
    harness binds port 0 first); the caller keeps ownership and closes it
    (anycorn gets a duplicate of its descriptor as an ``fd://`` bind and
    closes that one). ``task_status.started()`` is called once the app's
    startup finished and the server listens.

    Why anycorn and not hypercorn: docs/decisions.md, "HTTP server"; what
    the homeserver changes in anycorn: :mod:`phoenix_ref.anycorn_changes`.
    """
    import anycorn
    import trio
    from . import anycorn_changes
    from .homeserver import Homeserver
    anycorn_changes.install()
    hs = homeserver or Homeserver(config)
    bind = [f"fd://{os.dup(sock.fileno())}"] if sock is not None else None
    sc = server_config(config, bind=bind, tls=tls)
    task_status = task_status or trio.TASK_STATUS_IGNORED
    if config.operator.metrics_listen is None:
        await anycorn.serve(hs.asgi, sc, shutdown_trigger=shutdown_trigger, task_status=task_status)
        return
    # the operator listener: its own plain-HTTP server for GET /metrics in
    # this process, listening before the public one starts and stopped when
    # it has stopped (docs/decisions.md, "Metrics on an operator listener")
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(anycorn.serve, hs.metrics_asgi, metrics_server_config(config)))
        await anycorn.serve(hs.asgi, sc, shutdown_trigger=shutdown_trigger, task_status=task_status)
        nursery.cancel_scope.cancel()


def _parse_peer(text: str) -> tuple[str, int]:
    domain, sep, port = text.partition("=")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--peer expects DOMAIN=PORT, got {text!r}")
    return domain, int(port)


def build_parser() -> argparse.ArgumentParser:
    """The ``phoenix-ref`` command line: one sub-parser per command."""
    parser = argparse.ArgumentParser(prog="phoenix-ref", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate-config", help="write a config, key material and (optionally) a test CA")
    g.add_argument("--domain", required=True, help="the homeserver's domain D (it serves as.D, ds.D, qs.D)")
    g.add_argument("--dir", required=True, type=Path,
                   help="where to write config.toml, keys/ (private keys) and data/; keep it out of any "
                        "repository (the README's lab/ is git-ignored)")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    g.add_argument("--port", type=int, default=8443, help="TCP port to listen on (default: %(default)s)")
    g.add_argument("--test-ca", action="store_true", help="issue a certificate from a private test CA")
    g.add_argument("--test-ca-dir", type=Path, help="where the test CA lives (default: --dir)")
    g.add_argument("--peer", action="append", type=_parse_peer, default=[],
                   help="DOMAIN=PORT: resolve DOMAIN and its service hosts to 127.0.0.1:PORT")
    g.add_argument("--cert", type=Path,
                   help="PEM certificate chain valid for D, as.D, ds.D and qs.D (instead of --test-ca)")
    g.add_argument("--key", type=Path, help="PEM private key of --cert")
    g.add_argument("--ca-bundle", type=Path,
                   help="PEM trust anchors for outgoing federation (default: the system store)")
    s = sub.add_parser("serve", help="serve a homeserver over TLS")
    s.add_argument("--config", required=True, type=Path, help="the homeserver's config.toml")
    s.add_argument("--request-log", type=Path, metavar="FILE",
                   help="also append the request lines (one per request served, per federation request "
                        "sent, per outbound delivery attempt) as JSON to FILE; see phoenix_ref/http.py RequestLog")
    s.add_argument("--log-format", choices=logs.FORMATS, default="text",
                   help="how the log on stderr is written: text lines or one JSON object per line "
                        "(default: %(default)s; see phoenix_ref/logs.py)")
    admin.add_parser(sub)
    demo.add_parser(sub)
    client_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, server=None) -> int:
    """The command line. ``server`` replaces :func:`serve` for the ``serve``
    command (same signature): ``benchmarks/lean_server.py`` passes a lean
    listener to measure what anycorn costs."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "client":
        return client_cli.run(args)
    # the demo tells its own story; the libraries' INFO lines would drown it
    logging.basicConfig(level=logging.WARNING if args.command == "demo" else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.command == "generate-config":
            cfg = generate_config(args.dir, args.domain, port=args.port, host=args.host,
                                  test_ca=args.test_ca, test_ca_dir=args.test_ca_dir,
                                  peers=dict(args.peer), cert=args.cert, key=args.key,
                                  ca_bundle=args.ca_bundle)
            print(f"wrote {args.dir / 'config.toml'} for {cfg.domain} (keys in {cfg.keys_dir})")
            return 0
        if args.command == "admin":
            print(admin.run(args))
            return 0
        if args.command == "demo":
            return demo.run(args)
        import trio
        cfg = Config.load(args.config)
        Keystore.load(cfg.keys_dir, cfg.domain)   # fail early and clearly
        server_config(cfg)
        from .homeserver import Homeserver
        from .http import RequestLog
        from .signals import until_stop_signal
        logs.configure(args.log_format, domain=cfg.domain)
        request_log = RequestLog(args.request_log, cfg.domain, logger=logging.getLogger(logs.REQUEST_LOGGER))
        metrics = (f"; metrics at http://{cfg.operator.metrics_listen}/metrics"
                   if cfg.operator.metrics_listen else "")
        print(f"serving {cfg.domain} on https://{cfg.listen_host}:{cfg.listen_port} "
              f"(hosts {', '.join(certificate_names(cfg.domain))}){metrics}", flush=True)
        hs = Homeserver(cfg, request_log=request_log)
        try:
            trio.run(functools.partial(server or serve, cfg, homeserver=hs, shutdown_trigger=until_stop_signal))
        except BaseException as e:
            if hs.app.startup_error is not None:        # its traceback is in the log already
                print(f"phoenix-ref: {cfg.domain} did not start: {describe(hs.app.startup_error)}",
                      file=sys.stderr)
                return 1
            # Ctrl-C reaches the tasks of two servers: it may come out wrapped in their nurseries
            only_ctrl_c = isinstance(e, BaseExceptionGroup) and e.split(KeyboardInterrupt)[1] is None
            if not only_ctrl_c:
                raise
        finally:
            request_log.close()
        return 0
    except (ConfigError, KeystoreError, FileNotFoundError, admin.AdminError) as e:
        print(f"phoenix-ref: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
