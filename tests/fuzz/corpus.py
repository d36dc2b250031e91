"""The seeded corpus: hostile classes of records, each with the fate the contract and ingest's
input limits (README, "Input limits") give it at the default settings.

Every class (`tests/fuzz/shapes.py`, `tests/fuzz/contents.py`) is a function of an `Events`
(fresh references, a seeded random source, `now`) returning its records; `corpus()` runs
the classes round after round, for as many records as are taken from it.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from datetime import datetime

from tests.fuzz import contents, shapes
from tests.fuzz.records import CLASSES, ONCE, Events, FuzzRecord

CLASS_MODULES = (shapes, contents)  # imported for the classes they register


def corpus(now: datetime, seed: int) -> Iterator[FuzzRecord]:
    """Every class, round after round without end (some in the first round only), on fresh
    references."""
    ev = Events(now, f"C{seed}", random.Random(seed))
    for round_ in itertools.count():
        for name, make in CLASSES.items():
            if round_ == 0 or name not in ONCE:
                yield from make(ev)
