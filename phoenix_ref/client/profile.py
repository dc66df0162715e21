"""The user profile a client stores at its AS (``spec/glossary.md#user-profile``):
for now only the display name, encrypted under the user's profile key
(``spec/glossary.md#user-profile-encryption-key``) with AES-128-GCM, a
random nonce in front, and the user id as additional data so that an AS
cannot hand one user's profile out as another's."""

from __future__ import annotations

from ..codec import DecodeError, String, decode, encode, struct
from ..crypto import NN, CryptoError, aead_open, aead_seal, random_bytes
from ..ids import UserId

__all__ = ["UserProfile", "seal_profile", "open_profile", "ProfileError"]


class ProfileError(Exception):
    """A profile that does not open with the key we hold."""


@struct
class UserProfile:
    display_name: String


def _aad(user: UserId) -> bytes:
    return b"phoenix user profile" + encode(user)


def seal_profile(key: bytes, user: UserId, display_name: str) -> bytes:
    nonce = random_bytes(NN)
    return nonce + aead_seal(key, nonce, _aad(user), encode(UserProfile(display_name)))


def open_profile(key: bytes, user: UserId, sealed: bytes) -> str:
    try:
        return decode(UserProfile, aead_open(key, sealed[:NN], _aad(user), sealed[NN:])).display_name
    except (CryptoError, DecodeError):
        raise ProfileError(f"the profile of {user} does not open with the key we hold") from None
