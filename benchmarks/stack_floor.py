"""What one empty HTTPS round trip costs, server stack and homeserver apart, in one run.

The delivery bench (``delivery_bench.py``) gives its CPU figures also as
multiples of a *floor*: one ``GET /.well-known/phoenix`` through a running
homeserver. This script splits that floor in three, so a reader can tell
what a homeserver can still win, what the HTTP server costs, and what the
pinned libraries (GUIDE §6) cost whatever is built on them. Three servers,
each its own process, each
serving TLS 1.3 with the settings ``phoenix-ref serve`` uses
(``cli.server_config``: the same certificate, timeouts and ALPN):

* ``lean``    no server framework: the ``raw`` row's app on
  ``lean_server.py``, a Trio TLS listener that feeds the bytes to the
  sans-IO protocol libraries the pinned stack uses (``h2`` and ``h11``)
  and calls the app, with nothing else. It is close to what any server
  built on these libraries must pay, so ``raw`` minus ``lean`` is what
  anycorn's generality costs (its tasks per request, AnyIO's TLS wrapper,
  timeouts, limits and the rest of what a real server needs) — the most
  that a server of the project's own could win back;
* ``raw``     anycorn (on Trio) with a bare ASGI app of a dozen lines that
  answers every request with a counter: TLS, HTTP and the server loop,
  nothing else;
* ``phoenix`` ``phoenix-ref serve``, ``GET /.well-known/phoenix``: adds the
  homeserver's application (:mod:`phoenix_ref.asgi`: Host normalising and
  routing, request and response objects), request log (one JSON line per
  request, as ``serve`` logs by default), metrics and its view.

(Until the homeserver left Quart-Trio, another row served a one-route
Quart-Trio app; docs/decisions.md, "HTTP layer on plain ASGI", keeps what it
measured.)

Each is asked ``--requests`` (1000) times, one request at a time on one
kept-alive connection, once over HTTP/2 and once over HTTP/1.1, from this
process through the project's client transport (httpx, ``HttpsTransport``).
Per request it prints the server's CPU (utime + stime of its process, from
``/proc``) and the client's (this process, ``time.process_time``), and the
server figure as a multiple of the ``lean`` server over HTTP/1.1 — the
least any request over TLS with these libraries costs on this machine. The
lean and raw servers count the requests they answer, so a figure is never
divided by requests that did not arrive.

Figures depend on the machine and what else runs on it; the ratios between
rows of one run are what to compare (GUIDE: performance claims are ratios
measured in one run).

    python benchmarks/stack_floor.py [--requests N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import trio  # noqa: E402

from phoenix_ref.config import Config, Limits  # noqa: E402
from phoenix_ref.demo import free_ports, stop_processes  # noqa: E402
from phoenix_ref.federation.client import client_ssl_context, https_transport  # noqa: E402
from phoenix_ref.provision import generate_config  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from delivery_bench import BenchFailed, process_cpu_s, wait_answering  # noqa: E402
from lean_server import serve_asgi  # noqa: E402

DOMAIN = "a.example"
SERVERS = ("lean", "raw", "phoenix")
PROTOCOLS = ("h2", "http/1.1")
WARMUP = 20


# --- the raw server (run as ``stack_floor.py --serve-raw CONFIG PORT``) ---------------------------

def raw_app():
    """A bare ASGI app: every request gets the number of requests so far."""
    served = 0

    async def app(scope, receive, send):
        nonlocal served
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        served += 1
        body = str(served).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    return app


def serve_raw(config_path: Path, port: int) -> None:
    """Serve :func:`raw_app` as ``phoenix-ref serve`` would serve a homeserver."""
    import anyio
    import anycorn

    from phoenix_ref.cli import server_config
    sc = server_config(Config.load(config_path), bind=[f"127.0.0.1:{port}"])
    sc.accesslog = None
    app = raw_app()
    anyio.run(anycorn.serve, app, sc, backend="trio")


# --- the lean server (run as ``stack_floor.py --serve-lean CONFIG PORT``) -------------------------

def serve_lean(config_path: Path, port: int) -> None:
    """Serve :func:`raw_app` on :func:`lean_server.serve_asgi`, over the TLS
    context ``phoenix-ref serve`` uses: the raw row's app with nothing
    between Trio's TLS stream and the protocol libraries."""
    from phoenix_ref.cli import server_ssl_context
    config = Config.load(config_path)
    trio.run(partial(serve_asgi, raw_app(), server_ssl_context(config.tls_cert, config.tls_key), port))


# --- the measurement --------------------------------------------------------------------------------

@dataclass
class Row:
    server: str
    protocol: str
    requests: int
    server_cpu_ms: float          # per request
    client_cpu_ms: float          # per request
    x_lean_h1: float = 0.0        # server_cpu_ms / that of lean over HTTP/1.1


