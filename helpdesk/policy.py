"""Turn the loaded settings into the plain policy values the pure core takes."""
from __future__ import annotations

from helpdesk.config import PUBLIC_MAIL_DOMAINS, Settings
from helpdesk.core.access import Directory
from helpdesk.core.classify import HygienePolicy
from helpdesk.core.decide import CategoryPolicy, Policy
from helpdesk.core.lifecycle import Lifecycle
from helpdesk.core.matching import StaffDirectory
from helpdesk.core.selfservice import SelfServicePolicy
from helpdesk.core.timers import TimerPolicy
from helpdesk.mail.compose import LOOP_HEADER


def core_policy(settings: Settings) -> Policy:
    categories = tuple(
        CategoryPolicy(name=name, prefix=cat.prefix, lifecycle=Lifecycle(cat.lifecycle),
                       addresses=tuple(a.lower() for a in cat.addresses),
                       has_activation=cat.activation is not None,
                       duplicate_key=cat.duplicate_key,
                       notify=tuple(a.lower() for a in cat.notify))
        for name, cat in settings.categories.items())
    return Policy(
        categories=categories,
        staff=StaffDirectory(frozenset(settings.staff)),
        own_addresses=settings.own_addresses,
        hygiene=HygienePolicy(
            own_domain=settings.helpdesk.domain.lower(),
            loop_header=LOOP_HEADER,
            loop_value=settings.helpdesk.address.lower(),
            machine_senders=tuple(settings.hygiene.machine_senders),
            own_addresses=settings.own_addresses,
        ),
        unknown_sender=settings.threading.unknown_sender,
        participants_per_case=settings.limits.participants_per_case,
        participants_per_message=settings.limits.participants_per_message,
        require_staff_auth=settings.trust.require_staff_auth,
        recipients_per_mail=settings.limits.recipients_per_mail,
        new_cases_per_sender=tuple(settings.limits.new_cases_per_sender),
        public_domains=frozenset(settings.web.public_domains if settings.web
                                 else PUBLIC_MAIL_DOMAINS),
        self_service=self_service_policy(settings),
    )


def self_service_policy(settings: Settings) -> SelfServicePolicy:
    from helpdesk.kb.calibration import min_score
    kb = settings.knowledge_base
    return SelfServicePolicy(suggestions=kb.suggestions if kb.path else 0,
                             min_score=min_score(kb.min_score),
                             hold_staff_notice=kb.hold_staff_notice)


def timer_policy(settings: Settings) -> TimerPolicy:
    t = settings.timers
    return TimerPolicy(reminders=tuple(t.reminders), close_after=t.close_after,
                       resolved_close_after=t.resolved_close_after)


def access_directory(settings: Settings) -> Directory:
    """Who is staff and which domains are companies, for the portal and `#cases`."""
    web = settings.web
    return Directory(
        staff=StaffDirectory(frozenset(settings.staff)),
        notify=frozenset(a.lower() for cat in settings.categories.values() for a in cat.notify),
        company_domains=web.company_domains if web else True,
        public_domains=frozenset(web.public_domains if web else PUBLIC_MAIL_DOMAINS),
    )
