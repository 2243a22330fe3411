"""Each sink reads its own cdr.json section; config.py finds it through the registry, lazily."""

from __future__ import annotations

import subprocess
import sys

from fs_cdr import config as config_module
from fs_cdr.config import SINKS, parse_config, sink_module


def test_reading_cdr_json_imports_only_the_sinks_it_names() -> None:
    """config.py imports no sink at import time (sinks import config: no cycle), and a document with
    only a database never loads the Redis or RabbitMQ modules."""
    script = ("import sys; import fs_cdr.config as c; before = sorted(m for m in sys.modules if m.startswith('fs_cdr.sinks'));"
              "c.parse_config({'cdr': {'database': {'dbtype': 'sqlite', 'connectionstring': 'x.db'}}});"
              "after = sorted(m for m in sys.modules if m.startswith('fs_cdr.sinks')); print(before, after)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    before, after = result.stdout.strip().split("] [")
    assert before == "[" and "fs_cdr.sinks.database" in after
    for other in ("redis", "rabbitmq", "http", "nats", "file"):
        assert f"fs_cdr.sinks.{other}" not in after, other


def test_every_registered_sink_module_reads_its_section_and_opens_its_target() -> None:
    for key in SINKS:
        module = sink_module(key)
        assert callable(module.parse_section) and callable(module.target), key


def test_the_names_that_moved_still_import_from_config() -> None:
    from fs_cdr.esl import EventSocketConfig
    from fs_cdr.sinks.database import DatabaseConfig
    from fs_cdr.sinks.redis import RedisConfig

    assert config_module.DatabaseConfig is DatabaseConfig and config_module.RedisConfig is RedisConfig
    assert config_module.EventSocketConfig is EventSocketConfig
    config = parse_config({"cdr": {"database": [{"dbtype": "sqlite", "connectionstring": "a.db"}],
                                   "redis": {"list": "cdr"}, "rabbitmq": {}, "file": {"path": "cdr.jsonl"},
                                   "nats": {}, "http": {"url": "http://127.0.0.1/cdr"}}})
    assert [sink.key for sink in config.sinks] == ["database", "redis", "rabbitmq", "http", "nats", "file"]
