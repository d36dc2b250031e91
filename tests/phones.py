"""The phone hasher of the tests: a fixed key, so expected hashes can be written down."""

from __future__ import annotations

from schemas.privacy import PhoneHasher

PHONES = PhoneHasher(b"tests-only-phone-key-never-in-production")
