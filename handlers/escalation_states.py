"""The life of an escalation as one table: in each state, what each event does, and where it
leads. `handlers/escalations.py` carries out the steps; nothing else changes an escalation.

The stored `status` is the contract's (open, acknowledged, resolved); the states below refine
it with two facts kept beside it: whether the head was reminded to resolve (one reminder, then
one more acknowledgement period), and whether it is overdue at the top of the hierarchy (a
deadline passed and nobody above can take it: it stays with its head, who is reminded each
working day, and the case view shows it overdue).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from storage.models import EscalationStatus


class State(StrEnum):
    OPEN = "open"  # waiting for its head to acknowledge, until `ack_due_at`
    OPEN_OVERDUE = "open_overdue"  # not acknowledged in time, nobody above
    ACKNOWLEDGED = "acknowledged"  # waiting for the outcome, until `resolve_due_at`
    REMINDED = "reminded"  # reminded to resolve; one acknowledgement period left
    ACKNOWLEDGED_OVERDUE = "acknowledged_overdue"  # not resolved in time, nobody above
    RESOLVED = "resolved"


class Event(StrEnum):
    ACKNOWLEDGED = "acknowledged"  # a head it reached pressed «Tiếp nhận»
    RESOLVED = "resolved"  # a head it reached wrote the note after «Đã xử lý»
    DEADLINE_PASSED = "deadline_passed"  # the sweep: the state's deadline (or reminder) is due
    REOPENED = "reopened"  # the citizen rated the handling 1-2


class Guard(StrEnum):
    ANY = "any"
    ABOVE = "above"  # a reachable head above the one holding it can take it
    TOP = "top"  # nobody above can: the top of the hierarchy, or no reachable head up there


class Step(StrEnum):
    """What a transition does (carried out in `handlers/escalations.py`)."""

    ACKNOWLEDGE = "acknowledge"  # note who and when; the resolve deadline keeps running
    CONFIRM_ACKNOWLEDGED = "confirm_acknowledged"  # a second press: answer, change nothing
    RESOLVE = "resolve"  # keep the note, tell the citizen, ask how it was handled
    CLIMB = "climb"  # to the next reachable head above, with new deadlines; the lower is told
    REMIND_TO_RESOLVE = "remind_to_resolve"  # once; one more acknowledgement period to act
    REMIND_OVERDUE = "remind_overdue"  # stays with its head, overdue; again next working day
    REOPEN_ABOVE = "reopen_above"  # a resolution the citizen rejects goes one level up
    REOPEN_HERE = "reopen_here"  # ... or, at the top, back to the same head
    IGNORE = "ignore"  # stale: nothing changes


@dataclass(frozen=True)
class Transition:
    step: Step
    to: State


# (state, event, guard) -> what happens. A guard other than ANY is looked up first; an event
# a state does not list changes nothing (a stale press, a reopen of what is not resolved).
TABLE: dict[tuple[State, Event, Guard], Transition] = {
    # waiting for acknowledgement
    (State.OPEN, Event.ACKNOWLEDGED, Guard.ANY): Transition(Step.ACKNOWLEDGE, State.ACKNOWLEDGED),
    (State.OPEN, Event.RESOLVED, Guard.ANY): Transition(Step.RESOLVE, State.RESOLVED),
    (State.OPEN, Event.DEADLINE_PASSED, Guard.ABOVE): Transition(Step.CLIMB, State.OPEN),
    (State.OPEN, Event.DEADLINE_PASSED, Guard.TOP): Transition(
        Step.REMIND_OVERDUE, State.OPEN_OVERDUE
    ),
    (State.OPEN_OVERDUE, Event.ACKNOWLEDGED, Guard.ANY): Transition(
        Step.ACKNOWLEDGE, State.ACKNOWLEDGED
    ),
    (State.OPEN_OVERDUE, Event.RESOLVED, Guard.ANY): Transition(Step.RESOLVE, State.RESOLVED),
    # A head above may have joined since (a units file, an invite link): then it climbs.
    (State.OPEN_OVERDUE, Event.DEADLINE_PASSED, Guard.ABOVE): Transition(Step.CLIMB, State.OPEN),
    (State.OPEN_OVERDUE, Event.DEADLINE_PASSED, Guard.TOP): Transition(
        Step.REMIND_OVERDUE, State.OPEN_OVERDUE
    ),
    # waiting for the outcome
    (State.ACKNOWLEDGED, Event.ACKNOWLEDGED, Guard.ANY): Transition(
        Step.CONFIRM_ACKNOWLEDGED, State.ACKNOWLEDGED
    ),
    (State.ACKNOWLEDGED, Event.RESOLVED, Guard.ANY): Transition(Step.RESOLVE, State.RESOLVED),
    (State.ACKNOWLEDGED, Event.DEADLINE_PASSED, Guard.ANY): Transition(
        Step.REMIND_TO_RESOLVE, State.REMINDED
    ),
    (State.REMINDED, Event.ACKNOWLEDGED, Guard.ANY): Transition(
        Step.CONFIRM_ACKNOWLEDGED, State.REMINDED
    ),
    (State.REMINDED, Event.RESOLVED, Guard.ANY): Transition(Step.RESOLVE, State.RESOLVED),
    (State.REMINDED, Event.DEADLINE_PASSED, Guard.ABOVE): Transition(Step.CLIMB, State.OPEN),
    (State.REMINDED, Event.DEADLINE_PASSED, Guard.TOP): Transition(
        Step.REMIND_OVERDUE, State.ACKNOWLEDGED_OVERDUE
    ),
    (State.ACKNOWLEDGED_OVERDUE, Event.ACKNOWLEDGED, Guard.ANY): Transition(
        Step.CONFIRM_ACKNOWLEDGED, State.ACKNOWLEDGED_OVERDUE
    ),
    (State.ACKNOWLEDGED_OVERDUE, Event.RESOLVED, Guard.ANY): Transition(
        Step.RESOLVE, State.RESOLVED
    ),
    (State.ACKNOWLEDGED_OVERDUE, Event.DEADLINE_PASSED, Guard.ABOVE): Transition(
        Step.CLIMB, State.OPEN
    ),
    (State.ACKNOWLEDGED_OVERDUE, Event.DEADLINE_PASSED, Guard.TOP): Transition(
        Step.REMIND_OVERDUE, State.ACKNOWLEDGED_OVERDUE
    ),
    # done, until the citizen says it was not
    (State.RESOLVED, Event.REOPENED, Guard.ABOVE): Transition(Step.REOPEN_ABOVE, State.OPEN),
    (State.RESOLVED, Event.REOPENED, Guard.TOP): Transition(Step.REOPEN_HERE, State.OPEN),
}


def needs_guard(state: State, event: Event) -> bool:
    """True when the outcome depends on whether someone above can take the escalation."""
    return (state, event, Guard.ABOVE) in TABLE


def transition(state: State, event: Event, guard: Guard = Guard.ANY) -> Transition:
    """What `event` does in `state`; IGNORE when the state does not expect it."""
    found = TABLE.get((state, event, guard)) or TABLE.get((state, event, Guard.ANY))
    if found is None:
        return Transition(Step.IGNORE, state)
    return found


def state_of(status: str, *, reminded_at: datetime | None, overdue_since: datetime | None) -> State:
    """The state of a stored escalation, from its status and the two facts beside it."""
    if status == EscalationStatus.RESOLVED:
        return State.RESOLVED
    if status == EscalationStatus.OPEN:
        return State.OPEN_OVERDUE if overdue_since is not None else State.OPEN
    if overdue_since is not None:
        return State.ACKNOWLEDGED_OVERDUE
    return State.REMINDED if reminded_at is not None else State.ACKNOWLEDGED


def status_of(state: State) -> EscalationStatus:
    """The contract's status for a state."""
    if state in (State.OPEN, State.OPEN_OVERDUE):
        return EscalationStatus.OPEN
    if state == State.RESOLVED:
        return EscalationStatus.RESOLVED
    return EscalationStatus.ACKNOWLEDGED
