"""Files: one line per record, CSV in mod_cdr_csv's template style or JSON lines, fsynced per batch.

``"file": {"path": "/var/log/freeswitch/cdr-csv/cdr-%Y-%m-%d.csv", "format": "csv", "template": "example"}``

- CSV lines are mod_cdr_csv's: a template of ``${name}`` references, filled the way FreeSWITCH's
  ``switch_channel_expand_variables`` fills them for mod_cdr_csv — the value as it is, no quoting
  or escaping of its own (the template's quotes are the only ones; a ``"`` inside a caller name is
  written as it is, as mod_cdr_csv writes it). ``"escape": "csv"`` doubles ``"`` inside values
  instead (RFC 4180), for readers that need it. A name is a record column (``caller_id_name``,
  ``uuid``, ``billsec``, a ``fields`` column...) or else a channel variable read from ``details``
  (``start_stamp``, ``accountcode``, ``read_codec``...), as FreeSWITCH looks up a variable and then
  the caller profile. Only the template's own names are looked up.
- JSON lines carry fs_cdr's JSON document per record (as on Redis).
- A batch is one gathering ``writev`` of its lines (no joined copy of the batch is made) to a file
  opened ``O_APPEND``, then ``fsync``: only then is it counted written. A failed write (``ENOSPC``,
  ``EACCES``, ``EIO``...) cuts the file back to where the batch began and is a
  :class:`~fs_cdr.errors.RetriableError`: the records go to the spool like any sink outage, and the
  file never holds half a batch.
- Rotation: by date in the path (``strftime``, in local time like mod_cdr_csv, of the moment a batch
  is written), by size (``max_bytes``), and by ``python fs_cdr rotate`` / ``fs-cdr rotate``, which
  renames the current file to ``<path>.YYYY-MM-DD-HH-MM-SS`` (mod_cdr_csv's suffix) from whatever
  process runs it. The writer sees before each batch that its file was moved (the path names another
  file, or none) and opens a new one, so ``logrotate``'s plain ``mv`` works too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from ..channel import loads
from ..config import BatchSettings, Section, SectionContext, read_batch
from ..errors import ConfigError, RetriableError
from ..fields import VARIABLE, parse_template
from ..record import CallRecord, record_json
from .worker import write_parts

if TYPE_CHECKING:
    from ..config import CdrConfig
    from . import Target

#: mod_cdr_csv's templates: ``default`` is compiled into mod_cdr_csv.c (what it writes with no
#: configuration), ``example`` and ``sql`` are in FreeSWITCH's vanilla cdr_csv.conf.xml (whose
#: ``default-template`` is ``example``). mod_cdr_csv adds the newline a configured template lacks.
TEMPLATES = {
    "default": '"${caller_id_name}","${caller_id_number}","${destination_number}","${context}","${start_stamp}",'
               '"${answer_stamp}","${end_stamp}","${duration}","${billsec}","${hangup_cause}","${uuid}",'
               '"${bleg_uuid}", "${accountcode}"\n',
    "example": '"${caller_id_name}","${caller_id_number}","${destination_number}","${context}","${start_stamp}",'
               '"${answer_stamp}","${end_stamp}","${duration}","${billsec}","${hangup_cause}","${uuid}",'
               '"${bleg_uuid}","${accountcode}","${read_codec}","${write_codec}"\n',
    "sql": 'INSERT INTO cdr VALUES ("${caller_id_name}","${caller_id_number}","${destination_number}",'
           '"${context}","${start_stamp}","${answer_stamp}","${end_stamp}","${duration}","${billsec}",'
           '"${hangup_cause}","${uuid}","${bleg_uuid}", "${accountcode}");\n',
}
FORMATS = ("csv", "jsonl")
ESCAPES = ("none", "csv")
LEGS = ("a", "b", "ab")
#: mod_cdr_csv's suffix for a rotated file
ROTATED_SUFFIX = "%Y-%m-%d-%H-%M-%S"


@dataclass(frozen=True)
class FileConfig:
    """The ``file`` object: records appended to a file, one line each, fsynced per batch."""

    #: where, with ``strftime`` codes (``cdr-%Y-%m-%d.csv``): a new file when the date in it changes
    path: str = ""
    format: str = "csv"
    #: the CSV template's text (a shipped template's name is resolved when parsed)
    template: str = TEMPLATES["default"]
    #: ``none``: values as they are (mod_cdr_csv); ``csv``: ``"`` inside a value doubled
    escape: str = "none"
    #: rotate when a batch would take the file past this size (0: never by size)
    max_bytes: int = 0
    #: which legs get a line: ``a``, ``b`` or ``ab`` (mod_cdr_csv's ``legs``; its default is ``a``)
    legs: str = "ab"
    name: str = "file"
    batch: BatchSettings = field(default_factory=lambda: BatchSettings(worker_process=False))
    key: ClassVar[str] = "file"

    def describe(self) -> str:
        return f"{self.format} file {self.path}"

    def secrets(self) -> tuple[str, ...]:
        return ()

    def path_for(self, when: float) -> str:
        return time.strftime(self.path, time.localtime(when)) if "%" in self.path else self.path


def parse_section(value: object, path: str, context: SectionContext) -> tuple[FileConfig]:
    section = Section(path, value)
    file_path = section.text("path")
    if not file_path:
        raise ConfigError(section.key("path"), "missing: the file to append to, e.g. \".../cdr-%Y-%m-%d.csv\"")
    file_path = os.path.join(context.base, file_path)
    try:
        time.strftime(file_path)
    except ValueError as error:
        raise ConfigError(section.key("path"), f"not a strftime pattern: {error}") from error
    default_format = "jsonl" if file_path.endswith((".jsonl", ".json", ".ndjson")) else "csv"
    file_format = section.text("format", default_format)
    if file_format not in FORMATS:
        raise ConfigError(section.key("format"), f"one of {', '.join(FORMATS)}")
    template = section.text("template", "default")
    if file_format == "jsonl" and section.value.get("template") is not None:
        raise ConfigError(section.key("template"), "a template is for \"format\": \"csv\"")
    template = TEMPLATES.get(template, template)
    if "${" not in template:
        raise ConfigError(section.key("template"),
                          f"a shipped template ({', '.join(TEMPLATES)}) or a text of ${{name}} references")
    if not template.endswith("\n"):
        template += "\n"  # as mod_cdr_csv does for a configured template
    parse_template(template, section.key("template"), VARIABLE, "variable name")
    escape = section.text("escape", "none")
    if escape not in ESCAPES:
        raise ConfigError(section.key("escape"), f"one of {', '.join(ESCAPES)}")
    legs = section.text("legs", "ab")
    if legs not in LEGS:
        raise ConfigError(section.key("legs"), f"one of {', '.join(LEGS)}")
    batch = read_batch(section, BatchSettings(worker_process=False))
    if batch.workers != 1:
        raise ConfigError(section.key("workers"), "a file has one writer (lines of two would interleave)")
    config = FileConfig(
        path=file_path,
        format=file_format,
        template=template,
        escape=escape,
        max_bytes=section.integer("max_bytes", 0, 0, 2**62),
        legs=legs,
        name=section.text("name", "file"),
        batch=batch,
    )
    section.done()
    return (config,)


def target(settings: FileConfig, config: CdrConfig) -> Target:
    from . import Target

    return Target(settings.name, settings.describe(), lambda: FileSink(settings), settings.batch, coalesce=False,
                  encode=line_encoder(settings, config))


def line_encoder(settings: FileConfig, config: CdrConfig) -> Callable[[CallRecord], tuple[str, bytes]]:
    """What the lane makes of each record ahead of the writer (writer.EncodedSink): its uuid and its
    line, as bytes. The template is compiled once into a ``str.format`` text with one slot per
    reference, each slot filled by a column or by a variable of ``details``, decoded only when the
    template names a variable."""
    from ..schema import table_columns

    keep = {"a": ("a",), "b": ("b",), "ab": ("a", "b")}[settings.legs]
    if settings.format == "jsonl":
        def jsonl(record: CallRecord) -> tuple[str, bytes]:
            if record.get("leg") not in keep:
                return str(record["uuid"]), b""
            return str(record["uuid"]), record_json(record, newline=True)

        return jsonl
    # what FreeSWITCH resolves from its channel variables is read from them (details), as mod_cdr_csv
    # does: the table's UTC millisecond stamps are not the local-time start_stamp of a Master.csv
    columns = {column.name for column in table_columns(config)} - {"details"} - VARIABLE_NAMES
    parts = parse_template(settings.template, "cdr.file.template", VARIABLE, "variable name")
    literals = [literal.replace("{", "{{").replace("}", "}}") for literal in parts[0::2]]
    names = list(parts[1::2])
    text = "".join(literal + (f"{{{index}}}" if index < len(names) else "") for index, literal in enumerate(literals))
    variables = [name for name in names if name not in columns]
    if variables and not config.details:
        raise ConfigError("cdr.file.template",
                          f"${{{variables[0]}}} is a channel variable, not a column: set \"details\": true "
                          f"(or add it to \"fields\")")
    doubled = settings.escape == "csv"
    fill = text.format
    # a column: its name; a variable: the two ways its key can start inside details' compact JSON
    plan = [(name, None if name in columns or name in PROFILE_NAMES else (f'{{"{name}":', f',"{name}":'))
            for name in names]

    def csv_line(record: CallRecord) -> tuple[str, bytes]:
        uuid = str(record["uuid"])
        if record.get("leg") not in keep:
            return uuid, b""
        details = record.get("details")
        if not isinstance(details, str):
            details = ""
        decoded: dict[str, Any] | None = None
        values = []
        for name, keys in plan:
            if keys is None:
                column = PROFILE_NAMES.get(name)
                value = record.get(name) if column is None else record.get(column) if record.get("leg") == "a" else None
            elif decoded is not None:
                value = decoded.get(name)
            else:
                value = detail_variable(details, keys)
                if value is _UNREAD:
                    decoded = loads(details) or {}
                    value = decoded.get(name)
            text = "" if value is None else value if value.__class__ is str else str(value)
            if doubled and '"' in text:
                text = text.replace('"', '""')
            values.append(text)
        return uuid, fill(*values).encode("utf-8", "surrogatepass")

    return csv_line


_UNREAD: Any = object()
#: Template names FreeSWITCH answers from a caller profile, not from a channel variable
#: (switch_channel_get_variable_dup: ``bleg_<field>`` is the originatee's profile): the column that holds
#: the same. ``bleg_uuid`` is the b-leg an a-leg originated; fs_cdr has the party it was bridged to,
#: which is that b-leg on every answered call (a b-leg that never answered leaves it empty here).
PROFILE_NAMES = {"bleg_uuid": "bridge_uuid"}
#: Columns whose name is also a channel variable with another meaning: templates get the variable.
VARIABLE_NAMES = frozenset(("start_stamp", "answer_stamp", "end_stamp"))


def detail_variable(details: str, keys: tuple[str, str]) -> Any:
    """One variable's value from ``details`` (fs_cdr's compact JSON object of strings) without
    decoding the other 200: its key is found as ``{"name":`` or ``,"name":`` — inside a JSON string
    every quote is escaped, so neither can occur there — and a plain string value is cut out as it
    is (one with escapes is decoded alone). ``_UNREAD`` when the value is not a string (a list of
    values): the caller decodes the whole object then."""
    start = details.find(keys[1])
    if start < 0:
        if not details.startswith(keys[0]):
            return None
        start = 0
    start += len(keys[1])
    if details[start:start + 1] != '"':
        return _UNREAD
    end = details.find('"', start + 1)
    while end > 0 and details[end - 1] == "\\":
        slashes = len(details[start + 1:end]) - len(details[start + 1:end].rstrip("\\"))
        if slashes % 2 == 0:
            break
        end = details.find('"', end + 1)
    if end < 0:
        return _UNREAD
    literal = details[start:end + 1]
    return loads(literal) if "\\" in literal else literal[1:-1]


class FileSink:
    """Appends each batch to the file the path names now, fsynced; one per lane (one writer)."""

    def __init__(self, config: FileConfig) -> None:
        self.config = config
        self._encode: Callable[[CallRecord], tuple[str, bytes]] | None = None
        self._fd: int | None = None
        self._path = ""
        self._identity: tuple[int, int] = (0, 0)
        self._size = 0

    def open(self) -> None:
        self._reopen(self.config.path_for(time.time()))

    def write(self, records: Sequence[CallRecord]) -> None:
        """Records not encoded by a lane (a test, the benchmark's sink alone): JSON lines only."""
        if self.config.format != "jsonl":
            raise RetriableError("a CSV file sink takes lines encoded by its lane")
        self.write_encoded([(str(record["uuid"]), record_json(record, newline=True)) for record in records])

    def write_encoded(self, messages: Sequence[tuple[Any, ...]], meanwhile: Callable[[], None] | None = None) -> None:
        lines = [line for message in messages if (line := message[-1])]
        if lines:
            self._append(lines)
        if meanwhile is not None:
            meanwhile()

    def _append(self, lines: list[bytes]) -> None:
        size = sum(map(len, lines))
        path = self.config.path_for(time.time())
        if self._fd is None or path != self._path or self._moved():
            self._reopen(path)
        limit = self.config.max_bytes
        if limit and self._size and self._size + size > limit:
            rotate_file(self._path)
            self._reopen(path)
        fd = self._fd
        assert fd is not None
        start = self._size
        try:
            write_parts(lambda buffers, _offset: os.writev(fd, buffers), lines)
            os.fsync(fd)
        except OSError as error:
            # The file keeps no part of a batch that is not all there: it goes to the spool whole.
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            self.close()
            raise RetriableError(f"cannot write {self._path}: {error.strerror or error}") from error
        self._size = start + size

    def _moved(self) -> bool:
        """The path names another file now (rotated by a command or by logrotate), or none."""
        try:
            found = os.stat(self._path)
        except OSError:
            return True
        return (found.st_dev, found.st_ino) != self._identity

    def _reopen(self, path: str) -> None:
        self.close()
        directory = os.path.dirname(path) or "."
        try:
            os.makedirs(directory, exist_ok=True)
            existed = os.path.exists(path)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise RetriableError(f"cannot open {path}: {error.strerror or error}") from error
        try:
            found = os.fstat(fd)
            if not existed:
                _sync_directory(directory)  # the new file's name survives a crash too
        except OSError as error:
            os.close(fd)
            raise RetriableError(f"cannot open {path}: {error.strerror or error}") from error
        self._fd, self._path = fd, path
        self._identity, self._size = (found.st_dev, found.st_ino), found.st_size

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def _sync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rotate_file(path: str, now: float | None = None) -> str | None:
    """Rename a non-empty ``path`` to ``<path>.YYYY-MM-DD-HH-MM-SS`` (``-N`` added when that name is
    taken); the name it got, or None when there was nothing to rotate."""
    try:
        if os.path.getsize(path) == 0:
            return None
    except OSError:
        return None
    stamp = time.strftime(ROTATED_SUFFIX, time.localtime(time.time() if now is None else now))
    target = f"{path}.{stamp}"
    number = 0
    while os.path.exists(target):
        number += 1
        target = f"{path}.{stamp}-{number}"
    os.rename(path, target)
    _sync_directory(os.path.dirname(path) or ".")
    return target


def rotate_files(config: CdrConfig) -> list[tuple[str, str]]:
    """``python fs_cdr rotate`` / ``fs-cdr rotate``: every file sink's current file renamed aside
    (the writer opens a new one before its next batch). Returns (old, new) per file rotated."""
    rotated = []
    for settings in config.sinks_of("file"):
        path = settings.path_for(time.time())
        target = rotate_file(path)
        if target is not None:
            rotated.append((path, target))
    return rotated
