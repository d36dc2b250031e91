"""The ghost-order rules (§5) and stage 3 of the breaker (§7), evaluated on each order as of
every event time, by brute force.

For one order, event time is cut at every instant an event becomes known to the order; in
between, the order's state is constant and a rule can only start to hold at a deadline. So
the rules are evaluated at each such instant and at each deadline in between (and at the end
of a silence, when one is given), on the state as of that instant: each system's events with
`known <= T`. An anomaly opens at the first instant its rule holds (`opened_at`), takes the
highest severity it reaches, and resolves at the first instant it no longer holds; its id is
raised once (a resolved id stays resolved).

The rules, with T the instant and "reports" meaning any event, failure markers included:

* **missing_in_system** (trigger: the system): S in §3 scope of the ERP's phase, S has not
  reported, and T >= scope entry + 15 min (CRM) / 2 h (WMS) / 24 h (logistics). Scope entry:
  the ERP's first event (CRM); its first event at fulfilling or shipped (WMS); at shipped or
  delivered (logistics); failing those (an order returned after going straight to delivered),
  its first event at the current phase.
* **orphan_order** (trigger ""): CRM/WMS/logistics have reported, the ERP has not, and
  T >= their first event + 30 min.
* **status_conflict** (trigger: `since`): the blamed systems are the in-scope ones whose
  latest phase (see `contract.latest_key`) differs from the ERP's — a system that has not
  reported is missing, not blamed — plus, while the ERP shows cancelled, a WMS or carrier
  showing shipped or delivered (a contradiction), in scope or not. `since` is the first
  instant of the current uninterrupted run of instants with someone blamed. It holds from
  since + 30 min, or from the first contradiction in the run, whichever comes first; it is
  critical once a contradiction was seen in the run.
* **stalled_tracking** (trigger: the anchor): the ERP's phase is shipped and the carrier
  has reported; anchor = max(the ERP's first shipped event, the carrier's newest event);
  warning from anchor + 24 h, critical from anchor + 72 h. A carrier that never reported is
  missing_in_system instead. When a stall opens: `carrier.exception_ticket` and
  `customer.notify`, ids from the anomaly id, payloads as of that instant.
* **orphans of unlinked references** (order id: the reference): a reference whose events
  named no master order holds an orphan from its first event + 30 min until its link.

Silent sources (a parameter, empty by default): `silent[source]` lists event-time intervals
[a, b) in which the source is judged silent. A flag that source alone causes (missing for
it; a stall for the carrier; an orphan for the ERP; a non-contradiction conflict when the
ERP or every blamed system is silent) is not raised while it is silent; at b it is raised if
it still holds, with `opened_at` the instant it first held. Open flags are not affected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.oracle.contract import (
    PHASE,
    SEVERITY_RANK,
    SOURCES,
    TARGETS,
    AnomalyRecord,
    CommandRecord,
    anomaly_id,
    command_id,
    latest_key,
    scope,
    team_of,
)
from tests.oracle.ingest import Accepted, Unlinked

Silence = Mapping[str, Sequence[tuple[int, int]]]


@dataclass(frozen=True)
class Thresholds:
    """The §5 delays, µs."""

    missing: Mapping[str, int]
    orphan: int
    conflict: int
    stall: int
    stall_critical: int


@dataclass(frozen=True)
class View:
    """One system's view of an order as of some instant."""

    stage: str | None  # its latest stage; None when it reported only failure markers
    firsts: dict[str, int]  # phase -> its earliest event at that phase
    earliest: int  # its first event of any kind
    newest: int  # its latest event of any kind

    @property
    def phase(self) -> str | None:
        """The phase of its latest stage."""
        return None if self.stage is None else PHASE[self.stage]


@dataclass(frozen=True)
class Snapshot:
    """An order as of one instant."""

    views: dict[str, View]
    facts: Mapping[str, Any] | None  # the ERP's order details (latest event carrying them)
    carrier: str | None
    tracking_no: str | None


def _view(events: list[Accepted]) -> View | None:
    if not events:
        return None
    stages = [e for e in events if e.stage is not None]
    latest = max(stages, key=lambda e: latest_key(e.stage or "", e.at, e.event_id), default=None)
    firsts: dict[str, int] = {}
    for e in stages:
        phase = PHASE[e.stage or ""]
        firsts[phase] = min(firsts.get(phase, e.at), e.at)
    return View(
        stage=None if latest is None else latest.stage,
        firsts=firsts,
        earliest=min(e.at for e in events),
        newest=max(e.at for e in events),
    )


