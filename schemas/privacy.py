"""How personal data is kept: phones hashed, addresses masked, never stored in clear (§9)."""

from __future__ import annotations

import hashlib
import re

_NON_DIGITS = re.compile(r"\D+")


def normalize_phone(phone: str) -> str:
    """Digits only, without a leading China country code, so +86 138-0013-8000 == 13800138000."""
    digits = _NON_DIGITS.sub("", phone)
    if digits.startswith("0086"):
        digits = digits[4:]
    elif digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    return digits


def phone_hash(phone: str) -> str:
    """A stable, non-reversible key for a phone number (sha256 of its normalised digits)."""
    return hashlib.sha256(("concord-phone:" + normalize_phone(phone)).encode()).hexdigest()


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
