"""At-rest encryption of the QS-to-QS queues (``spec/queuing_service.md#qs-state``).

The spec gives the QS-to-QS queues "the same queue encryption key material
… as the client queues". A client queue is read by its owner, who holds a
key the QS does not; an outbound queue is read back by the QS itself, so
whatever opens it must be at hand to the QS. phoenix_ref keeps that secret
out of the database: 32 random bytes per key in the homeserver's keys
directory (``qs_outbound-<n>.key``, :mod:`phoenix_ref.keystore`), current
first (``docs/decisions.md``, outbound queue encryption).

Every stored payload is sealed on its own with AES-128-GCM (the
ciphersuite's AEAD, :func:`phoenix_ref.crypto.aead_seal`) under a key
derived from the secret, with a fresh random nonce; the additional data
binds the destination and the message id, so a row copied onto another
destination or message does not open. A row names the key that sealed it
by an 8-byte id derived from the secret, so rotated keys still open the
rows they sealed while their files exist.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..codec import VarBytes, encode, struct
from ..crypto import NK, NN, CryptoError, aead_open, aead_seal, kdf_expand, random_bytes

__all__ = ["OutboundKeys", "OutboundKeyError", "SECRET_LEN", "SEAL_OVERHEAD"]

#: Length of an outbound queue secret in the keystore.
SECRET_LEN = 32
KEY_ID_LEN = 8
#: Bytes a sealed payload has beyond the payload: the nonce and the AES-GCM tag.
SEAL_OVERHEAD = NN + 16
_KEY_INFO = b"phoenix_ref outbound queue at rest: key"
_ID_INFO = b"phoenix_ref outbound queue at rest: key id"


class OutboundKeyError(CryptoError):
    """A stored outbound payload cannot be opened: its key is not held, or
    it does not authenticate (wrong key, a changed row)."""


@struct
class _Aad:
    destination: VarBytes
    message_id: VarBytes


class OutboundKeys:
    """The outbound queue keys of one homeserver, current first."""

    def __init__(self, secrets: Sequence[bytes]):
        if not secrets:
            raise ValueError("at least one outbound queue secret is needed")
        self._keys: dict[bytes, bytes] = {}
        for secret in secrets:
            if len(secret) != SECRET_LEN:
                raise ValueError(f"an outbound queue secret has {SECRET_LEN} bytes, not {len(secret)}")
            self._keys.setdefault(kdf_expand(secret, _ID_INFO, KEY_ID_LEN), kdf_expand(secret, _KEY_INFO, NK))
        self.current_id = next(iter(self._keys))

    @staticmethod
    def _aad(destination: str, message_id: bytes) -> bytes:
        return encode(_Aad(destination.encode(), message_id))

    def seal(self, destination: str, message_id: bytes, payload: bytes) -> tuple[bytes, bytes]:
        """``(key id, nonce || ciphertext)`` of ``payload`` under the current key."""
        nonce = random_bytes(NN)
        key = self._keys[self.current_id]
        return self.current_id, nonce + aead_seal(key, nonce, self._aad(destination, message_id), payload)

    def open(self, key_id: bytes, destination: str, message_id: bytes, sealed: bytes) -> bytes:
        """The payload :meth:`seal` sealed; :class:`OutboundKeyError` if it cannot be opened."""
        key = self._keys.get(bytes(key_id))
        if key is None:
            raise OutboundKeyError(f"an outbound item for {destination} was sealed with key id "
                                   f"{bytes(key_id).hex()}, which the keystore does not hold")
        try:
            return aead_open(key, sealed[:NN], self._aad(destination, message_id), sealed[NN:])
        except CryptoError:
            raise OutboundKeyError(f"an outbound item for {destination} does not authenticate under key id "
                                   f"{bytes(key_id).hex()} (wrong key or changed row)") from None
