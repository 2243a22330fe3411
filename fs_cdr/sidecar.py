"""The sidecar source: the same engine outside FreeSWITCH, fed by its event socket.

For a FreeSWITCH without mod_python3. The engine and sinks are the ones that run inside; only the
source differs. The event socket keeps no backlog: hangups while the sidecar is disconnected (it
reconnects with backoff when FreeSWITCH restarts) are not seen — the in-process module has no such gap.
"""

from __future__ import annotations

import logging
import threading

from .channel import HANGUP_EVENT
from .engine import Engine
from .esl import EslError, EventSocket, EventSocketConfig
from .retry import Backoff

log = logging.getLogger("fs_cdr.sidecar")


def run_sidecar(engine: Engine, socket_config: EventSocketConfig, stop: threading.Event,
                backoff: Backoff = Backoff(base_s=0.5, cap_s=10.0)) -> None:
    """Consume CHANNEL_HANGUP_COMPLETE from the event socket until ``stop`` is set."""
    failures = 0
    while not stop.is_set():
        try:
            socket = EventSocket(socket_config.host, socket_config.port, socket_config.password, timeout_s=5.0)
        except (OSError, EslError) as error:
            failures += 1
            if failures in (1, 10) or failures % 100 == 0:
                log.warning("event socket %s:%d: %s (retrying)", socket_config.host, socket_config.port, error)
            stop.wait(backoff.compute(failures))
            continue
        try:
            # Only hangups: FreeSWITCH's shutdown does not stop a sidecar, which waits for it to return.
            socket.subscribe(HANGUP_EVENT)
            log.info("connected to FreeSWITCH's event socket at %s:%d", socket_config.host, socket_config.port)
            failures = 0
            while not stop.is_set():
                event = socket.next_event(timeout_s=1.0)
                if event is not None:
                    engine.handle(event)
        except (OSError, EslError) as error:
            log.warning("event socket lost: %s (reconnecting)", error)
        finally:
            socket.close()
