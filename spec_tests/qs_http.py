"""Helpers of the QS conformance tests (``spec_tests/test_qs_*.py``).

* :func:`qs_client` — a :class:`~phoenix_ref.client.qs_client.QsClient`
  whose Privacy Pass tokens are real: a user registers at the domain's AS
  over HTTPS and its :class:`~phoenix_ref.client.session.ClientSession`
  fetches tokens by *token issuance*. This is the only place where tokens
  get attached.
* :func:`message` — a FanOutMessage with an application message of a group.
* :func:`read_all` — dequeue over HTTP until a client has ``n`` messages.
"""

from __future__ import annotations

import trio

from phoenix_ref.client.qs_client import QsClient, QsIdentity
from phoenix_ref.client.session import ClientSession
from phoenix_ref.codec import decode
from phoenix_ref.ids import GroupId
from phoenix_ref.queuing import messages as m
from tests.qs_helpers import application_message

GROUP = GroupId.random("a.example")


async def qs_client(d, http, domain: str = "a.example") -> QsClient:
    """A QS client for ``domain`` with its own Privacy Pass wallet (see module docstring)."""
    session = await ClientSession.register(http, domain, clock=d.clock)
    return QsClient(http, now_ms=d.clock.now_ms, privacy_pass=session.token)


def message(configs, body: bytes, group: GroupId = GROUP) -> m.FanOutMessage:
    return m.FanOutMessage(list(configs), application_message(group, body))


def body_of(plaintext: bytes) -> bytes:
    """The application body inside an enqueued MessageContent."""
    content = decode(m.MessageContent, plaintext)
    return content.message.private_message.ciphertext


async def read_all(qs: QsClient, me: QsIdentity, n: int, *, timeout: float = 30) -> list[bytes]:
    """Dequeue (HTTP) until ``me`` has read ``n`` messages; their bodies in order."""
    got: list[bytes] = []
    with trio.fail_after(timeout):
        while len(got) < n:
            got += [body_of(p) for p in await qs.receive(me)]
            if len(got) < n:
                await trio.sleep(0.05)
    return got
