"""SQLAlchemy models: every piece of state the service keeps (docs/design.md: state lives here).

All datetimes are aware and stored as UTC. Platform addresses (Telegram chat ids, Zalo user
ids) are strings, so one column serves every channel.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy import event as sa_event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from storage import snapshot_triggers
from storage.types import UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; BigInteger there would not.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Address = String(64)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class CaseStatus(StrEnum):
    RECEIVED = "received"
    DELAYED = "delayed"
    RESOLVED = "resolved"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"


class SurveyStatus(StrEnum):
    NOT_DUE = "not_due"
    SCHEDULED = "scheduled"
    INVITED = "invited"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    EXPIRED = "expired"
    OPTED_OUT = "opted_out"
    UNREACHABLE = "unreachable"


class Channel(StrEnum):
    TELEGRAM = "telegram"
    ZALO = "zalo"
    WEB = "web"


class ContactStatus(StrEnum):
    ACTIVE = "active"
    UNREACHABLE = "unreachable"


class EscalationStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # gave up: the recipient is unreachable or the message is invalid
    CANCELLED = "cancelled"


class Priority:
    """Lower goes first: a person answering never waits behind a broadcast."""

    REPLY = 0
    NOTICE = 5
    INVITATION = 9


class Unit(Base):
    __tablename__ = "units"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("units.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    parent: Mapped[Unit | None] = relationship(remote_side=[id], lazy="raise")
    head: Mapped[UnitHead | None] = relationship(back_populates="unit", lazy="raise")


class _ChatContacts:
    """An address per chat channel, kept as rows `(channel, address)` in `contacts`.

    The units file names them `telegram_chat_id` and `zalo_user_id`; those stay as
    properties over the rows. Contacts load with their owner (`selectin`).
    """

    contacts: list[Any]

    def _contact_row(self, channel: str, address: str) -> Any:
        raise NotImplementedError

    def address_on(self, channel: str) -> str | None:
        return next((c.address for c in self.contacts if c.channel == channel), None)

    def set_address(self, channel: str, address: str | None) -> None:
        existing = next((c for c in self.contacts if c.channel == channel), None)
        if address is None:
            if existing is not None:
                self.contacts.remove(existing)
        elif existing is None:
            self.contacts.append(self._contact_row(channel, address))
        else:
            existing.address = address

    @property
    def telegram_chat_id(self) -> str | None:
        return self.address_on(Channel.TELEGRAM)

    @telegram_chat_id.setter
    def telegram_chat_id(self, address: str | None) -> None:
        self.set_address(Channel.TELEGRAM, address)

    @property
    def zalo_user_id(self) -> str | None:
        return self.address_on(Channel.ZALO)

    @zalo_user_id.setter
    def zalo_user_id(self, address: str | None) -> None:
        self.set_address(Channel.ZALO, address)


class UnitHead(_ChatContacts, Base):
    """The person answerable for a unit; escalations about the unit reach them in chat."""

    __tablename__ = "unit_heads"

    id: Mapped[int] = mapped_column(primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    officer_code: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    unit: Mapped[Unit] = relationship(back_populates="head", lazy="raise")
    contacts: Mapped[list[HeadContact]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="HeadContact.channel"
    )

    def _contact_row(self, channel: str, address: str) -> HeadContact:
        return HeadContact(channel=channel, address=address)


class HeadContact(Base):
    """A unit head's chat address on one channel (like a citizen's contact)."""

    __tablename__ = "head_contacts"
    __table_args__ = (Index("ix_head_contacts_address", "channel", "address"),)

    head_id: Mapped[int] = mapped_column(
        ForeignKey("unit_heads.id", ondelete="CASCADE"), primary_key=True
    )
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    address: Mapped[str] = mapped_column(Address)


class HeadInvite(Base):
    """A one-time deep link a unit head opens to be linked to their unit."""

    __tablename__ = "head_invites"

    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    used_by: Mapped[str | None] = mapped_column(String(80))


class DigestRecipient(_ChatContacts, Base):
    __tablename__ = "digest_recipients"
    __table_args__ = (UniqueConstraint("name", "scope_unit_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    scope_unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    contacts: Mapped[list[RecipientContact]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="RecipientContact.channel"
    )

    def _contact_row(self, channel: str, address: str) -> RecipientContact:
        return RecipientContact(channel=channel, address=address)


class RecipientContact(Base):
    """A digest recipient's chat address on one channel."""

    __tablename__ = "recipient_contacts"

    recipient_id: Mapped[int] = mapped_column(
        ForeignKey("digest_recipients.id", ondelete="CASCADE"), primary_key=True
    )
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    address: Mapped[str] = mapped_column(Address)


