"""QS handlers for the QS rows of the endpoint table (:mod:`phoenix_ref.endpoints`)."""

from __future__ import annotations

from ..federation.keys import QsQueueConfigEncryptionKeyResponse, QsVerifyingKeyResponse
from ..http import Call, Handler


def handlers(hs) -> dict[str, Handler]:
    async def qs_verifying_key(call: Call) -> QsVerifyingKeyResponse:
        """``spec/queuing_service.md#fetch-qs-verifying-key``: current key first."""
        return QsVerifyingKeyResponse([k.public for k in hs.keystore.qs_signing_keys])

    async def queue_config_encryption_key(call: Call) -> QsQueueConfigEncryptionKeyResponse:
        """``spec/queuing_service.md#fetch-queue-config-encryption-key``: current key first."""
        return QsQueueConfigEncryptionKeyResponse([k.public for k in hs.keystore.qs_queue_config_keys])

    return {"qs_verifying_key": qs_verifying_key,
            "queue_config_encryption_key": queue_config_encryption_key}
