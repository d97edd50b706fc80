"""Running the app under uvicorn with a graceful, bounded shutdown (docs/serving.md).

On the first SIGTERM (or Ctrl-C) the server **drains**:

1. the connections it had accepted before the signal get their next request answered
   as usual (a request in flight, or one whose bytes are still being read);
2. every other request -- on a connection the kernel had queued but the server had not
   yet taken, on a new connection, or a further one on a kept-alive connection -- is
   answered at once with 503 ``the server is shutting down`` (``Retry-After: 1``,
   ``Connection: close``) instead of being reset; the listening socket stays open for
   that until the drain ends;
3. the batcher stops waiting for company: every batch starts at once;
4. once no request is in flight and none has arrived for ``QUIET_S`` seconds, uvicorn's
   own shutdown runs: the listening socket is closed, idle connections are closed, the
   batcher's worker stops, and the process exits (code 143 after SIGTERM).

Deadline ``shutdown_timeout`` (``--shutdown-timeout``, default 20 s): at
``shutdown_timeout - min(1, shutdown_timeout / 2)`` seconds the requests still waiting in
the queue are answered 503 and the shutdown proper starts; at
``shutdown_timeout - min(0.5, shutdown_timeout / 4)`` seconds the requests still in flight
(their batch still running) are answered 503 too; at ``shutdown_timeout`` seconds a
watchdog ends the process (exit code 128 + the signal) even if that batch is still
running.  A second signal ends the drain at once (the requests in flight are still
waited for, within the deadline).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

DEFAULT_SHUTDOWN_TIMEOUT = 20.0
QUIET_S = 0.5           # no new request for this long (and none in flight): the drain is over


class Drain:
    """The shutdown state the ASGI middleware and the server share (event loop only,
    except ``begin``, which the signal handler calls between two bytecodes of the loop's
    thread)."""

    def __init__(self) -> None:
        self.since: float | None = None      # time.monotonic() of the first signal
        self.inflight = 0                    # HTTP requests inside the app
        self.last_event = 0.0                # last request start or end (monotonic)
        self.refused = 0                     # requests answered 503 because of the drain
        self._accepted: set = set()          # clients (host, port) of the connections open at the signal

    @property
    def draining(self) -> bool:
        return self.since is not None

    def begin(self, accepted=()) -> None:
        """The signal came; ``accepted``: the (host, port) of every connection open then."""
        if self.since is None:
            self._accepted = {tuple(c) for c in accepted if c}
            self.since = time.monotonic()
            self.last_event = self.since

    def admit(self, client) -> bool:
        """Whether a request that starts now is answered as usual: before the signal every
        one, after it the first request of each connection that was open at the signal."""
        if self.since is None:
            return True
        key = tuple(client) if client else None
        if key in self._accepted:
            self._accepted.discard(key)
            return True
        return False

    def touch(self) -> None:
        self.last_event = time.monotonic()


def _server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server with the drain described in the module docstring."""

        def __init__(self, config, app_state: Any, shutdown_timeout: float) -> None:
            super().__init__(config)
            self.drain: Drain = app_state.drain
            self.batcher = app_state.batcher
            self.timeout = float(shutdown_timeout)
            self.answer_by = self.timeout - min(1.0, self.timeout / 2)
            self._drain_started = self._rejected = False
            self._watchdog: threading.Timer | None = None

        def handle_exit(self, sig: int, frame) -> None:          # noqa: ANN001 - uvicorn's signature
            if self.drain.draining or self.should_exit:
                super().handle_exit(sig, frame)                 # a second signal: on to the shutdown
                return
            captured = getattr(self, "_captured_signals", None)
            if captured is not None:
                captured.append(sig)                            # uvicorn re-raises it at the end: exit 143
            self.drain.begin(getattr(c, "client", None) for c in list(self.server_state.connections))
            self._watchdog = threading.Timer(self.timeout, self._deadline_passed, args=(128 + int(sig),))
            self._watchdog.daemon = True
            self._watchdog.start()
            print(f"sidkit serve: signal {int(sig)}: draining (requests already accepted are answered, new "
                  "ones get 503); "
                  f"exit within {self.timeout:g} s", file=sys.stderr, flush=True)

        def _deadline_passed(self, code: int) -> None:
            print(f"sidkit serve: the shutdown deadline of {self.timeout:g} s passed (a batch was still running; "
                  f"{self.drain.inflight} request(s) unanswered); exiting now", file=sys.stderr, flush=True)
            os._exit(code)

        async def on_tick(self, counter: int) -> bool:
            if await super().on_tick(counter):
                self._set_remaining()
                return True
            d = self.drain
            if not d.draining:
                return False
            if not self._drain_started:
                self._drain_started = True
                self.batcher.drain()
            now = time.monotonic()
            late = now - d.since >= self.answer_by
            if late and not self._rejected:
                self._rejected = True
                self.batcher.reject_waiting("the server is shutting down")
            if late or (d.inflight == 0 and now - d.last_event >= QUIET_S):
                self._set_remaining()
                return True
            return False

        def _set_remaining(self) -> None:
            """uvicorn's wait for requests in flight: what is left of the deadline."""
            if self.drain.since is not None:
                left = self.timeout - (time.monotonic() - self.drain.since)
                self.config.timeout_graceful_shutdown = max(0.1, left - min(0.5, self.timeout / 4))

    return DrainingServer


def run(app, *, host: str, port: int, log_level: str = "info",
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
    """Serve ``app`` (from :func:`sidkit.serve.app.create_app`) on ``host:port`` until a
    signal, then drain and exit within ``shutdown_timeout`` seconds."""
    import uvicorn

    from ..errors import ConfigError

    if not shutdown_timeout > 0:
        raise ConfigError(f"shutdown_timeout must be > 0 seconds, got {shutdown_timeout!r}",
                          "use e.g. --shutdown-timeout 20")
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=shutdown_timeout)
    server = _server_class()(config, app.state, shutdown_timeout)
    server.run()
    if not server.started:
        raise ConfigError(f"the server could not start on {host}:{port} (the reason is logged above, e.g. the "
                          "address is in use)", "pick another --port, or stop what listens there")
