"""cdr.json: the seed's format, connection strings, and errors that name the key."""

from __future__ import annotations

import json

import pytest

from fs_cdr.config import Paths, load_config, parse_config, resolve_config_path
from fs_cdr.errors import ConfigError

SEED = {
    "cdr": {
        "details": True,
        "fields": ["rtp_last_audio_codec_string", "number:billsec", "number:duration", "record_filename",
                   "jsipid:sip_h_X-jssipid"],
        "redis": {"channel": "cdr", "list": "cdr"},
        "database": {"dbtype": "mysql", "connectionstring": "127.0.0.1,3306@dbname", "username": "fs",
                     "password": "s3cret-pw", "table": "cdr", "real": False},
        "log": False,
    }
}


def test_the_seed_example_loads_as_written() -> None:
    config = parse_config(SEED)
    database = config.databases[0]
    assert (database.dbtype, database.host, database.port, database.database) == ("mysql", "127.0.0.1", 3306, "dbname")
    assert database.username == "fs" and database.table == "cdr" and database.real is False
    assert config.redis is not None and config.redis.list == "cdr" and config.redis.channel == "cdr"
    assert [field.column for field in config.fields] == [
        "rtp_last_audio_codec_string", "billsec", "duration", "record_filename", "jsipid"]
    assert config.details is True and config.log is False


def test_other_top_level_keys_of_a_cti_json_are_left_alone() -> None:
    document = dict(SEED, cti={"anything": [1, 2]}, acd={"x": 1})
    assert parse_config(document).databases[0].table == "cdr"


def test_password_never_appears_in_repr_or_describe() -> None:
    config = parse_config(SEED)
    assert "s3cret-pw" not in repr(config)
    assert "s3cret-pw" not in config.databases[0].describe()


@pytest.mark.parametrize(
    "dbtype, text, expected",
    [
        ("mysql", "127.0.0.1,3306@cdrdb", ("127.0.0.1", 3306, "cdrdb")),
        ("mysql", "db.example@cdrdb", ("db.example", 3306, "cdrdb")),
        ("sqlserver", "tcp:127.0.0.1,1433@cdrdb", ("127.0.0.1", 1433, "cdrdb")),
        ("pgsql", "10.0.0.5,6432@calls", ("10.0.0.5", 6432, "calls")),
        ("postgresql", "postgresql://u:p%40ss@pg:5433/calls?sslmode=require", ("pg", 5433, "calls")),
        ("mariadb", "mysql://root@127.0.0.1/test", ("127.0.0.1", 3306, "test")),
    ],
)
def test_connection_strings_in_the_seeds_format_and_as_urls(dbtype: str, text: str, expected: tuple) -> None:
    database = parse_config({"cdr": {"database": {"dbtype": dbtype, "connectionstring": text}}}).databases[0]
    assert (database.host, database.port, database.database) == expected


def test_url_credentials_and_options_are_taken_apart() -> None:
    database = parse_config(
        {"cdr": {"database": {"dbtype": "pgsql", "connectionstring": "postgresql://u:p%40ss@pg:5433/calls?sslmode=require"}}}
    ).databases[0]
    assert (database.username, database.password, dict(database.options)) == ("u", "p@ss", {"sslmode": "require"})


def test_sqlite_defaults_to_freeswitchs_db_directory(tmp_path) -> None:
    config = parse_config({"cdr": {"database": {"dbtype": "sqlite"}}}, Paths(db_dir=str(tmp_path)))
    assert config.databases[0].path == str(tmp_path / "fs_cdr.sqlite")


def test_relative_paths_are_relative_to_cdr_json(tmp_path) -> None:
    path = tmp_path / "cdr.json"
    path.write_text(json.dumps({"cdr": {"database": {"dbtype": "sqlite", "connectionstring": "data/x.db"},
                                        "spool_dir": "spool"}}))
    config = load_config(str(path))
    assert config.databases[0].path == str(tmp_path / "data" / "x.db")
    assert config.spool_dir == str(tmp_path / "spool")