class Officer(Base):
    __tablename__ = "officers"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(255))
    unit_id: Mapped[int | None] = mapped_column(ForeignKey("units.id"))


class Procedure(Base):
    __tablename__ = "procedures"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(500))
    field: Mapped[str | None] = mapped_column(String(255))


class Citizen(Base):
    """A person or an organisation's representative; personal fields are erased on request."""

    __tablename__ = "citizens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255))
    phone: Mapped[str | None] = mapped_column(String(32), index=True)
    locale: Mapped[str] = mapped_column(String(8), default="vi")
    opted_out_at: Mapped[datetime | None]
    erased_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    contacts: Mapped[list[CitizenContact]] = relationship(
        back_populates="citizen", lazy="raise", cascade="all, delete-orphan", passive_deletes=True
    )


class CitizenContact(Base):
    """A chat address at which a citizen agreed to be reached."""

    __tablename__ = "citizen_contacts"
    __table_args__ = (UniqueConstraint("channel", "address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    citizen_id: Mapped[int] = mapped_column(
        ForeignKey("citizens.id", ondelete="CASCADE"), index=True
    )
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(Address)
    status: Mapped[str] = mapped_column(String(16), default=ContactStatus.ACTIVE)
    # "chat" when the person consented in chat, "intake" when the one-stop desk sent it.
    source: Mapped[str] = mapped_column(String(16), default="chat")
    consented_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    citizen: Mapped[Citizen] = relationship(back_populates="contacts", lazy="raise")


class Case(Base):
    """One administrative case (hồ sơ TTHC) as the one-stop system reported it last."""

    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_code: Mapped[str] = mapped_column(String(100), unique=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id"), index=True)
    procedure_id: Mapped[int] = mapped_column(ForeignKey("procedures.id"))
    officer_id: Mapped[int | None] = mapped_column(ForeignKey("officers.id"))
    citizen_id: Mapped[int | None] = mapped_column(
        ForeignKey("citizens.id", ondelete="SET NULL"), index=True
    )
    status: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime]
    due_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    delay_new_due_at: Mapped[datetime | None]
    delay_reason: Mapped[str | None] = mapped_column(Text)
    # Fingerprint of the last accepted body: a replay with the same one changes nothing.
    body_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    unit: Mapped[Unit] = relationship(lazy="raise")
    procedure: Mapped[Procedure] = relationship(lazy="raise")
    officer: Mapped[Officer | None] = relationship(lazy="raise")
    citizen: Mapped[Citizen | None] = relationship(lazy="raise")


class CaseEvent(Base):
    """Status history of a case."""

    __tablename__ = "case_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class LinkToken(Base):
    """The opaque token in a citizen's deep link and web link; never the case code."""

    __tablename__ = "link_tokens"

    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    used_by: Mapped[str | None] = mapped_column(String(80))


class Survey(Base):
    """One survey per case, ever; its progress lives here, not in memory."""

    __tablename__ = "surveys"
    __table_args__ = (Index("ix_surveys_status_due_at", "status", "due_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # Short random reference carried by buttons; checked with the pressing chat.
    ref: Mapped[str] = mapped_column(String(16), unique=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), unique=True)
    questionnaire: Mapped[str] = mapped_column(String(32))
    locale: Mapped[str] = mapped_column(String(8), default="vi")
    status: Mapped[str] = mapped_column(String(16), default=SurveyStatus.SCHEDULED)
    channel: Mapped[str | None] = mapped_column(String(16))
    address: Mapped[str | None] = mapped_column(Address)
    position: Mapped[int] = mapped_column(default=0)  # index of the open question
    due_at: Mapped[datetime]  # not before this instant is the invitation sent
    invited_at: Mapped[datetime | None]
    reminded_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None] = mapped_column(index=True)
    expires_at: Mapped[datetime | None]
    # The web page's current form nonce: a form is honoured only with it, and every accepted
    # form replaces it, so a forged or replayed form changes nothing.
    web_nonce: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    case: Mapped[Case] = relationship(lazy="raise")
    answers: Mapped[list[Answer]] = relationship(
        back_populates="survey", lazy="raise", cascade="all, delete-orphan", passive_deletes=True
    )


class Answer(Base):
    __tablename__ = "answers"
    __table_args__ = (UniqueConstraint("survey_id", "question_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    survey_id: Mapped[int] = mapped_column(ForeignKey("surveys.id", ondelete="CASCADE"))
    question_id: Mapped[str] = mapped_column(String(32))
    factor: Mapped[str | None] = mapped_column(String(32))
    value_int: Mapped[int | None]
    value_text: Mapped[str | None] = mapped_column(Text)
    skipped: Mapped[bool] = mapped_column(default=False)
    answered_at: Mapped[datetime] = mapped_column(default=utcnow)

    survey: Mapped[Survey] = relationship(back_populates="answers", lazy="raise")


class Escalation(Base):
    """A complaint travelling up the unit hierarchy until a head resolves it."""

    __tablename__ = "escalations"
    __table_args__ = (
        UniqueConstraint("case_id", "reason"),
        Index("ix_escalations_status_ack_due_at", "status", "ack_due_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(String(16), unique=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    survey_id: Mapped[int | None] = mapped_column(ForeignKey("surveys.id", ondelete="SET NULL"))
    reason: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    level: Mapped[int] = mapped_column(default=1)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id"), index=True)  # whose head holds it
    origin_unit_id: Mapped[int] = mapped_column(ForeignKey("units.id"))
    status: Mapped[str] = mapped_column(String(16), default=EscalationStatus.OPEN)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    acknowledged_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    ack_due_at: Mapped[datetime | None]
    resolve_due_at: Mapped[datetime | None]
    resolve_reminded_at: Mapped[datetime | None]
    # The deadline it missed with nobody above to take it (the top of the hierarchy): it stays
    # with its head, who is reminded each working day (`ack_due_at` / `resolve_due_at` then
    # hold the next reminder). None while it is on time or has climbed since.
    overdue_since: Mapped[datetime | None]
    resolution_note: Mapped[str | None] = mapped_column(Text)
    recovery_rating: Mapped[int | None]
    recovery_at: Mapped[datetime | None]
    # A head who pressed "resolved" and owes a note; their next text is the note.
    awaiting_note_from: Mapped[str | None] = mapped_column(String(80))

    case: Mapped[Case] = relationship(lazy="raise")


class EscalationEvent(Base):
    """Audit trail of an escalation: opened, sent, acknowledged, climbed, resolved, reopened."""

    __tablename__ = "escalation_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    escalation_id: Mapped[int] = mapped_column(
        ForeignKey("escalations.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    level: Mapped[int]
    unit_id: Mapped[int | None] = mapped_column(ForeignKey("units.id"))
    actor: Mapped[str | None] = mapped_column(String(80))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Apology(Base):
    """An apology letter sent for a late case (Nghị định 61/2018/NĐ-CP); counted in digests."""

    __tablename__ = "apologies"
    __table_args__ = (UniqueConstraint("case_id", "kind", "new_due_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "delayed" or "late_resolution"
    old_due_at: Mapped[datetime]
    new_due_at: Mapped[datetime]
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class OutboxMessage(Base):
    """A message to send, written in the same transaction as the change that caused it."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_pending", "status", "priority", "not_before", "id"),
        # The dispatcher's claim looks up each candidate chat's queue by address.
        Index("ix_outbox_address", "channel", "address", "status"),
        # A new elected sender reads the sends of the last second (bot/outbox/leadership.py).
        Index("ix_outbox_sent_at", "sent_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(Address)
    priority: Mapped[int] = mapped_column(default=Priority.NOTICE)
    # {"text": ..., "buttons": [[{"label", "data"}]], "edit_message_id": ..., "document": ...}
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    not_before: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_until: Mapped[datetime | None]
    # A random token per claim: only the holder of this claim may settle the row.
    claim_token: Mapped[str | None] = mapped_column(String(32))
    # Set when one event must never send twice (e.g. "invite:<survey id>").
    dedupe_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id", ondelete="SET NULL"))
    platform_message_id: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When the accepted send started (not when it was marked): pacing counts starts.
    sent_at: Mapped[datetime | None]
    # Written by the claim's holder for the next few rows it will send, before it calls the
    # platform for any of them (cleared by every new claim): a sender taking over frees the
    # rows without it at once, since none of their sends can have begun.
    announced_at: Mapped[datetime | None]


class ProcessedUpdate(Base):
    """Incoming platform updates already handled, so a redelivery is processed once."""

    __tablename__ = "processed_updates"

    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class OpenPrompt(Base):
    """The prompt last sent to an address with choices: a typed number or word answers it.

    One per address; a newer prompt replaces it and answering it closes it, so a channel
    without buttons (Zalo) and typed replies on any channel take the same path as a press.
    """

    __tablename__ = "open_prompts"

    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    address: Mapped[str] = mapped_column(Address, primary_key=True)
    # The outbox row that carried it (no foreign key: sent rows may be purged).
    outbox_id: Mapped[int] = mapped_column(BigInteger)
    # The payload as queued: its text (to ask again) and its buttons (the choices).
    payload: Mapped[dict[str, Any]]
    opened_at: Mapped[datetime]


class SharedFile(Base):
    """A file handed out as an expiring link (a digest's chart and workbook on Zalo, which
    cannot upload files): whoever has the token may fetch it until `expires_at`."""

    __tablename__ = "shared_files"

    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    filename: Mapped[str] = mapped_column(String(200))
    content_type: Mapped[str] = mapped_column(String(100))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(64))
    entity: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str | None] = mapped_column(String(100))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class DashboardLink(Base):
    """A one-time sign-in link to the officials' dashboard (docs/contract.md section 8).

    Only the token's SHA-256 is kept: whoever reads the table cannot sign in with it. It opens
    the scope of `scope_unit_id` (that unit and every unit below it) once, before `expires_at`.
    """

    __tablename__ = "dashboard_links"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope_unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    # The unit the person heads (per-officer figures are shown there only); None otherwise.
    head_of_unit_id: Mapped[int | None] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    # Who asked for it, for the audit log: "cli", "head:HN-LB", "recipient:3".
    actor: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None]


class DashboardSession(Base):
    """A signed-in browser: server-side, so that it can be ended before `expires_at`.

    The cookie holds the token; only its SHA-256 is kept. `csrf_token` goes in every form of
    the session's pages and is checked on every post.
    """

    __tablename__ = "dashboard_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope_unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    head_of_unit_id: Mapped[int | None] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    actor: Mapped[str] = mapped_column(String(80))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime | None]


class DigestDelivery(Base):
    """A weekly digest handed to the outbox for one recipient: once per (recipient, week).

    `recipient` is `head:<unit code>` or `recipient:<digest_recipients.id>`. A row with no
    channel records a recipient who could not be reached, so that it is counted once, not on
    every run of the sweep.
    """

    __tablename__ = "digest_deliveries"
    __table_args__ = (UniqueConstraint("recipient", "week"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    recipient: Mapped[str] = mapped_column(String(80))
    week: Mapped[str] = mapped_column(String(10))  # ISO week, e.g. 2026-W47
    scope_unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    channel: Mapped[str | None] = mapped_column(String(16))
    address: Mapped[str | None] = mapped_column(Address)
    late: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReportSnapshot(Base):
    """One part of the per unit counts of one closed week (all units), stored once so that a
    report, a digest or a dashboard page reads them instead of counting the week again.

    One row per week, time zone (a week's bounds are local midnights) and part (the
    responses', "surveys", and the complaints' and late cases', "cases": they change for
    different reasons). Triggers (`storage/snapshot_triggers.py`) delete the row on any write
    that could change its counts. A row with no `counts` is a claim: a process is counting;
    the claim's `token` lets it fill the row only if no such write deleted it meanwhile
    (`handlers.digest`, "Stored weeks").
    """

    __tablename__ = "report_snapshots"

    week: Mapped[str] = mapped_column(String(10), primary_key=True)  # ISO week, 2026-W47
    timezone: Mapped[str] = mapped_column(String(64), primary_key=True)
    part: Mapped[str] = mapped_column(String(16), primary_key=True)
    # The week's bounds in UTC: what the triggers compare with.
    week_start: Mapped[datetime]
    week_end: Mapped[datetime]
    # What the counts mean: their format and the questions counted as roles (a changed
    # questionnaire or format makes the row useless, not wrong).
    basis: Mapped[str] = mapped_column(String(200))
    token: Mapped[str] = mapped_column(String(32))
    counts: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    claimed_at: Mapped[datetime]
    computed_at: Mapped[datetime | None]


def _create_snapshot_triggers(target: Any, connection: Any, **_kw: Any) -> None:
    # After every table exists (the triggers sit on six of them); a schema built from the
    # models (tests) gets the same triggers as one built by the migrations.
    dialect = connection.dialect.name
    if dialect in {"sqlite", "postgresql"}:
        for statement in snapshot_triggers.create_statements(dialect):
            connection.execute(DDL(statement))  # type: ignore[no-untyped-call]


sa_event.listen(Base.metadata, "after_create", _create_snapshot_triggers)


# Indexes of the digest's aggregate queries (storage/repositories/reports.py), declared here
# rather than in the classes above so that the digest's schema reads as one addition.
# The answers of the week's surveys are read from this index alone (a covering index).
Index("ix_answers_tally", Answer.survey_id, Answer.factor, Answer.question_id, Answer.value_int)
Index("ix_surveys_completed_case", Survey.completed_at, Survey.case_id)
Index("ix_surveys_invited_case", Survey.invited_at, Survey.case_id)
Index("ix_escalations_opened_at", Escalation.opened_at)
Index("ix_escalations_origin_unit_id", Escalation.origin_unit_id)
Index("ix_escalation_events_at", EscalationEvent.at)
# Late resolutions of a week are counted from this index alone.
Index("ix_cases_resolved_cover", Case.resolved_at, Case.unit_id, Case.due_at, Case.delay_new_due_at)
# The few "yes" answers (the informal-payment question), found without reading every answer.
Index(
    "ix_answers_yes",
    Answer.survey_id,
    Answer.question_id,
    sqlite_where=text("value_text = 'yes'"),
    postgresql_where=text("value_text = 'yes'"),
)
Index("ix_cases_status_due_at", Case.status, Case.due_at)
# The weeks a write names all end after its earliest moment (storage/snapshot_triggers.py).
Index("ix_report_snapshots_part_week_end", ReportSnapshot.part, ReportSnapshot.week_end)
