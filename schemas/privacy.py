"""How personal data is kept: phones hashed, addresses masked, never stored in clear (§9)."""

from __future__ import annotations

import hashlib
import hmac
import re

_NON_DIGITS = re.compile(r"\D+")

# A key shorter than this could itself be guessed, and with it every phone.
MIN_KEY_BYTES = 16


def normalize_phone(phone: str) -> str:
    """Digits only, without a leading China country code, so +86 138-0013-8000 == 13800138000."""
    digits = _NON_DIGITS.sub("", phone)
    if digits.startswith("0086"):
        digits = digits[4:]
    elif digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    return digits


class PhoneHasher:
    """Keyed phone hashes: HMAC-SHA256 of the normalised digits under a secret key.

    A phone has ~10^8 values per prefix, so any unkeyed hash of it is reversed by trying them
    all; without the key no candidate's hash can be computed. A previous key, kept after a
    rotation, still finds orders stored under it (`lookup_hashes`); nothing new is hashed
    with it.
    """

    __slots__ = ("_key", "_previous")

    def __init__(self, key: bytes, previous: bytes | None = None) -> None:
        for given in (key, previous):
            if given is not None and len(given) < MIN_KEY_BYTES:
                raise ValueError(f"a phone key needs at least {MIN_KEY_BYTES} bytes")
        self._key = key
        self._previous = previous

    def __repr__(self) -> str:
        return "PhoneHasher(<secret key>)"

    def phone_hash(self, phone: str) -> str:
        """The hash a phone is stored and indexed under (hex, 64 characters)."""
        return _hmac(self._key, phone)

    def lookup_hashes(self, phone: str) -> tuple[str, ...]:
        """Every hash an order placed with `phone` may carry: the current key's first."""
        if self._previous is None:
            return (self.phone_hash(phone),)
        return self.phone_hash(phone), _hmac(self._previous, phone)


def _hmac(key: bytes, phone: str) -> str:
    return hmac.new(key, normalize_phone(phone).encode(), hashlib.sha256).hexdigest()


def mask_phone(phone: str) -> str:
    """A phone as support may see it: first 3 and last 4 digits, e.g. 138****8000."""
    digits = normalize_phone(phone)
    if len(digits) <= 7:
        return "*" * len(digits)
    return digits[:3] + "*" * (len(digits) - 7) + digits[-4:]


def mask_address(address: str) -> str:
    """An address reduced to its first 6 characters (province/city), the rest masked."""
    text = address.strip()
    return text[:6] + ("***" if len(text) > 6 else "")
