"""A target for the conformance suite on this machine: three ``phoenix-ref
serve`` processes and the deployment file that describes them.

``python -m phoenix_ref.target_lab DIR [--limit KEY=VALUE]… [--double DOMAIN=MODULE]``

1. For ``a.example``, ``b.example`` and ``c.example``: ``phoenix-ref
   generate-config --test-ca`` (one test CA in ``DIR/ca``, free loopback
   ports, ``--peer`` overrides so they federate), each ``--limit`` written
   into the ``[limits]`` table of every ``config.toml``.
2. ``phoenix-ref serve`` per homeserver (``python -m phoenix_ref.cli serve``;
   with ``--double DOMAIN=MODULE``, ``python -m MODULE serve`` for that one:
   a deliberately wrong homeserver, see ``spec_tests/doubles/``), its output
   in ``DIR/<domain>/serve.log``.
3. Once each QS answers over TLS, ``DIR/target.toml``: the deployment file
   for ``pytest --phoenix-target DIR/target.toml spec_tests``, with the
   limits declared. Then it prints ``ready DIR/target.toml`` and waits.

SIGTERM or SIGINT (and, with ``--until-stdin-closes``, the end of its
standard input: a parent that went away) stop the homeservers and end it. It is how the repository's own test of target mode
(``tests/test_target_mode.py``) gets a target, and a way to try target mode
by hand (docs/conformance.md).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from .config import Limits
from .shared import REPO_ROOT

DOMAINS = {"hs1": "a.example", "hs2": "b.example", "hs3": "c.example"}
READY_TIMEOUT_S = 60.0


class LabError(RuntimeError):
    """A homeserver of the lab did not come up (the message has its log's end)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_limit(text: str) -> tuple[str, int | float]:
    """``KEY=VALUE`` of a ``phoenix_ref.config.Limits`` field, the value checked."""
    key, sep, value = text.partition("=")
    fields = Limits.__dataclass_fields__
    if not sep or key not in fields:
        raise argparse.ArgumentTypeError(f"--limit expects KEY=VALUE with KEY one of Limits' fields, got {text!r}")
    try:
        number: int | float = int(value) if fields[key].type in (int, "int") else float(value)
        Limits(**{key: number})
    except (ValueError, Exception) as e:   # noqa: BLE001 - the message names the key and the range
        raise argparse.ArgumentTypeError(f"--limit {text}: {e}") from None
    return key, number


def set_limits(config_toml: Path, limits: dict[str, int | float]) -> None:
    """Rewrite ``KEY = …`` lines of the ``[limits]`` table of a generated config."""
    text = config_toml.read_text(encoding="utf-8")
    head, sep, rest = text.partition("\n[limits]\n")
    table, nxt, tail = rest.partition("\n[")
    for key, value in limits.items():
        table, n = re.subn(rf"^{key} = .*$", f"{key} = {value!r}", table, flags=re.M)
        if n != 1:
            raise LabError(f"{config_toml}: no {key} in [limits]")
    config_toml.write_text(head + sep + table + nxt + tail, encoding="utf-8")


def qs_answers(port: int, domain: str, ca: Path) -> bool:
    """True once ``qs.<domain>`` on ``port`` answers GET qs_verifying_key with 200 over TLS."""
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
                ctx.wrap_socket(raw, server_hostname=f"qs.{domain}") as tls:
            tls.sendall(f"GET /phoenix/v1/qs_verifying_key HTTP/1.1\r\nHost: qs.{domain}\r\n"
                        "Connection: close\r\n\r\n".encode())
            return tls.recv(64).startswith(b"HTTP/1.1 200")
    except (OSError, ssl.SSLError):
        return False


def deployment_file(directory: Path, ports: dict[str, int], limits: dict[str, int | float]) -> str:
    lines = ["# written by python -m phoenix_ref.target_lab", "[target]",
             'description = "three phoenix-ref serve processes on loopback (phoenix_ref.target_lab)"', ""]
    if limits:
        lines += ["[limits]"] + [f"{k} = {v!r}" for k, v in limits.items()] + [""]
    for name, domain in DOMAINS.items():
        lines += ["[[homeserver]]", f'name = "{name}"', f'domain = "{domain}"',
                  f'address = "127.0.0.1:{ports[domain]}"', f'ca = "{directory / "ca" / "ca.pem"}"', ""]
    return "\n".join(lines)


class Lab:
    """The three homeservers (module docstring); ``start`` then ``stop``."""

    def __init__(self, directory: Path, limits: dict[str, int | float] | None = None,
                 doubles: dict[str, str] | None = None):
        self.dir = Path(directory).resolve()
        self.limits = dict(limits or {})
        self.doubles = dict(doubles or {})
        unknown = set(self.doubles) - set(DOMAINS.values())
        if unknown:
            raise LabError(f"--double: no homeserver {', '.join(sorted(unknown))} (have {', '.join(DOMAINS.values())})")
        self.ports = {d: free_port() for d in DOMAINS.values()}
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), self.env.get("PYTHONPATH")]))

    def _generate(self, domain: str) -> None:
        cmd = [sys.executable, "-m", "phoenix_ref.cli", "generate-config", "--domain", domain,
               "--dir", str(self.dir / domain), "--port", str(self.ports[domain]),
               "--test-ca", "--test-ca-dir", str(self.dir / "ca")]
        for other, port in self.ports.items():
            if other != domain:
                cmd += ["--peer", f"{other}={port}"]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise LabError(f"generate-config for {domain} failed: {done.stderr.strip()}")
        if self.limits:
            set_limits(self.dir / domain / "config.toml", self.limits)

    def start(self) -> Path:
        """Configure and start the three homeservers; return the deployment file once all answer."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for domain in self.ports:
            self._generate(domain)
        for domain in self.ports:
            module = self.doubles.get(domain, "phoenix_ref.cli")
            with open(self.dir / domain / "serve.log", "ab") as log:
                self.procs[domain] = subprocess.Popen(
                    [sys.executable, "-m", module, "serve", "--config", str(self.dir / domain / "config.toml")],
                    stdout=log, stderr=subprocess.STDOUT, env=self.env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = set(self.ports)
        while waiting:
            for domain in sorted(waiting):
                if self.procs[domain].poll() is not None:
                    raise LabError(f"{domain} exited: {self.log(domain)}")
                if qs_answers(self.ports[domain], domain, self.dir / "ca" / "ca.pem"):
                    waiting.discard(domain)
            if waiting and time.monotonic() > deadline:
                raise LabError(f"{', '.join(sorted(waiting))} did not answer within {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.1)
        path = self.dir / "target.toml"
        path.write_text(deployment_file(self.dir, self.ports, self.limits), encoding="utf-8")
        return path

    def log(self, domain: str) -> str:
        return (self.dir / domain / "serve.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phoenix_ref.target_lab", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="a new folder for the configs, keys, logs and target.toml")
    parser.add_argument("--limit", action="append", type=parse_limit, default=[], metavar="KEY=VALUE",
                        help="a [limits] value for every homeserver, declared in target.toml too")
    parser.add_argument("--double", action="append", default=[], metavar="DOMAIN=MODULE",
                        help="serve DOMAIN with `python -m MODULE serve` (a deliberately wrong homeserver)")
    parser.add_argument("--until-stdin-closes", action="store_true",
                        help="also stop when standard input ends (for a parent process holding a pipe)")
    args = parser.parse_args(argv)
    doubles = dict(d.partition("=")[::2] for d in args.double)
    if (args.dir / "target.toml").exists():
        parser.error(f"{args.dir} holds a lab already; give a new folder")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    lab = Lab(args.dir, dict(args.limit), doubles)
    try:
        path = lab.start()
        print(f"ready {path}", flush=True)
        if args.until_stdin_closes:
            threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        while not stop.wait(0.5):
            pass
        return 0
    except LabError as e:
        print(f"target_lab: {e}", file=sys.stderr)
        return 1
    finally:
        lab.stop()


if __name__ == "__main__":
    sys.exit(main())
