"""HTTP(S) POST, as mod_json_cdr does, through urllib3's keep-alive connection pool.

``"http": {"url": ["https://billing-1/cdr", "https://billing-2/cdr"], "format": "ndjson"}``

- Body: fs_cdr's JSON document per record (as on Redis): a batch per request as NDJSON (the
  default: the fast path) or as a JSON array, or one record per request (``"format": "single"``).
  ``"document": "json_cdr"`` sends mod_json_cdr's shape instead (``core-uuid``, ``switchname``,
  ``channel_data``, ``variables``, the values URL-encoded as mod_json_cdr's ``encode-values``
  default does); it needs ``"details": true``. Optional gzip (``Content-Encoding: gzip``).
- Headers: ``Idempotency-Key`` — the record's uuid for a one-record request, and for a batch
  ``batch-`` and a SHA-256 of the batch's uuids, so an identical retry carries the same key (a
  receiver dedupes records by the ``uuid`` inside each document); ``X-CDR-Count``; basic auth
  (``username``/``password`` or the URL's), a bearer token, any ``headers``; with ``hmac_secret``,
  ``X-CDR-Timestamp`` (Unix seconds) and ``X-CDR-Signature: sha256=<hex>``, the HMAC-SHA256 of
  ``<timestamp>.<body as sent>``, so a receiver can refuse forged or replayed posts.
- Delivery: written only on a 2xx answer. 408, 429 (its ``Retry-After`` is honoured: that URL gets
  nothing before then), 5xx, timeouts, refused or reset connections are retriable: the next URL
  is tried (failover in order; the one that answered is kept), and when none took the batch the
  lane retries with backoff and spools, as for any outage. Any other 4xx sets the records aside
  (``rejected.jsonl``) with the status and the first bytes of the answer — except 401, 403, 407 and
  every 3xx: those are the configuration's fault (a credential, a URL that moved), which an
  operator fixes, never the record's, so the records are held (spooled) like an outage and the
  answer is logged at ERROR.

The sink runs in the source's process unless ``"worker_process": true``: urllib3 is pure Python
(no driver that could crash the process), every wait has a timeout, and a batch is one request.

urllib3 (2.x): a small, well-kept client with a per-host keep-alive pool, explicit timeouts and no
retries of its own (the lane owns retries), with certificate options exposed directly.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import hmac
import logging
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar
from urllib.parse import unquote, urlunsplit

from ..channel import dumpb, loads
from ..config import (
    BatchSettings,
    Section,
    SectionContext,
    mask_secrets,
    option_file,
    read_batch,
    split_url,
)
from ..errors import ConfigError, RejectedError, RetriableError
from ..record import CallRecord, record_json

if TYPE_CHECKING:
    from ..config import CdrConfig
    from . import Target

log = logging.getLogger("fs_cdr.sinks.http")

FORMATS = ("ndjson", "array", "single")
DOCUMENTS = ("record", "json_cdr")
CONTENT_TYPES = {"ndjson": "application/x-ndjson", "array": "application/json", "single": "application/json"}
#: answers that are the configuration's fault: held like an outage, never set aside
OPERATOR_FAULTS = frozenset((401, 403, 407))
#: the first bytes of a refusing answer kept with the refused record
ANSWER_SHOWN = 200
#: a Retry-After longer than this is taken as this
RETRY_AFTER_CAP_S = 600.0
#: seconds between two ERROR lines for the same operator fault
LOUD_INTERVAL_S = 10.0


@dataclass(frozen=True)
class HttpConfig:
    """The ``http`` object: each batch POSTed to the first URL that takes it."""

    urls: tuple[str, ...] = ()
    format: str = "ndjson"
    document: str = "record"
    #: json_cdr documents: values URL-encoded, as mod_json_cdr's ``encode-values`` (default true)
    encode_values: bool = True
    gzip: bool = False
    username: str = ""
    password: str = field(default="", repr=False)
    bearer: str = field(default="", repr=False)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    hmac_secret: str = field(default="", repr=False)
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_verify: bool = True
    name: str = "http"
    #: in the source's process by default: a batch is one request whose body is joined in one copy,
    #: so the sink's Python per record is next to nothing, and a worker would only add a copy of
    #: every document (bench/message_sinks.py measured 0.83 of the raw client here, 0.74 in a worker)
    batch: BatchSettings = field(default_factory=lambda: BatchSettings(worker_process=False))
    key: ClassVar[str] = "http"

    def describe(self) -> str:
        shown = [_without_secrets(url) for url in self.urls]
        more = f" (then {', '.join(shown[1:])})" if len(shown) > 1 else ""
        return mask_secrets(f"POST {shown[0]}{more} {self.format} of {self.document}", self.secrets())

    def secrets(self) -> tuple[str, ...]:
        found = [self.password, self.bearer, self.hmac_secret, *(value for _, value in self.headers)]
        for url in self.urls:
            parts = split_url(url, "", "")[0]
            found += [unquote(parts.password or ""), parts.query]
        return tuple(secret for secret in found if secret)


def _without_secrets(url: str) -> str:
    """The URL as shown in status and logs: no user or password, no query string."""
    parts = split_url(url, "", "")[0]
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def parse_section(value: object, path: str, context: SectionContext) -> tuple[HttpConfig]:
    section = Section(path, value)
    raw = section.get("url")
    urls = [raw] if isinstance(raw, str) else raw
    if not urls or not isinstance(urls, list) or not all(isinstance(url, str) and url for url in urls):
        raise ConfigError(section.key("url"), "expected a URL or a list of URLs (tried in order)")
    username, password = "", ""
    for index, url in enumerate(urls):
        parts, _ = split_url(url, f"{section.key('url')}[{index}]", "http(s)://host[:port]/path", ("http", "https"))
        if parts.username and not username:
            username, password = unquote(parts.username), unquote(parts.password or "")
    file_format = section.text("format", "ndjson")
    if file_format not in FORMATS:
        raise ConfigError(section.key("format"), f"one of {', '.join(FORMATS)}")
    document = section.text("document", "record")
    if document not in DOCUMENTS:
        raise ConfigError(section.key("document"), f"one of {', '.join(DOCUMENTS)}")
    headers_raw = section.get("headers") or {}
    if not isinstance(headers_raw, dict) or not all(
            isinstance(name, str) and isinstance(text, str) and re.match(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+\Z", name)
            and "\n" not in text and "\r" not in text for name, text in headers_raw.items()):
        raise ConfigError(section.key("headers"), "expected an object of header names to text values")
    tls = {}
    for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        text = section.text(name)
        tls[name] = option_file(text, name, section.key(name), context.base) if text else ""
    if tls["tls_key_file"] and not tls["tls_cert_file"]:
        raise ConfigError(section.key("tls_key_file"), "a client key needs its certificate: set tls_cert_file")
    config = HttpConfig(
        urls=tuple(urls),
        format=file_format,
        document=document,
        encode_values=section.boolean("encode_values", True),
        gzip=section.boolean("gzip", False),
        username=section.text("username", username),
        password=section.text("password", password),
        bearer=section.text("bearer"),
        headers=tuple(headers_raw.items()),
        hmac_secret=section.text("hmac_secret"),
        tls_verify=section.boolean("tls_verify", True),
        name=section.text("name", "http"),
        batch=read_batch(section, BatchSettings(worker_process=False)),
        **tls,
    )
    section.done()
    if config.bearer and config.username:
        raise ConfigError(section.key("bearer"), "either basic auth (username/password) or a bearer token, not both")
    return (config,)


def target(settings: HttpConfig, config: CdrConfig) -> Target:
    from . import Target

    if settings.document == "json_cdr" and not config.details:
        raise ConfigError("cdr.http.document", "json_cdr documents carry the channel variables: set \"details\": true")
    return Target(settings.name, settings.describe(), lambda: HttpSink(settings), settings.batch, coalesce=False,
                  encode=HttpEncoder(settings))


#: FreeSWITCH's SWITCH_URL_UNSAFE, and every byte outside printable ASCII (switch_url_encode)
_URL_UNSAFE = re.compile(rb"[^\x20-\x7e]|[\r\n #&+:;<=>?@\[\\\]^`{|}\"]|%(?![0-9A-F]{2})")


def url_encode(text: str) -> str:
    """A value as mod_json_cdr's ``encode-values`` writes it (switch_url_encode: uppercase %XX, a
    ``%`` already followed by two hex digits kept)."""
    raw = text.encode("utf-8", "surrogatepass")
    if not _URL_UNSAFE.search(raw):
        return text
    return _URL_UNSAFE.sub(lambda found: b"%%%02X" % found.group()[0], raw).decode("ascii")


class HttpEncoder:
    """A record as the sink sends it (made ahead by the lane: writer.EncodedSink): its uuid and
    its document. A class, not a closure, so the sink it belongs to can go to a worker process."""

    def __init__(self, settings: HttpConfig) -> None:
        self.json_cdr = settings.document == "json_cdr"
        self.encode_values = settings.encode_values

    def __call__(self, record: CallRecord) -> tuple[str, bytes]:
        uuid = str(record["uuid"])
        if not self.json_cdr:
            return uuid, record_json(record)
        details = record.get("details")
        variables = loads(details) if isinstance(details, str) and details else {}
        if self.encode_values:
            variables = {name: url_encode(value) if isinstance(value, str) else value
                         for name, value in variables.items()}
        return uuid, dumpb({
            "core-uuid": record.get("core_uuid"),
            "switchname": record.get("switchname"),
            # mod_json_cdr writes the CDR in the reporting state (CS_REPORTING, number 11)
            "channel_data": {"state": "CS_REPORTING", "direction": record.get("direction"), "state_number": "11"},
            "variables": variables,
        })


class HttpSink:
    """POSTs each batch; one keep-alive connection per URL (one sink per writer thread)."""

    def __init__(self, config: HttpConfig) -> None:
        self.config = config
        self.encode = HttpEncoder(config)
        self._pools: list[Any] = []
        self._paths: list[str] = []
        self._shown: list[str] = []
        #: the URL that took the last request: tried first next time
        self._current = 0
        #: monotonic time before which a URL that answered Retry-After gets nothing
        self._not_before: dict[int, float] = {}
        self._loud: dict[tuple[int, int], float] = {}
        self._headers: dict[str, str] = {}

    def open(self) -> None:
        import urllib3

        settings = self.config
        timeout = urllib3.Timeout(connect=settings.batch.timeout_s, read=settings.batch.timeout_s)
        headers = {"Content-Type": CONTENT_TYPES[settings.format], "User-Agent": "fs_cdr"}
        if settings.username or settings.password:
            credentials = f"{settings.username}:{settings.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode("ascii")
        if settings.bearer:
            headers["Authorization"] = f"Bearer {settings.bearer}"
        if settings.gzip:
            headers["Content-Encoding"] = "gzip"
        headers.update(settings.headers)
        self._headers = headers
        self.close()
        for url in settings.urls:
            parts = split_url(url, "", "")[0]
            options: dict[str, Any] = {}
            if parts.scheme == "https":
                options = {"cert_reqs": "CERT_REQUIRED" if settings.tls_verify else "CERT_NONE",
                               "ca_certs": settings.tls_ca_file or None, "cert_file": settings.tls_cert_file or None,
                               "key_file": settings.tls_key_file or None}
                if not settings.tls_verify:
                    options["assert_hostname"] = False
            host = _without_secrets(url)
            pool = urllib3.connection_from_url(host, maxsize=1, block=False, timeout=timeout, retries=False,
                                               **options)
            self._pools.append(pool)
            self._paths.append(urlunsplit(("", "", parts.path or "/", parts.query, "")))
            self._shown.append(host)
        self._reach()

    def _reach(self) -> None:
        """Connect (and for HTTPS, verify the certificate) to the first URL that takes a connection,
        so that ``fs-cdr check`` says what is wrong before a record needs it; none: retriable."""
        failures = []
        for index, pool in enumerate(self._pools):
            try:
                connection = pool._new_conn()  # urllib3's own connection class, with the pool's TLS options
                connection.connect()
                connection.close()
                return
            except Exception as error:  # noqa: BLE001 - refused, unreachable, TLS: the receiver's side
                failures.append(f"{self._shown[index]}: {type(error).__name__}: {error}")
        self.close()
        raise RetriableError("; ".join(failures))

    def write(self, records: Sequence[CallRecord]) -> None:
        self.write_encoded([self.encode(record) for record in records])

    def write_encoded(self, messages: Sequence[tuple[Any, ...]], meanwhile: Callable[[], None] | None = None) -> None:
        if not self._pools:
            raise RetriableError("not open")
        settings = self.config
        if settings.format == "single":
            for uuid, document in messages:
                self._post(bytes(document), uuid, 1)
        elif messages:
            documents = [message[-1] for message in messages]
            if settings.format == "ndjson":
                body = b"\n".join(documents) + b"\n"
            else:
                body = b"[" + b",".join(documents) + b"]"
            digest = hashlib.sha256("\n".join(str(message[0]) for message in messages).encode()).hexdigest()
            self._post(body, f"batch-{digest[:40]}", len(messages))
        if meanwhile is not None:
            meanwhile()

    def _post(self, body: bytes, key: str, count: int) -> None:
        settings = self.config
        if settings.gzip:
            body = gzip.compress(body, compresslevel=1, mtime=0)
        headers = dict(self._headers)
        headers["Idempotency-Key"] = key
        headers["X-CDR-Count"] = str(count)
        if settings.hmac_secret:
            stamp = str(int(time.time()))
            signature = hmac.new(settings.hmac_secret.encode(), stamp.encode() + b"." + body, hashlib.sha256)
            headers["X-CDR-Timestamp"] = stamp
            headers["X-CDR-Signature"] = "sha256=" + signature.hexdigest()
        failures = []
        count_urls = len(self._pools)
        for step in range(count_urls):
            index = (self._current + step) % count_urls
            shown = self._shown[index]
            wait = self._not_before.get(index, 0.0) - time.monotonic()
            if wait > 0:
                failures.append(f"{shown}: Retry-After, {wait:.1f} s to go")
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # InsecureRequestWarning, when tls_verify is off by choice
                    response = self._pools[index].urlopen("POST", self._paths[index], body=body, headers=headers,
                                                          retries=False, redirect=False, assert_same_host=False)
            except Exception as error:  # noqa: BLE001 - timeouts, refused, reset, TLS: all the receiver's side
                failures.append(f"{shown}: {type(error).__name__}: {error}")
                continue
            status = response.status
            if 200 <= status < 300:
                self._current = index
                return
            answer = bytes(response.data[:ANSWER_SHOWN])
            if status in (408, 429) or status >= 500:
                delay = _retry_after(response.headers.get("Retry-After"))
                if delay:
                    self._not_before[index] = time.monotonic() + delay
                failures.append(f"{shown}: HTTP {status}{f', Retry-After {delay:.0f} s' if delay else ''}")
                continue
            if status in OPERATOR_FAULTS or 300 <= status < 400:
                self._shout(index, status, answer, response.headers.get("Location", ""))
                failures.append(f"{shown}: HTTP {status} (fix the configuration: records are held)")
                continue
            raise RejectedError(f"{shown} refused the record(s): HTTP {status}: {answer!r}")
        # every URL asked for time (Retry-After): the lane waits until the first of them may be tried
        now = time.monotonic()
        waits = [self._not_before.get(index, 0.0) - now for index in range(count_urls)]
        hold = min(waits) if all(wait > 0 for wait in waits) else 0.0
        raise RetriableError("; ".join(failures), retry_after_s=hold)

    def _shout(self, index: int, status: int, answer: bytes, location: str) -> None:
        """An answer only an operator can fix: logged at ERROR (at most every 10 s per URL and status)."""
        now = time.monotonic()
        if now - self._loud.get((index, status), -LOUD_INTERVAL_S) < LOUD_INTERVAL_S:
            return
        self._loud[(index, status)] = now
        what = f"a redirect (to {_without_secrets(location)}): fix the URL" if 300 <= status < 400 and location \
            else "a redirect: fix the URL" if 300 <= status < 400 else "refused the credentials: fix them"
        log.error("sink %s: %s answered HTTP %d, %s; records are held in the spool meanwhile (%r)",
                  self.config.name, self._shown[index], status, what,
                  mask_secrets(answer.decode("utf-8", "replace"), self.config.secrets()))

    def close(self) -> None:
        pools, self._pools, self._paths, self._shown = self._pools, [], [], []
        for pool in pools:
            with contextlib.suppress(Exception):  # closing a broken connection may fail any way it likes
                pool.close()


def _retry_after(text: str | None) -> float:
    """Retry-After's seconds (a number, or an HTTP date), capped; 0 when absent or unreadable."""
    if not text:
        return 0.0
    text = text.strip()
    if text.isdigit():
        return min(float(text), RETRY_AFTER_CAP_S)
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, min(parsedate_to_datetime(text).timestamp() - time.time(), RETRY_AFTER_CAP_S))
    except (TypeError, ValueError, OverflowError):
        return 0.0