@pytest.mark.parametrize(
    "cdr, path, words",
    [
        ({"details": "yes", "log": True}, "cdr.details", "true or false"),
        ({"log": True, "fields": "billsec"}, "cdr.fields", "list"),
        ({"log": True, "fields": ["number:"]}, "cdr.fields[0]", ""),
        ({"log": True, "fields": ["a b:c"]}, "cdr.fields[0]", "letters"),
        ({"log": True, "fields": ["x:${a"]}, "cdr.fields[0]", "unbalanced"),
        ({"log": True, "fields": ["billsec", "billsec:duration"]}, "cdr.fields[1]", "already set"),
        ({"database": {"dbtype": "mysql", "connectionstring": "127.0.0.1,3306@db", "tabel": "x"}},
         "cdr.database.tabel", "unknown key"),
        ({"database": {"dbtype": "db2", "connectionstring": "x"}}, "cdr.database.dbtype", "unknown database type"),
        ({"database": {"dbtype": "mysql", "connectionstring": ""}}, "cdr.database.connectionstring", "empty"),
        ({"database": {"dbtype": "mysql", "connectionstring": "nonsense"}}, "cdr.database.connectionstring", "host,port@dbname"),
        ({"database": {"dbtype": "mysql", "connectionstring": "h@d", "table": "cdr; DROP TABLE x"}},
         "cdr.database.table", "letters"),
        ({"database": {"dbtype": "mysql", "connectionstring": "h@d", "real": 1}}, "cdr.database.real", "true or false"),
        ({"redis": {"list": 5}}, "cdr.redis.list", "string"),
        ({"redis": {}}, "cdr.redis", "list"),
        ({"redis": {"list": "cdr", "port": 70000}}, "cdr.redis.port", "between"),
        ({"log": True, "verbose": True}, "cdr.verbose", "unknown key"),
        ({}, "cdr", "no sink"),
        ({"log": True, "process_cdr": "sometimes"}, "cdr.process_cdr", "a_only"),
    ],
)
def test_errors_name_the_key(cdr: dict, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"cdr": cdr})
    assert caught.value.path == path
    assert words in caught.value.message


def test_a_missing_cdr_section_and_broken_json_are_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match="top-level"):
        parse_config({"cti": {}})
    broken = tmp_path / "cdr.json"
    broken.write_text('{"cdr": {"log": true,}}')
    with pytest.raises(ConfigError) as caught:
        load_config(str(broken))
    assert caught.value.path == f"{broken}:1:22"
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.json"))


def test_config_path_comes_from_argument_then_global_then_conf_dir() -> None:
    assert resolve_config_path("/a/cdr.json", "/b/cdr.json", "/conf") == "/a/cdr.json"
    assert resolve_config_path("", "/b/cdr.json", "/conf") == "/b/cdr.json"
    assert resolve_config_path(" ", None, "/conf") == "/conf/cdr.json"


def test_several_databases_at_once_need_distinct_names() -> None:
    config = parse_config({"cdr": {"database": [
        {"dbtype": "sqlite", "connectionstring": "a.db"},
        {"dbtype": "mysql", "connectionstring": "h@d"},
    ]}})
    assert [database.name for database in config.databases] == ["sqlite", "mysql1"]
    with pytest.raises(ConfigError, match="unique"):
        parse_config({"cdr": {"database": [
            {"dbtype": "sqlite", "connectionstring": "a.db", "name": "x"},
            {"dbtype": "sqlite", "connectionstring": "b.db", "name": "x"},
        ]}})


def test_a_password_typed_elsewhere_in_the_file_never_reaches_an_error_or_status() -> None:
    """Found by the fuzzer: the same text as the password in dbtype, in a fields column, in a path."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"cdr": {"database": {"dbtype": "pw-000000", "password": "pw-000000"}}})
    assert "pw-000000" not in str(caught.value) and "***" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        parse_config({"cdr": {"fields": ["pw-000000"], "redis": {"list": "x", "password": "pw-000000"}}})
    assert "pw-000000" not in str(caught.value)
    config = parse_config({"cdr": {"database": {"dbtype": "sqlite", "connectionstring": "/data/pw-000000.db",
                                                "password": "pw-000000"}}})
    assert "pw-000000" not in config.databases[0].describe()
    with pytest.raises(ConfigError) as caught:  # a URL's password typed as a SQLite path
        parse_config({"cdr": {"database": {"dbtype": "sqlite", "connectionstring": "://:pw-000000@"}}})
    assert "pw-000000" not in str(caught.value) and caught.value.path == "cdr.database.connectionstring"
