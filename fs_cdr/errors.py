"""The one exception tree of fs_cdr.

    CdrError
    ├── ConfigError          a cdr.json problem; names the key path (``cdr.database.table``)
    └── SinkError            a write did not happen; wraps the driver's exception
        ├── RetriableError   connection lost, timeout: the same batch may succeed later
        │   └── TransientError   deadlock, serialization failure: rolled back, may succeed at once
        └── RejectedError    the sink refuses this data: retrying the same record cannot help

Driver exceptions are wrapped at the sink boundary with ``raise ... from e`` so that the
shared writer machinery decides what to do from the class alone.
"""

from __future__ import annotations


class CdrError(Exception):
    """Base of every error fs_cdr raises on purpose."""


class ConfigError(CdrError):
    """cdr.json is wrong. ``path`` is the dotted key path, e.g. ``cdr.database.dbtype``."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class SinkError(CdrError):
    """A sink could not write a batch."""


class RetriableError(SinkError):
    """The sink is unreachable, slow or busy; the batch may be written later. ``retry_after_s``:
    the sink asked for no new attempt before that many seconds (HTTP's Retry-After); the lane
    waits at least that long, whatever its backoff says."""

    def __init__(self, *args: object, retry_after_s: float = 0.0) -> None:
        super().__init__(*args)
        self.retry_after_s = retry_after_s


class TransientError(RetriableError):
    """The database rolled the batch back to resolve a conflict with another transaction (a
    deadlock, a serialization failure): the connection is fine and the same batch is retried at
    once, without backing off and without counting the sink as failing."""


class RejectedError(SinkError):
    """The sink refused the data itself (bad value, constraint): do not retry as is."""
