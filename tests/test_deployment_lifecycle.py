"""``Deployment`` cleans up on every way out (``phoenix_ref.testing``).

Its nursery is a real ``async with`` in the entering task: leaving the block
normally, with an error, cancelled, or through a failed start-up stops every
node, closes the listening sockets and removes the temporary directory, and
the original error (not a Trio internal error) reaches the caller.
"""

import socket

import pytest
import trio

from phoenix_ref.testing import Deployment


class Boom(Exception):
    pass


def assert_cleaned_up(d: Deployment, ports: list[int]) -> None:
    assert not d.tmp.exists()
    assert not any(node.up for node in d.nodes.values())
    assert d._sockets == {}
    for port in ports:   # nothing listens any more
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0


async def test_an_error_in_the_body_propagates_and_everything_stops():
    d = Deployment("sockets", ["hs1", "hs2"])
    with pytest.raises(Boom):
        async with d:
            ports = [n.port for n in d.nodes.values()]
            assert all(n.up for n in d.nodes.values()) and d.tmp.exists()
            raise Boom()
    assert_cleaned_up(d, ports)


async def test_a_cancelled_body_stops_everything():
    d = Deployment("sockets", ["hs1"])
    with trio.CancelScope() as scope:
        async with d:
            ports = [d["hs1"].port]
            scope.deadline = trio.current_time() + 0.2   # cancelled once running, however long startup took
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert_cleaned_up(d, ports)


@pytest.mark.parametrize("mode", ["in_process", "sockets"])
async def test_a_failed_start_up_stops_the_started_nodes_and_reraises(monkeypatch, mode):
    d = Deployment(mode, ["hs1", "hs2"])
    real = Deployment._new_homeserver

    def fail_for_hs2(self, node):
        if node.name == "hs2":
            raise Boom("hs2 cannot start")
        return real(self, node)

    monkeypatch.setattr(Deployment, "_new_homeserver", fail_for_hs2)
    with pytest.raises(Boom, match="hs2 cannot start"):
        async with d:
            pytest.fail("the body must not run")
    assert_cleaned_up(d, [n.port for n in d.nodes.values() if n.port])
    assert d._running_cm is None   # it can be entered again


async def test_nodes_cannot_start_outside_the_block():
    d = Deployment("in_process", ["hs1"])
    async with d:
        pass
    with pytest.raises(RuntimeError, match="not running"):
        await d.set_up("hs1")
