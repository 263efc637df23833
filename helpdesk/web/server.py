"""Serve the portal with uvicorn in a thread, beside the daemon's other loops.

uvicorn installs signal handlers only in the main thread, so here it leaves SIGTERM
to the daemon, which stops it by setting ``should_exit`` with everything else.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import uvicorn

from helpdesk.app import App
from helpdesk.web.app import make_app

log = logging.getLogger(__name__)


class WebServer:
    def __init__(self, app: App, wake_sender: Callable[[], None] = lambda: None) -> None:
        web = app.settings.web
        assert web is not None, "the web portal needs a `web:` section"
        self.url = web.effective_base_url
        config = uvicorn.Config(make_app(app, wake_sender), host=web.host, port=web.port,
                                log_level="warning", access_log=False, lifespan="off",
                                server_header=False, proxy_headers=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="web", daemon=True)
        self.host, self.port = web.host, web.port

    def start(self, timeout: float = 10.0) -> WebServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the web portal could not listen on {self.host}:{self.port}")
            time.sleep(0.02)
        log.info("web portal on http://%s:%s (links in mail: %s)", self.host, self.port, self.url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=timeout)