class Servers:
    """The server processes in ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.ports = dict(zip(SERVERS, free_ports(len(SERVERS))))
        self.procs: dict[str, subprocess.Popen] = {}
        self.config = generate_config(root / DOMAIN, DOMAIN, port=self.ports["phoenix"], test_ca=True,
                                      test_ca_dir=root / "ca",
                                      limits=Limits(max_requests_per_connection=10 ** 9))

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        config = str(self.root / DOMAIN / "config.toml")
        for kind in SERVERS:
            if kind == "phoenix":
                argv = [sys.executable, "-m", "phoenix_ref.cli", "serve", "--config", config]
            else:
                argv = [sys.executable, __file__, f"--serve-{kind}", config, str(self.ports[kind])]
            with open(self.root / f"{kind}.log", "ab") as out:
                self.procs[kind] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def client(self, kind: str, protocol: str) -> httpx.AsyncClient:
        resolve = {DOMAIN: f"127.0.0.1:{self.ports[kind]}"}
        transport = https_transport(client_ssl_context(self.root / "ca" / "ca.pem"), resolve,
                                    http2=protocol == "h2")
        return httpx.AsyncClient(transport=transport, trust_env=False, timeout=30.0)

    def tail(self, kind: str) -> str:
        text = (self.root / f"{kind}.log").read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-5:])

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        for kind in SERVERS:
            async with self.client(kind, "http/1.1") as http:
                async def up() -> bool:
                    return (await http.get(f"https://{DOMAIN}/.well-known/phoenix")).status_code == 200
                await wait_answering(f"the {kind} server", self.procs[kind], up, deadline,
                                     lambda kind=kind: self.tail(kind))

    async def measure(self, kind: str, protocol: str, n: int) -> Row:
        url = f"https://{DOMAIN}/.well-known/phoenix"
        want = "HTTP/2" if protocol == "h2" else "HTTP/1.1"
        pid = self.procs[kind].pid
        async with self.client(kind, protocol) as http:
            for _ in range(WARMUP):           # the handshake and first requests are not counted
                (await http.get(url)).raise_for_status()
            first = last = None
            await trio.sleep(0.3)             # let the server go idle
            server0, client0 = process_cpu_s(pid), time.process_time()
            for _ in range(n):
                resp = await http.get(url)
                resp.raise_for_status()
                if resp.http_version != want:
                    raise SystemExit(f"stack floor: {kind} answered over {resp.http_version}, not {want}")
                last = resp.text
                first = first or last
            client1 = time.process_time()
            await trio.sleep(0.3)             # the tail of the last request (its log line, …)
            server1 = process_cpu_s(pid)
        if kind != "phoenix" and int(last) - int(first) + 1 != n:
            raise SystemExit(f"stack floor: {kind} counted {int(last) - int(first) + 1} requests, not {n}")
        return Row(kind, protocol, n, (server1 - server0) * 1000 / n, (client1 - client0) * 1000 / n)

    def stop(self) -> None:
        stop_processes(self.procs.values())


async def run(servers: Servers, n: int) -> list[Row]:
    servers.start()
    await servers.wait_ready()
    rows = []
    for protocol in PROTOCOLS:
        for kind in SERVERS:
            rows.append(await servers.measure(kind, protocol, n))
    base = next(r for r in rows if r.server == "lean" and r.protocol == "http/1.1").server_cpu_ms
    for r in rows:
        r.x_lean_h1 = r.server_cpu_ms / base if base else float("nan")
    return rows


def table(rows: list[Row]) -> list[str]:
    out = [f"{'server':<8} {'protocol':<9} {'requests':>8} {'server CPU ms':>14} {'×lean h1':>9} "
           f"{'client CPU ms':>14}"]
    for r in rows:
        out.append(f"{r.server:<8} {r.protocol:<9} {r.requests:>8} {r.server_cpu_ms:>14.3f} "
                   f"{r.x_lean_h1:>9.2f} {r.client_cpu_ms:>14.3f}")
    return out


def main(argv: list[str]) -> int:
    serve = {"--serve-raw": serve_raw, "--serve-lean": serve_lean}.get(argv[0] if argv else "")
    if serve is not None:
        serve(Path(argv[1]), int(argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=1000, help="requests per server and protocol (default 1000)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the rows to FILE as JSON")
    args = ap.parse_args(argv)
    if args.requests < 1:
        ap.error("--requests must be at least 1")
    root = Path(tempfile.mkdtemp(prefix="phoenix-floor-"))
    print(f"stack floor: {args.requests} requests per server and protocol; machine: {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}", flush=True)
    servers = Servers(root)
    try:
        rows = trio.run(run, servers, args.requests)
    except BenchFailed as e:
        print(f"stack floor: FAILED: {e}")
        return 1
    finally:
        servers.stop()
        shutil.rmtree(root, ignore_errors=True)
    for line in table(rows):
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps({"requests": args.requests, "rows": [asdict(r) for r in rows]},
                                        indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
