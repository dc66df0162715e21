"""phoenix_ref's compact MLS (RFC 9420), ciphersuite 1 only.

Modules, each citing the RFC sections it implements:

* ``messages``     — every wire struct (§§5–12)
* ``extensions``   — typed extensions, RFC ones (§17.3) and the Phoenix spec's own
* ``tree_math``    — array representation of the left-balanced tree (§4.1, App. C)
* ``tree``         — the ratchet tree: nodes, resolution, hashes, validation,
  leaf node validation (§7, §7.3, §12.4.3.1)
* ``treekem``      — path secrets, UpdatePath encryption / decryption (§7.4–§7.6)
* ``key_schedule`` — epoch secrets, exporter, external init (§8, §8.3, §8.5–§8.7)
* ``psk``          — PSK ids and psk_secret (§8.4, §12.1.4)
* ``secret_tree``  — per-sender ratchets and sender-data keys (§9, §6.3.2)
* ``transcript``   — transcript hashes, confirmation and membership tags (§8.2, §6.1, §6.2)
* ``framing``      — PublicMessage / PrivateMessage protection (§6)
* ``keypackage``   — KeyPackage creation and validation (§10, §10.1)
* ``welcome``      — Welcome and GroupInfo (§12.4.3, §12.4.3.1)
* ``commit``       — proposal lists and the public part of a Commit (§12.1–§12.4.2)
* ``group``        — a member's view: create, propose, commit, process, join (§11, §12)
* ``public_group`` — the Delivery Service's public view of a group (§12.4.2)

Every error raised for bad MLS input derives from :class:`MlsError`.
"""

from __future__ import annotations


class MlsError(Exception):
    """Base class for every MLS-level failure (bad structure, failed check)."""


__all__ = ["MlsError"]
