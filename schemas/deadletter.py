"""Dead letters: rejected input with its reason and the original bytes (contract §1)."""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel


class DeadLetter(BaseModel):
    """The value of a record on concord.deadletter; its key is the original key."""

    reason: str
    error: str
    topic: str
    partition: int
    offset: int
    key: str | None
    original_b64: str | None
    received_at: AwareDatetime
