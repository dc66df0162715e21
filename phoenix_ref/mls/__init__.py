"""phoenix_ref's compact MLS (RFC 9420), ciphersuite 1 only.

Modules, each citing the RFC sections it implements:

* ``messages``   — every wire struct (RFC 9420 §§5–12, Appendix of structs)
* ``extensions`` — typed extensions, RFC ones and the Phoenix spec's own
* ``tree_math``  — array representation of the left-balanced tree (§4.1, App. C)
* ``tree``       — the ratchet tree: nodes, resolution, hashes, validation (§7)
* ``treekem``    — path secrets, UpdatePath encryption / decryption (§7.4–§7.7)

Every error raised for bad MLS input derives from :class:`MlsError`.
"""

from __future__ import annotations


class MlsError(Exception):
    """Base class for every MLS-level failure (bad structure, failed check)."""


__all__ = ["MlsError"]
