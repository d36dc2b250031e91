"""The key of the phone hashes: CONCORD_PHONE_KEY, or one generated once in the data dir."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from schemas.privacy import PhoneHasher
from schemas.settings import Settings

KEY_FILE = "phone.key"


@dataclass(frozen=True)
class PhoneKey:
    """The worker's phone hasher and where its key came from (for the start-up log)."""

    hasher: PhoneHasher
    origin: str


def phone_key(settings: Settings) -> PhoneKey:
    """The hasher of CONCORD_PHONE_KEY (and _PREVIOUS), else of the data dir's kept key."""
    previous = settings.phone_key_previous
    old = None if previous is None else previous.get_secret_value().encode()
    if settings.phone_key is not None:
        key = settings.phone_key.get_secret_value().encode()
        return PhoneKey(PhoneHasher(key, old), "CONCORD_PHONE_KEY")
    path = settings.data_dir / KEY_FILE
    kept, made = _kept_key(path)
    origin = f"{'generated in' if made else 'kept in'} {path.resolve()} (this worker only)"
    return PhoneKey(PhoneHasher(kept, old), origin)


def _kept_key(path: Path) -> tuple[bytes, bool]:
    """The key in `path`, made (random, mode 0600) if there is none; and whether it was made."""
    if path.exists():
        return _read(path), False
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole to a file of its own, then linked into place: no process ever reads a
    # half-written key, and of two processes starting on one data dir the second to link
    # reads the first one's key instead of replacing it.
    draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
        out.flush()
        os.fsync(out.fileno())
    try:
        os.link(draft, path)
    except FileExistsError:
        return _read(path), False
    finally:
        draft.unlink()
    return _read(path), True


def _read(path: Path) -> bytes:
    return path.read_text().strip().encode()