def snapshot(events: list[Accepted], t: int) -> Snapshot:
    """The order as of instant `t`: its events known by then."""
    known = [e for e in events if e.known <= t]
    views = {}
    for source in SOURCES:
        view = _view([e for e in known if e.source == source])
        if view is not None:
            views[source] = view
    with_details = [e for e in known if e.source == "erp" and e.body.get("order") is not None]
    facts = (
        max(with_details, key=lambda e: (e.at, e.event_id)).body["order"] if with_details else None
    )
    tracked = [
        (e.source == "logistics", e.at, tr.get("carrier") or "", tr.get("tracking_no") or "")
        for e in known
        if isinstance(tr := e.body.get("tracking"), Mapping)
        and (tr.get("carrier") is not None or tr.get("tracking_no") is not None)
    ]
    best = max(tracked, default=None)
    return Snapshot(
        views=views,
        facts=facts,
        carrier=(best[2] or None) if best else None,
        tracking_no=(best[3] or None) if best else None,
    )


def _reached(erp: View) -> bool:
    return any(p in erp.firsts for p in ("fulfilling", "shipped", "delivered"))


def blamed(state: Snapshot) -> tuple[list[str], bool]:
    """(systems blamed for a conflict, whether one of them contradicts a cancel)."""
    erp = state.views.get("erp")
    if erp is None or erp.phase is None:
        return [], False
    in_scope = scope(erp.phase, _reached(erp))
    out: list[str] = []
    contradiction = False
    for source in TARGETS:
        view = state.views.get(source)
        if view is None or view.phase is None:
            continue
        contradicts = (
            erp.phase == "cancelled"
            and source in ("wms", "logistics")
            and view.phase in ("shipped", "delivered")
        )
        if contradicts or (source in in_scope and view.phase != erp.phase):
            out.append(source)
        contradiction = contradiction or contradicts
    return out, contradiction


def _scope_entry(erp: View, source: str) -> int:
    if source == "crm":
        return min(erp.firsts.values())
    entry_phases = ("fulfilling", "shipped") if source == "wms" else ("shipped", "delivered")
    entries = [erp.firsts[p] for p in entry_phases if p in erp.firsts]
    return min(entries) if entries else erp.firsts[erp.phase or ""]


@dataclass(frozen=True)
class Finding:
    """A rule that holds at an instant."""

    type: str
    trigger: str
    severity: str
    systems: tuple[str, ...]
    blame: tuple[str, ...]
    contradiction: bool = False


def findings(
    state: Snapshot, t: int, since: int | None, contradiction_at: int | None, th: Thresholds
) -> list[Finding]:
    """The ghost rules that hold at `t` on `state` (the run of disagreement given)."""
    out: list[Finding] = []
    views = state.views
    erp = views.get("erp")
    present = tuple(s for s in TARGETS if s in views)
    if erp is None and present and t >= min(views[s].earliest for s in present) + th.orphan:
        out.append(Finding("orphan_order", "", "warning", ("erp", *present), ("erp",)))
    if erp is None or erp.phase is None:
        return out
    for source in scope(erp.phase, _reached(erp)):
        if source not in views and t >= _scope_entry(erp, source) + th.missing[source]:
            out.append(Finding("missing_in_system", source, "warning", ("erp", source), (source,)))
    if since is not None:
        opens = since + th.conflict
        if contradiction_at is not None:
            opens = min(opens, contradiction_at)
        if t >= opens:
            who, _ = blamed(state)
            critical = contradiction_at is not None
            out.append(
                Finding(
                    "status_conflict",
                    str(since),
                    "critical" if critical else "warning",
                    ("erp", *who),
                    tuple(who),
                    contradiction=critical,
                )
            )
    carrier = views.get("logistics")
    if erp.phase == "shipped" and carrier is not None:
        anchor = max(erp.firsts["shipped"], carrier.newest)
        if t >= anchor + th.stall:
            severity = "critical" if t >= anchor + th.stall_critical else "warning"
            out.append(
                Finding(
                    "stalled_tracking", str(anchor), severity, ("erp", "logistics"), ("logistics",)
                )
            )
    return out


def _deadlines(state: Snapshot, since: int | None, th: Thresholds) -> list[int]:
    out: list[int] = []
    views = state.views
    erp = views.get("erp")
    present = [views[s].earliest for s in TARGETS if s in views]
    if erp is None and present:
        out.append(min(present) + th.orphan)
    if erp is None or erp.phase is None:
        return out
    out += [_scope_entry(erp, s) + th.missing[s] for s in scope(erp.phase, _reached(erp))]
    if since is not None:
        out.append(since + th.conflict)
    if erp.phase == "shipped" and "logistics" in views:
        anchor = max(erp.firsts["shipped"], views["logistics"].newest)
        out += [anchor + th.stall, anchor + th.stall_critical]
    return out


