"""The composition root: settings, database, clock and templates, built once.

Everything that needs one of these gets it from an ``App`` passed in; there are
no module-level globals to reach for. What only some commands need (templates,
the knowledge base, the core's policies) is built on first use, so a command that
does not need it never imports it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from helpdesk.clock import Clock, SystemClock
from helpdesk.config import Settings, load_settings
from helpdesk.store import db

if TYPE_CHECKING:
    from helpdesk.core.decide import Policy
    from helpdesk.core.timers import TimerPolicy
    from helpdesk.kb.library import KnowledgeBase
    from helpdesk.mail.templates import TemplateRenderer


@dataclass
class App:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    reads: sessionmaker[Session]  # for work that only reads: never takes the write lock
    clock: Clock = field(default_factory=SystemClock)
    #: The key of reply tokens and our Message-IDs once known to be committed: it never
    #: changes once made, so a process reads it once (``store.cases.remember_secret_key``).
    secret_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock | None = None) -> App:
        engine = db.make_engine(settings.database_url, settings.database.lock_timeout)
        return cls(settings=settings, engine=engine, sessions=db.make_sessions(engine),
                   reads=db.make_read_sessions(engine), clock=clock or SystemClock())

    @classmethod
    def from_config(cls, path: Path | str, clock: Clock | None = None) -> App:
        return cls.from_settings(load_settings(path), clock)

    @cached_property
    def read_engine(self) -> Engine:
        """Core connections that only read (``reads`` as connections): no write lock."""
        return db.read_only(self.engine)

    @cached_property
    def renderer(self) -> TemplateRenderer:
        """Built on first use: commands that send nothing (``status``, ``cases``) never
        import Jinja2."""
        from helpdesk.mail.templates import BUILTIN_TEMPLATES, TemplateRenderer
        overrides = self.settings.helpdesk.templates
        return TemplateRenderer(BUILTIN_TEMPLATES,
                                self.settings.resolve(overrides) if overrides else None)

    @cached_property
    def policy(self) -> Policy:
        """The core's view of the settings, built once rather than per message."""
        from helpdesk.policy import core_policy
        return core_policy(self.settings)

    @cached_property
    def knowledge_base(self) -> KnowledgeBase:
        """The articles, searched in process and re-read when the folder changes."""
        from helpdesk.kb.library import KnowledgeBase
        kb = self.settings.knowledge_base
        return KnowledgeBase(self.settings.resolve(kb.path) if kb.path else None, kb.base_url)

    @cached_property
    def timer_policy(self) -> TimerPolicy:
        from helpdesk.policy import timer_policy
        return timer_policy(self.settings)

    def close(self) -> None:
        self.engine.dispose()
