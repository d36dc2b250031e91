"""Phone hashes are keyed: without the key nobody can recompute one, with it lookups still match."""

from __future__ import annotations

import hashlib
import hmac
import stat
from pathlib import Path

import pytest

from schemas.privacy import PhoneHasher
from schemas.settings import Settings
from streams.phone_key import KEY_FILE, phone_key

DIGITS = "13800138000"
KEY = b"a-key-of-at-least-sixteen-bytes"
OTHER_KEY = b"another-key-of-sixteen-bytes"


def test_the_hash_is_hmac_sha256_of_the_digits_under_the_key() -> None:
    hashed = PhoneHasher(KEY).phone_hash("+86 138-0013-8000")
    assert hashed == hmac.new(KEY, DIGITS.encode(), hashlib.sha256).hexdigest()
    # One number however it is written.
    for written in (DIGITS, "138 0013 8000", "0086 13800138000", "+8613800138000"):
        assert PhoneHasher(KEY).phone_hash(written) == hashed


def test_without_the_key_the_stored_value_cannot_be_recomputed() -> None:
    stored = PhoneHasher(KEY).phone_hash(DIGITS)
    # The old public formula (a fixed salt anyone could try 10^8 numbers under) ...
    assert stored != hashlib.sha256(("concord-phone:" + DIGITS).encode()).hexdigest()
    # ... and any other key give other values.
    assert stored != PhoneHasher(OTHER_KEY).phone_hash(DIGITS)
    assert stored != hashlib.sha256(DIGITS.encode()).hexdigest()


def test_a_previous_key_still_finds_what_was_stored_under_it() -> None:
    before = PhoneHasher(OTHER_KEY).phone_hash(DIGITS)
    rotated = PhoneHasher(KEY, previous=OTHER_KEY)
    assert rotated.phone_hash(DIGITS) == PhoneHasher(KEY).phone_hash(DIGITS)  # new rows: new key
    assert rotated.lookup_hashes(DIGITS) == (rotated.phone_hash(DIGITS), before)
    assert PhoneHasher(KEY).lookup_hashes(DIGITS) == (rotated.phone_hash(DIGITS),)


def test_short_keys_are_refused_and_the_key_is_never_shown() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        PhoneHasher(b"short")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        PhoneHasher(KEY, previous=b"short")
    assert KEY.decode() not in repr(PhoneHasher(KEY))


def test_without_a_key_setting_one_is_generated_once_private_and_kept(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = phone_key(settings)
    path = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.origin == f"generated in {path.resolve()} (this worker only)"
    kept = path.read_text().strip().encode()
    assert len(kept) == 64  # 32 random bytes, hex
    assert first.hasher.phone_hash(DIGITS) == PhoneHasher(kept).phone_hash(DIGITS)

    again = phone_key(settings)  # a restart
    assert again.origin == f"kept in {path.resolve()} (this worker only)"
    assert again.hasher.phone_hash(DIGITS) == first.hasher.phone_hash(DIGITS)
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE]  # no draft left behind

    elsewhere = phone_key(Settings(data_dir=tmp_path / "other"))  # another worker's own key
    assert elsewhere.hasher.phone_hash(DIGITS) != first.hasher.phone_hash(DIGITS)


def test_the_key_setting_wins_and_leaves_the_data_dir_alone(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        phone_key=KEY.decode(),
        phone_key_previous=OTHER_KEY.decode(),
    )
    key = phone_key(settings)
    assert key.origin == "CONCORD_PHONE_KEY"
    assert key.hasher.lookup_hashes(DIGITS) == PhoneHasher(KEY, OTHER_KEY).lookup_hashes(DIGITS)
    assert not (tmp_path / KEY_FILE).exists()


@pytest.mark.parametrize("name", ["api_token", "phone_key", "phone_key_previous"])
def test_secrets_shorter_than_16_bytes_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Settings(**{name: "too-short"})
