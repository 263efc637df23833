"""The tables as SQLAlchemy Core sees them, for the hot path.

An inbound mail's transaction (``inbound.ingest``, ``store.apply``,
``outbound.queue``) reads rows and writes them with Core statements, which
SQLAlchemy compiles once and caches: no identity map, no unit of work, one
``executemany`` per table. ``store.orm`` stays the one definition of the schema
(and the ORM for the commands and the web); these are its tables.
"""
from __future__ import annotations

from sqlalchemy import Table

from helpdesk.store import orm


def _table(model: type[orm.Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


attachment = _table(orm.Attachment)
auto_mail = _table(orm.AutoMail)
case = _table(orm.Case)
case_address = _table(orm.CaseAddress)
case_link = _table(orm.CaseLink)
event = _table(orm.Event)
hook_run = _table(orm.HookRun)
inbound = _table(orm.Inbound)
key_value = _table(orm.KeyValue)
message = _table(orm.Message)
outbox = _table(orm.Outbox)
participant = _table(orm.Participant)
ref_counter = _table(orm.RefCounter)
suggestion = _table(orm.Suggestion)
web_token = _table(orm.WebToken)