def _silent_at(silent: Silence, t: int) -> set[str]:
    return {s for s, spans in silent.items() if any(a <= t < b for a, b in spans)}


def _held(finding: Finding, silent: set[str]) -> bool:
    if not silent or finding.contradiction:
        return False
    if finding.type == "status_conflict":
        return "erp" in silent or all(s in silent for s in finding.blame)
    return any(s in silent for s in finding.blame)


@dataclass
class Book:
    """The anomalies and commands of one order as they come and go."""

    order_id: str
    anomalies: dict[str, AnomalyRecord] = field(default_factory=dict)
    commands: list[CommandRecord] = field(default_factory=list)
    pending: dict[str, int] = field(default_factory=dict)  # held back by a silence: since when

    def step(self, found: list[Finding], t: int, state: Snapshot, silent: set[str]) -> None:
        """Open, escalate and resolve for what holds at `t`."""
        live: set[str] = set()
        facts = dict(state.facts) if state.facts else None
        for f in found:
            aid = anomaly_id(f.type, self.order_id, f.trigger)
            live.add(aid)
            record = self.anomalies.get(aid)
            if record is not None and (
                not record.is_open or SEVERITY_RANK[f.severity] <= SEVERITY_RANK[record.severity]
            ):
                continue
            if _held(f, silent):
                self.pending.setdefault(aid, t)
                continue
            team = team_of(f.type, f.severity, f.systems, facts)
            if record is not None:
                record.severity, record.team, record.systems = f.severity, team, f.systems
                continue
            opened = self.pending.pop(aid, t)
            self.anomalies[aid] = AnomalyRecord(
                aid, f.type, self.order_id, f.severity, opened, None, team, f.systems
            )
            if f.type == "stalled_tracking":
                self.commands += stall_commands(self.order_id, aid, t, state)
        for aid, record in self.anomalies.items():
            if record.is_open and aid not in live:
                record.resolved_us = t
        for aid in [a for a in self.pending if a not in live]:
            del self.pending[aid]


def stall_commands(order_id: str, aid: str, t: int, state: Snapshot) -> list[CommandRecord]:
    """§7 stage 3 for one stall."""
    ticket = "carrier.exception_ticket"
    notify = "customer.notify"
    return [
        CommandRecord(
            command_id(ticket, aid),
            ticket,
            t,
            {
                "order_id": order_id,
                "carrier": state.carrier,
                "tracking_no": state.tracking_no,
                "anomaly_id": aid,
            },
        ),
        CommandRecord(
            command_id(notify, aid),
            notify,
            t,
            {
                "order_id": order_id,
                "channel": "sms",
                "template": "shipment_delayed",
                "anomaly_id": aid,
            },
        ),
    ]


def order_ghosts(
    order_id: str, events: list[Accepted], horizon: int, th: Thresholds, silent: Silence
) -> Book:
    """Every ghost anomaly and stage-3 command of one order up to `horizon`."""
    book = Book(order_id)
    instants = sorted({e.known for e in events if e.known <= horizon})
    ends = sorted({b for spans in silent.values() for _, b in spans})
    since: int | None = None
    contradiction_at: int | None = None
    for i, t in enumerate(instants):
        until = instants[i + 1] if i + 1 < len(instants) else horizon + 1
        state = snapshot(events, t)
        who, contradiction = blamed(state)
        if not who:
            since = contradiction_at = None
        else:
            since = t if since is None else since
            if contradiction and contradiction_at is None:
                contradiction_at = t
        checks = {t} | {d for d in _deadlines(state, since, th) if t < d < until}
        checks |= {b for b in ends if t < b < until}
        for at in sorted(checks):
            found = findings(state, at, since, contradiction_at, th)
            book.step(found, at, state, _silent_at(silent, at))
    return book


def unlinked_orphan(unlinked: Unlinked, horizon: int, th: Thresholds) -> AnomalyRecord | None:
    """The orphan of a reference no master order was named for, by its own reference."""
    opens = min(e.at for e in unlinked.events) + th.orphan
    if opens > horizon or (unlinked.link_us is not None and unlinked.link_us <= opens):
        return None
    linked = (
        unlinked.link_us if unlinked.link_us is not None and unlinked.link_us <= horizon else None
    )
    systems = ("erp", unlinked.source)
    return AnomalyRecord(
        anomaly_id("orphan_order", unlinked.ref, ""),
        "orphan_order",
        unlinked.ref,
        "warning",
        opens,
        linked,
        team_of("orphan_order", "warning", systems),
        systems,
    )
