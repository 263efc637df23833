"""The web portal (SPEC: Case overview): a new door to the same house.

A reply typed in the browser becomes an ``InboundMessage`` that goes through
``decide`` and ``apply_decision`` like a mail; a Close button is the status change
``cases set-status`` makes. This package sits beside ``inbound/``, above ``store/``
and ``outbound/``, and imports only from below.

- ``scope``: who is signed in and what they may see (the rules are ``core.access``)
- ``pages``: what a page shows, read in a fixed number of queries
- ``actions``: what a button does, through the decision code
- ``app``: the Starlette routes, forms, CSRF and cookies
- ``server``: uvicorn in a thread, for ``helpdesk run`` and ``helpdesk web``
"""
