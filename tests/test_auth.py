"""TLS and authentication, against real servers (docs/security.md says what each test proves).

The machine's shared servers run without TLS, and its PostgreSQL trusts every connection from
127.0.0.1, so the tests start private servers where those are needed, each on a free loopback port,
stopped at the end of the module:

* a Redis with a password and an ACL user, on a plain port and a TLS port; a one-node Redis Cluster
  and a Sentinel, both TLS only;
* a MariaDB with TLS (certificates made here by openssl);
* a PostgreSQL with TLS and scram-sha-256 passwords (``cert`` authentication for one role).

On the shared servers: MariaDB users and PostgreSQL roles without superuser rights (created and
dropped here), and TLS options that the non-TLS servers must refuse, which proves they are applied.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid as uuidlib
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import pytest

from conftest import MARIADB, POSTGRES, SCENARIOS, TOTAL_ROWS, connect, drop_table, make_config, scenario_events
from fs_cdr.config import DatabaseConfig, load_config, parse_config
from fs_cdr.engine import Engine, format_status
from fs_cdr.errors import ConfigError, RetriableError
from fs_cdr.schema import table_columns
from fs_cdr.sinks.mysql import MySQL
from fs_cdr.sinks.postgres import PostgreSQL
from fs_cdr.sinks.redis import RedisSink
from fs_cdr.sinks.sql import SqlSink, dialect_for
from servers import wait_port

WRONG_PASSWORD = "pw-Wr0ng-" + uuidlib.uuid4().hex[:10]


def _secret() -> str:
    return "pw-" + uuidlib.uuid4().hex[:16]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def feed(engine: Engine) -> None:
    for scenario in SCENARIOS:
        for event in scenario_events(scenario):
            engine.handle(event)


def written(engine: Engine) -> dict[str, Any]:
    """Feed every recorded scenario; wait until all of it is written."""
    feed(engine)
    assert engine.flush(20), engine.status()
    status = engine.status()["sinks"][0]
    assert status["written"] == TOTAL_ROWS and status["healthy"], status
    return status


def spooled(engine: Engine, timeout_s: float = 20.0) -> dict[str, Any]:
    """Feed every recorded scenario into a sink that cannot take them: they must all be spooled and
    the sink shown unhealthy with its error."""
    feed(engine)
    deadline = time.time() + timeout_s
    status = engine.status()["sinks"][0]
    while time.time() < deadline:
        status = engine.status()["sinks"][0]
        if status["spooled"] == TOTAL_ROWS and status["last_error"]:
            break
        time.sleep(0.05)
    assert status["spooled"] == TOTAL_ROWS and not status["healthy"] and status["written"] == 0, json.dumps(status)
    return status


def assert_never_shown(secret: str, engine: Engine, caplog: Any, *more: str) -> None:
    """The secret is in no status (JSON or table), no repr of the configuration, no log line."""
    status = engine.status()
    texts = [json.dumps(status), format_status(status), repr(engine.config), caplog.text, *more]
    texts += [lane.description for lane in engine.lanes]
    for text in texts:
        assert secret not in text


def quick(entry: dict[str, Any]) -> dict[str, Any]:
    """A sink that gives up on a dead connection after 1 s (failures show quickly)."""
    return dict(entry, timeout_s=1)


def config_of(tmp_path: Any, **cdr: Any) -> Any:
    return make_config({"cdr": dict(cdr, durable_window_ms=100)}, tmp_path)


# -- certificates ------------------------------------------------------------------------------------

def _openssl(directory: str, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def _key_and_request(directory: str, name: str, subject: str) -> None:
    _openssl(directory, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
    os.chmod(os.path.join(directory, f"{name}.key"), 0o600)


def _authority(directory: str, name: str) -> None:
    _openssl(directory, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=fs_cdr test {name}")


def _issue(directory: str, name: str, subject: str, san: str = "") -> None:
    _key_and_request(directory, name, subject)
    extensions = ["basicConstraints=CA:FALSE", "authorityKeyIdentifier=keyid,issuer"]
    if san:
        extensions.append(f"subjectAltName={san}")
    with open(os.path.join(directory, f"{name}.ext"), "w") as handle:
        handle.write("\n".join(extensions) + "\n")
    _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: Any) -> SimpleNamespace:
    """A CA; a server certificate for 127.0.0.1 and localhost; one for another name; a client
    certificate (CN fscdr_cert); and a second CA that signed none of them."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    directory = str(tmp_path_factory.mktemp("certs"))
    _authority(directory, "ca")
    _authority(directory, "other_ca")
    _issue(directory, "server", "/CN=localhost", "IP:127.0.0.1,DNS:localhost")
    _issue(directory, "wrong", "/CN=wrong.example", "DNS:wrong.example")
    _issue(directory, "client", "/CN=fscdr_cert")
    path = lambda name: os.path.join(directory, name)  # noqa: E731
    return SimpleNamespace(dir=directory, ca=path("ca.pem"), other_ca=path("other_ca.pem"),
                           server=path("server.pem"), server_key=path("server.key"),
                           wrong=path("wrong.pem"), wrong_key=path("wrong.key"),
                           client=path("client.pem"), client_key=path("client.key"))


# -- configuration: the options and their checks -----------------------------------------------------

def _database(connectionstring: str, dbtype: str = "mysql", **more: Any) -> DatabaseConfig:
    return parse_config({"cdr": {"database": dict({"dbtype": dbtype, "connectionstring": connectionstring}, **more)}}
                        ).databases[0]


def test_mysql_tls_options_come_from_the_url_query(certs) -> None:
    database = _database(f"mysql://db:3306/cdr?ssl_mode=verify_identity&ssl_ca={certs.ca}"
                         f"&ssl_cert={certs.client}&ssl_key={certs.client_key}")
    assert dict(database.options) == {"ssl_mode": "VERIFY_IDENTITY", "ssl_ca": certs.ca,
                                      "ssl_cert": certs.client, "ssl_key": certs.client_key}
    assert database.describe() == "mysql://db:3306/cdr table cdr (ssl_mode VERIFY_IDENTITY)"
    # a CA without a mode means the server must prove who it is; a client certificate alone, TLS
    assert _database(f"mysql://db/cdr?ssl_ca={certs.ca}").options["ssl_mode"] == "VERIFY_IDENTITY"
    assert _database(f"mysql://db/cdr?ssl_cert={certs.client}&ssl_key={certs.client_key}").options["ssl_mode"] == "REQUIRED"
    assert dict(_database("db,3306@cdr").options) == {}


def test_postgresql_options_are_libpq_keywords_checked_by_name(certs) -> None:
    database = _database(f"postgresql://u:pw-x1y2z3@pg/cdr?sslmode=VERIFY-FULL&sslrootcert={certs.ca}"
                         "&target_session_attrs=read-write&require_auth=scram-sha-256&channel_binding=require"
                         "&options=-c%20search_path%3Dbilling&application_name=fs1", "pgsql")
    assert dict(database.options) == {"sslmode": "verify-full", "sslrootcert": certs.ca, "target_session_attrs": "read-write",
                                      "require_auth": "scram-sha-256", "channel_binding": "require",
                                      "options": "-c search_path=billing", "application_name": "fs1"}
    assert _database("postgresql://pg/cdr?sslrootcert=system", "pgsql").options == {
        "sslrootcert": "system", "sslmode": "verify-full"}


def test_certificate_paths_are_relative_to_cdr_json(tmp_path, certs) -> None:
    shutil.copy(certs.ca, tmp_path / "ca.pem")
    path = tmp_path / "cdr.json"
    path.write_text(json.dumps({"cdr": {
        "database": [{"dbtype": "mysql", "connectionstring": "mysql://db/cdr?ssl_ca=ca.pem"},
                     {"dbtype": "pgsql", "connectionstring": "postgresql://db/cdr?sslrootcert=ca.pem"}],
        "redis": {"list": "cdr", "ssl": True, "ssl_ca_certs": "ca.pem"}}}))
    config = load_config(str(path))
    expected = str(tmp_path / "ca.pem")
    assert config.databases[0].options["ssl_ca"] == config.databases[1].options["sslrootcert"] == expected
    assert config.redis.ssl_ca_certs == expected


@pytest.mark.parametrize("dbtype, query, message", [
    ("mysql", "?sslmode=require", "unknown URL option 'sslmode' (known for mysql: ssl_mode, ssl_ca, ssl_cert, ssl_key)"),
    ("mysql", "?ssl_mode=ON", "URL option ssl_mode must be one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"),
    ("mysql", "?ssl_ca=/nonexistent/ca.pem", "ssl_ca: no such file '/nonexistent/ca.pem'"),
    ("mysql", "?ssl_cert={client}", "URL options ssl_cert and ssl_key go together"),
    ("mysql", "?ssl_mode=DISABLED&ssl_ca={ca}", "URL option ssl_mode=DISABLED contradicts ssl_ca"),
    ("mysql", "?ssl_mode=REQUIRED&ssl_mode=DISABLED", "URL option 'ssl_mode' is given twice"),
    ("mysql", "?ssl_mode=", "URL option ssl_mode has no value"),
    ("mysql", "?ssl_mode", "URL option ssl_mode has no value"),
    ("pgsql", "?ssl_mode=REQUIRED", "unknown URL option 'ssl_mode' (known for postgresql: sslmode, sslrootcert"),
    ("pgsql", "?sslmode=on", "URL option sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full"),
    ("pgsql", "?password={secret}", "URL option 'password' is not set in the query: use user:password@ in the URL"),
    ("pgsql", "?host=elsewhere", "URL option 'host' is not set in the query: use the URL's host"),
    ("pgsql", "?connect_timeout=3", "URL option 'connect_timeout' is not set in the query: use timeout_s"),
    ("pgsql", "?require_auth=scram-sha-256,trust", "URL option require_auth: 'trust' is not one of"),
    ("pgsql", "?sslkey={client_key}", "URL options sslcert and sslkey go together"),
    ("pgsql", "?passfile=/root/.pgpass", "unknown URL option 'passfile'"),
])
def test_a_wrong_url_option_is_refused_naming_the_key(certs, dbtype, query, message) -> None:
    secret = _secret()
    query = query.format(ca=certs.ca, client=certs.client, client_key=certs.client_key, secret=secret)
    scheme = "mysql" if dbtype == "mysql" else "postgresql"
    document = {"cdr": {"database": [{"dbtype": "sqlite", "connectionstring": "x.sqlite"},
                                     {"dbtype": dbtype, "connectionstring": f"{scheme}://fs:{secret}@db:1/cdr{query}"}]}}
    with pytest.raises(ConfigError) as raised:
        parse_config(document)
    assert raised.value.path == "cdr.database[1].connectionstring"
    assert message in raised.value.message
    assert secret not in str(raised.value)


def test_a_password_typed_into_the_url_query_is_not_echoed() -> None:
    secret = _secret()
    for query in (f"?{secret}", f"?require_auth={secret}"):
        with pytest.raises(ConfigError) as raised:
            _database(f"postgresql://fs:{secret}@db/cdr{query}", "pgsql")
        assert secret not in str(raised.value) and "***" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        _database(f"mysql://db/cdr?{secret}", password=secret)
    assert secret not in str(raised.value)


def test_other_databases_keep_their_url_options() -> None:
    """The check is for mysql and postgresql; Oracle's and SQL Server's URL options are their own."""
    oracle = _database("oracle://db:2484/ORCL?protocol=tcps&ssl_server_dn_match=true", "oracle")
    assert dict(oracle.options) == {"protocol": "tcps", "ssl_server_dn_match": "true"}


def test_redis_tls_settings(certs) -> None:
    def redis(**entry: Any) -> Any:
        return parse_config({"cdr": {"redis": dict({"list": "cdr"}, **entry)}}).redis

    plain = redis()
    assert not plain.ssl and plain.ssl_cert_reqs == "required" and plain.describe() == "redis://127.0.0.1:6379/0 list cdr"
    secret = _secret()
    url = redis(url=f"rediss://fs:{secret}@cache:6380/2", ssl_ca_certs=certs.ca)
    assert (url.ssl, url.host, url.port, url.db, url.username, url.password, url.ssl_ca_certs) == (
        True, "cache", 6380, 2, "fs", secret, certs.ca)
    assert url.describe() == "rediss://cache:6380/2 list cdr" and secret not in repr(url)
    client = redis(ssl=True, ssl_certfile=certs.client, ssl_keyfile=certs.client_key, ssl_cert_reqs="none")
    assert (client.ssl_certfile, client.ssl_keyfile, client.ssl_cert_reqs, client.ssl_ca_certs) == (
        certs.client, certs.client_key, "none", "")
    assert redis(cluster=True, ssl=True).describe() == "rediss-cluster://127.0.0.1:6379/0 list cdr"


@pytest.mark.parametrize("entry, key, message", [
    ({"url": "rediss://cache:6380", "ssl": False}, "ssl", "a rediss:// url means TLS"),
    ({"ssl_ca_certs": "{ca}"}, "ssl_ca_certs", "needs \"ssl\": true (or a rediss:// url)"),
    ({"url": "redis://cache", "ssl_cert_reqs": "none"}, "ssl_cert_reqs", "needs \"ssl\": true"),
    ({"ssl": True, "ssl_cert_reqs": "optional"}, "ssl_cert_reqs", "one of required, none"),
    ({"ssl": "yes"}, "ssl", "expected true or false"),
    ({"ssl": True, "ssl_ca_certs": "/nonexistent/ca.pem"}, "ssl_ca_certs", "no such file '/nonexistent/ca.pem'"),
    ({"ssl": True, "ssl_keyfile": "{client_key}"}, "ssl_keyfile", "a client key needs its certificate"),
    ({"ssl": True, "ssl_ciphers": "HIGH"}, "ssl_ciphers", "unknown key"),
])
def test_a_wrong_redis_tls_setting_is_refused_naming_the_key(certs, entry, key, message) -> None:
    entry = {name: value.format(ca=certs.ca, client_key=certs.client_key) if isinstance(value, str) else value
             for name, value in entry.items()}
    with pytest.raises(ConfigError) as raised:
        parse_config({"cdr": {"redis": dict({"list": "cdr", "password": "pw-redis-123"}, **entry)}})
    assert raised.value.path == f"cdr.redis.{key}" and message in raised.value.message
    assert "pw-redis-123" not in str(raised.value)


# -- Redis: a password, an ACL user, TLS ------------------------------------------------------------

def _start(command: list[str], log: str) -> subprocess.Popen:
    with open(log, "ab") as output:
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _redis_tls_lines(certs: Any) -> list[str]:
    return [f"tls-cert-file {certs.server}", f"tls-key-file {certs.server_key}", f"tls-ca-cert-file {certs.ca}",
            "tls-auth-clients no"]


def _redis_server(directory: str, lines: list[str], port: int, sentinel: bool = False) -> subprocess.Popen:
    """A private redis-server (or sentinel) from a config file: the password is not on its command line."""
    path = os.path.join(directory, f"{port}.conf")
    with open(path, "w") as handle:
        handle.write("\n".join(["bind 127.0.0.1", f"dir {directory}", 'save ""', "appendonly no", *lines]) + "\n")
    process = _start(["redis-server", path, *(["--sentinel"] if sentinel else [])], os.path.join(directory, f"{port}.log"))
    try:
        wait_port(port, up=True, timeout_s=20)
    except Exception:
        _stop(process)
        raise
    return process


@pytest.fixture(scope="module")
def private_redis(certs, tmp_path_factory) -> Iterator[SimpleNamespace]:
    """A Redis with a password (requirepass) and an ACL user that may only LPUSH, PUBLISH, XADD and
    PING on keys and channels fs_cdr_auth:*: plain on ``port``, TLS on ``tls_port``."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    import redis

    directory = str(tmp_path_factory.mktemp("redis"))
    port, tls_port, password, acl_password = free_port(), free_port(), _secret(), _secret()
    process = _redis_server(directory, [f"port {port}", f"tls-port {tls_port}", f"requirepass {password}",
                                        *_redis_tls_lines(certs)], port)
    admin = redis.Redis(host="127.0.0.1", port=port, password=password)
    try:
        admin.execute_command("ACL", "SETUSER", "fscdr_acl", "on", f">{acl_password}", "resetkeys", "~fs_cdr_auth:*",
                              "resetchannels", "&fs_cdr_auth:*", "-@all", "+lpush", "+publish", "+xadd", "+ping")
        wait_port(tls_port, up=True)
        yield SimpleNamespace(port=port, tls_port=tls_port, password=password, acl_password=acl_password,
                              admin=admin, dir=directory)
    finally:
        admin.close()
        _stop(process)


@pytest.fixture
def redis_key(private_redis) -> Iterator[str]:
    key = "fs_cdr_auth:" + uuidlib.uuid4().hex[:12]
    yield key
    private_redis.admin.delete(key, key + ":stream")


def test_redis_with_the_right_password_writes(private_redis, redis_key, tmp_path, engines) -> None:
    engine = engines(config_of(tmp_path, redis={"port": private_redis.port, "password": private_redis.password,
                                                "list": redis_key}))
    written(engine)
    assert private_redis.admin.llen(redis_key) == TOTAL_ROWS


def test_redis_acl_user_with_only_lpush_publish_xadd_and_ping_writes(private_redis, redis_key, tmp_path, engines) -> None:
    engine = engines(config_of(tmp_path, redis={
        "url": f"redis://fscdr_acl:{private_redis.acl_password}@127.0.0.1:{private_redis.port}/0",
        "list": redis_key, "channel": redis_key, "stream": redis_key + ":stream"}))
    written(engine)
    assert private_redis.admin.llen(redis_key) == private_redis.admin.xlen(redis_key + ":stream") == TOTAL_ROWS


def test_redis_acl_user_outside_its_keys_is_refused_and_records_wait(private_redis, tmp_path, engines) -> None:
    engine = engines(config_of(tmp_path, redis=quick({
        "port": private_redis.port, "username": "fscdr_acl", "password": private_redis.acl_password,
        "list": "not_fs_cdr_auth_" + uuidlib.uuid4().hex[:8]})))
    status = spooled(engine)
    assert "NOPERM" in status["last_error"] or "permission" in status["last_error"], status


def test_redis_with_a_wrong_password_spools_and_never_shows_it(private_redis, redis_key, tmp_path, engines, caplog,
                                                              capsys) -> None:
    caplog.set_level(logging.DEBUG, logger="fs_cdr")
    entry = quick({"port": private_redis.port, "password": WRONG_PASSWORD, "list": redis_key})
    engine = engines(config_of(tmp_path, redis=entry))
    status = spooled(engine)
    assert "invalid username-password pair" in status["last_error"], status
    assert private_redis.admin.llen(redis_key) == 0
    # fs-cdr check reports the failing sink without the password too
    from fs_cdr.cli import main

    path = tmp_path / "cdr.json"
    path.write_text(json.dumps({"cdr": {"redis": entry}}))
    assert main(["-c", str(path), "check"]) == 1
    report = capsys.readouterr()
    assert "FAIL  redis" in report.out
    assert_never_shown(WRONG_PASSWORD, engine, caplog, report.out, report.err)


def test_redis_over_tls_with_the_ca_writes(private_redis, redis_key, certs, tmp_path, engines) -> None:
    engine = engines(config_of(tmp_path, redis={"port": private_redis.tls_port, "password": private_redis.password,
                                                "ssl": True, "ssl_ca_certs": certs.ca, "list": redis_key}))
    written(engine)
    assert private_redis.admin.llen(redis_key) == TOTAL_ROWS


def test_a_rediss_url_means_tls(private_redis, redis_key, certs, tmp_path, engines) -> None:
    engine = engines(config_of(tmp_path, redis={
        "url": f"rediss://:{private_redis.password}@127.0.0.1:{private_redis.tls_port}/0",
        "ssl_ca_certs": certs.ca, "list": redis_key}))
    written(engine)
    assert private_redis.admin.llen(redis_key) == TOTAL_ROWS


def test_redis_tls_refuses_a_server_certificate_from_another_ca(private_redis, redis_key, certs, tmp_path, engines) -> None:
    engine = engines(config_of(tmp_path, redis=quick({
        "port": private_redis.tls_port, "password": private_redis.password, "ssl": True,
        "ssl_ca_certs": certs.other_ca, "list": redis_key})))
    assert "CERTIFICATE_VERIFY_FAILED" in spooled(engine)["last_error"]


def test_redis_tls_without_verification_takes_any_certificate(private_redis, redis_key, certs, tmp_path, engines) -> None:
    engine = engines(config_of(tmp_path, redis={
        "port": private_redis.tls_port, "password": private_redis.password, "ssl": True,
        "ssl_ca_certs": certs.other_ca, "ssl_cert_reqs": "none", "list": redis_key}))
    written(engine)


def test_redis_tls_client_certificate(private_redis, redis_key, certs, tmp_path) -> None:
    """With tls-auth-clients yes the server wants a client certificate signed by its CA."""
    base = {"port": private_redis.tls_port, "password": private_redis.password, "ssl": True,
            "ssl_ca_certs": certs.ca, "list": redis_key, "timeout_s": 2}
    private_redis.admin.config_set("tls-auth-clients", "yes")
    try:
        without = RedisSink(make_config({"cdr": {"redis": base}}, tmp_path).redis)
        with pytest.raises(RetriableError):
            without.open()
        without.close()
        sink = RedisSink(make_config({"cdr": {"redis": dict(base, ssl_certfile=certs.client,
                                                            ssl_keyfile=certs.client_key)}}, tmp_path).redis)
        sink.open()
        try:
            sink.write([{"uuid": "u-client-cert", "call_state": "completed"}])
        finally:
            sink.close()
    finally:
        private_redis.admin.config_set("tls-auth-clients", "no")
    assert private_redis.admin.llen(redis_key) == 1


def test_redis_tls_against_a_plain_server_fails_retriably(tmp_path, engines) -> None:
    """The shared Redis speaks no TLS: "ssl": true must not fall back to plain text."""
    import redis

    key = "fs_cdr_auth:" + uuidlib.uuid4().hex[:12]
    engine = engines(config_of(tmp_path, redis=quick({"port": 6379, "ssl": True, "ssl_cert_reqs": "none", "list": key})))
    status = spooled(engine)
    assert status["last_error"].startswith(("RetriableError", "TimeoutError", "ConnectionError")), status
    assert redis.Redis(host="127.0.0.1", port=6379).llen(key) == 0


def test_redis_cluster_over_tls(private_redis, certs, tmp_path, engines) -> None:
    """A one-node cluster holding every slot, TLS only (its bus too)."""
    import redis

    directory = tempfile.mkdtemp(prefix="cluster", dir=private_redis.dir)
    port, bus, password = free_port(), free_port(), _secret()
    process = _redis_server(directory, ["port 0", f"tls-port {port}", f"requirepass {password}", "tls-cluster yes",
                                        "cluster-enabled yes", f"cluster-port {bus}",
                                        f"cluster-config-file {directory}/nodes.conf", *_redis_tls_lines(certs)], port)
    try:
        admin = redis.Redis(host="127.0.0.1", port=port, password=password, ssl=True, ssl_ca_certs=certs.ca)
        admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.time() + 20
        while b"cluster_state:ok" not in admin.execute_command("CLUSTER", "INFO") and time.time() < deadline:
            time.sleep(0.1)
        key = "fs_cdr_auth:{fs1}:list"
        base = {"cluster": True, "host": "127.0.0.1", "port": port, "password": password, "ssl": True, "list": key}
        wrong_ca = engines(config_of(tmp_path / "a", redis=quick(dict(base, ssl_ca_certs=certs.other_ca))))
        assert "CERTIFICATE_VERIFY_FAILED" in spooled(wrong_ca)["last_error"]
        written(engines(config_of(tmp_path / "b", redis=dict(base, ssl_ca_certs=certs.ca))))
        assert admin.llen(key) == TOTAL_ROWS
        admin.close()
    finally:
        _stop(process)


def test_redis_sentinel_over_tls(private_redis, redis_key, certs, tmp_path, engines) -> None:
    """A Sentinel reached over TLS names the private Redis's TLS port as the master."""
    import redis

    directory = tempfile.mkdtemp(prefix="sentinel", dir=private_redis.dir)
    port = free_port()
    process = _redis_server(directory, [
        "port 0", f"tls-port {port}", *_redis_tls_lines(certs), "tls-replication yes",
        f"sentinel monitor fscdr 127.0.0.1 {private_redis.tls_port} 1",
        f"sentinel auth-pass fscdr {private_redis.password}"], port, sentinel=True)
    try:
        sentinel = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=certs.ca)
        deadline = time.time() + 20
        while not sentinel.sentinel_get_master_addr_by_name("fscdr") and time.time() < deadline:
            time.sleep(0.1)
        sentinel.close()
        engine = engines(config_of(tmp_path, redis={
            "sentinels": [["127.0.0.1", port]], "service_name": "fscdr", "password": private_redis.password,
            "ssl": True, "ssl_ca_certs": certs.ca, "list": redis_key}))
        written(engine)
        assert private_redis.admin.llen(redis_key) == TOTAL_ROWS
    finally:
        _stop(process)


# -- MariaDB: users without superuser rights (the shared server) --------------------------------------

@pytest.fixture
def mariadb_users() -> Iterator[Callable[..., tuple[str, str]]]:
    """Create MariaDB users on the shared server (dropped at the end): ``make(grant, ...)`` with
    grants such as ``"SELECT, INSERT ON test.t"``; returns (user, password)."""
    import MySQLdb

    admin = MySQLdb.connect(host=MARIADB["host"], port=MARIADB["port"], user="root", db="test", autocommit=True)
    created: list[str] = []

    def make(*grants: str) -> tuple[str, str]:
        user, password = "fscdr_t_" + uuidlib.uuid4().hex[:8], _secret()
        cursor = admin.cursor()
        cursor.execute("CREATE USER %s@'127.0.0.1' IDENTIFIED BY %s", (user, password))
        created.append(user)
        for grant in grants:
            cursor.execute(f"GRANT {grant} TO %s@'127.0.0.1'", (user,))
        cursor.close()
        return user, password

    yield make
    cursor = admin.cursor()
    for user in created:
        cursor.execute("DROP USER IF EXISTS %s@'127.0.0.1'", (user,))
    admin.close()


@pytest.fixture
def mysql_table(table_name, tmp_path) -> Iterator[str]:
    yield table_name
    drop_table("mysql", tmp_path, table_name)


def _create_table(kind: str, tmp_path: Any, table: str, config: Any) -> None:
    """The table as fs_cdr would create it, made by the administrator."""
    database = config.databases[0]
    ddl = dialect_for(database.dbtype, database).create_table(table, table_columns(config))
    connection = connect(kind, tmp_path)
    try:
        cursor = connection.cursor()
        cursor.execute(ddl)
        connection.commit()
    finally:
        connection.close()


def _count(kind: str, tmp_path: Any, table: str) -> int:
    connection = connect(kind, tmp_path)
    try:
        cursor = connection.cursor()
        cursor.execute(f"SELECT COUNT(*) FROM {table}")
        return cursor.fetchone()[0]
    finally:
        connection.close()


def _exists(kind: str, tmp_path: Any, table: str) -> bool:
    connection = connect(kind, tmp_path)
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_name = %s", (table,))
        return cursor.fetchone()[0] > 0
    finally:
        connection.close()


def _mysql_entry(user: str, password: str, table: str, connectionstring: str = "") -> dict[str, Any]:
    return {"dbtype": "mariadb", "connectionstring": connectionstring or f"{MARIADB['host']},{MARIADB['port']}@test",
            "username": user, "password": password, "table": table}


def test_mariadb_user_with_create_makes_the_table_and_writes(mariadb_users, mysql_table, tmp_path, engines) -> None:
    user, password = mariadb_users("SELECT, INSERT, UPDATE, DELETE, CREATE ON test.*")
    written(engines(config_of(tmp_path, database=_mysql_entry(user, password, mysql_table))))
    assert _count("mysql", tmp_path, mysql_table) == TOTAL_ROWS


def test_mariadb_user_without_create_writes_into_an_existing_table(mariadb_users, mysql_table, tmp_path, engines) -> None:
    config = config_of(tmp_path, details=True, database=_mysql_entry("", "", mysql_table))
    _create_table("mysql", tmp_path, mysql_table, config)
    user, password = mariadb_users(f"SELECT, INSERT, UPDATE, DELETE ON test.{mysql_table}")
    engine = engines(config_of(tmp_path, details=True, database=_mysql_entry(user, password, mysql_table)))
    written(engine)
    feed(engine)  # the same calls again: the upsert's UPDATE path
    assert engine.flush(20) and engine.status()["sinks"][0]["written"] == 2 * TOTAL_ROWS
    assert _count("mysql", tmp_path, mysql_table) == TOTAL_ROWS


def _realtime(engine: Engine, error: str) -> dict[str, Any]:
    """Feed every scenario in real-time mode; the lane's status once everything was written or, when
    an ``error`` is expected, once it was reported."""
    feed(engine)
    if not error:
        assert engine.flush(20), engine.status()
        return engine.status()["sinks"][0]
    deadline = time.time() + 20
    while error not in engine.status()["sinks"][0]["last_error"] and time.time() < deadline:
        time.sleep(0.05)
    return engine.status()["sinks"][0]


@pytest.mark.parametrize("privileges", ["SELECT, INSERT, UPDATE, DELETE", "SELECT, INSERT, UPDATE"])
def test_mariadb_real_time_mode_needs_delete(mariadb_users, mysql_table, tmp_path, engines, privileges) -> None:
    """Real-time rows of a leg left out after its channel was created (fs_cdr_skip set late, as in
    the live recordings) are deleted at its hangup."""
    config = config_of(tmp_path, database=dict(_mysql_entry("", "", mysql_table), real=True))
    _create_table("mysql", tmp_path, mysql_table, config)
    user, password = mariadb_users(f"{privileges} ON test.{mysql_table}")
    engine = engines(config_of(tmp_path, database=quick(dict(_mysql_entry(user, password, mysql_table), real=True))))
    status = _realtime(engine, "" if "DELETE" in privileges else "DELETE command denied")
    if "DELETE" in privileges:
        assert status["healthy"] and status["spooled"] == 0 and not status["last_error"], status
        assert _count("mysql", tmp_path, mysql_table) == TOTAL_ROWS
    else:
        assert not status["healthy"] and "DELETE command denied" in status["last_error"], status


def test_mariadb_user_without_create_and_no_table_waits_with_a_clear_error(mariadb_users, mysql_table, tmp_path,
                                                                          engines) -> None:
    user, password = mariadb_users("SELECT, INSERT, UPDATE, DELETE ON test.*")
    status = spooled(engines(config_of(tmp_path, database=quick(_mysql_entry(user, password, mysql_table)))))
    assert "CREATE command denied" in status["last_error"], status


@pytest.mark.parametrize("privileges, denied", [("INSERT", "UPDATE command denied"),
                                                 ("INSERT, UPDATE", "SELECT command denied"),
                                                 ("SELECT, INSERT", "UPDATE command denied"),
                                                 ("SELECT", "INSERT, UPDATE command denied")])
def test_mariadb_user_missing_a_privilege_waits_with_a_clear_error(mariadb_users, mysql_table, tmp_path, engines,
                                                                   privileges, denied) -> None:
    """The upsert (INSERT ... ON DUPLICATE KEY UPDATE col = VALUES(col)) needs SELECT, INSERT and UPDATE."""
    config = config_of(tmp_path, database=_mysql_entry("", "", mysql_table))
    _create_table("mysql", tmp_path, mysql_table, config)
    user, password = mariadb_users(f"{privileges} ON test.{mysql_table}")
    status = spooled(engines(config_of(tmp_path, database=quick(_mysql_entry(user, password, mysql_table)))))
    assert denied in status["last_error"], status
    assert _count("mysql", tmp_path, mysql_table) == 0


def test_mariadb_wrong_password_is_retriable_spools_and_is_never_shown(mariadb_users, mysql_table, tmp_path, engines,
                                                                       caplog, capsys) -> None:
    caplog.set_level(logging.DEBUG, logger="fs_cdr")
    user, _ = mariadb_users("SELECT, INSERT, UPDATE, DELETE, CREATE ON test.*")
    entry = quick(_mysql_entry(user, WRONG_PASSWORD, mysql_table))
    config = config_of(tmp_path, database=entry)
    sink = SqlSink(MySQL(), config.databases[0], table_columns(config))
    with pytest.raises(RetriableError) as raised:
        sink.open()
    assert "Access denied" in str(raised.value) and WRONG_PASSWORD not in str(raised.value)
    engine = engines(config)
    status = spooled(engine)
    assert "Access denied for user" in status["last_error"], status
    from fs_cdr.cli import main

    path = tmp_path / "cdr.json"
    path.write_text(json.dumps({"cdr": {"database": entry}}))
    assert main(["-c", str(path), "check"]) == 1
    report = capsys.readouterr()
    assert_never_shown(WRONG_PASSWORD, engine, caplog, report.out, report.err)


# -- MariaDB: TLS options against the shared server, which has none ---------------------------------

def test_mariadb_ssl_mode_required_against_a_server_without_tls_fails_retriably(mysql_table, tmp_path, engines) -> None:
    """mysqlclient with MariaDB's Connector/C would carry on unencrypted: fs_cdr checks and refuses."""
    engine = engines(config_of(tmp_path, database=quick(_mysql_entry(
        "root", "", mysql_table, f"mysql://{MARIADB['host']}:{MARIADB['port']}/test?ssl_mode=REQUIRED"))))
    status = spooled(engine)
    assert "ssl_mode=REQUIRED, but the server did not encrypt the connection" in status["last_error"], status
    assert not _exists("mysql", tmp_path, mysql_table)  # nothing was done over it


def test_mariadb_verify_identity_against_a_server_without_tls_fails_retriably(certs, mysql_table, tmp_path) -> None:
    config = config_of(tmp_path, database=_mysql_entry(
        "root", "", mysql_table, f"mysql://{MARIADB['host']}:{MARIADB['port']}/test?ssl_ca={certs.ca}"))
    sink = SqlSink(MySQL(), config.databases[0], table_columns(config))
    with pytest.raises(RetriableError, match="SSL is required, but the server does not support it"):
        sink.open()


# -- MariaDB: a private server with TLS ------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_mariadb(certs, tmp_path_factory) -> Iterator[SimpleNamespace]:
    install, server = shutil.which("mariadb-install-db"), shutil.which("mariadbd") or (
        "/usr/sbin/mariadbd" if os.path.exists("/usr/sbin/mariadbd") else None)
    if not install or not server:
        pytest.skip("mariadb-install-db and mariadbd are needed for a private TLS MariaDB")
    import MySQLdb

    directory = str(tmp_path_factory.mktemp("mariadb"))
    for source, name in ((certs.server, "cert.pem"), (certs.server_key, "key.pem")):
        shutil.copy(source, os.path.join(directory, name))
    subprocess.run([install, "--no-defaults", f"--datadir={directory}/data", "--user=root",
                    "--auth-root-authentication-method=normal", "--skip-test-db"], check=True, capture_output=True)
    port = free_port()
    process = _start([server, "--no-defaults", f"--datadir={directory}/data", "--user=root", f"--port={port}",
                      "--bind-address=127.0.0.1", f"--socket={directory}/mariadb.sock", "--skip-name-resolve",
                      f"--pid-file={directory}/mariadb.pid", "--innodb-buffer-pool-size=16M",
                      f"--ssl-ca={certs.ca}", f"--ssl-cert={directory}/cert.pem", f"--ssl-key={directory}/key.pem"],
                     os.path.join(directory, "mariadb.log"))
    try:
        deadline = time.time() + 60
        while True:
            try:
                admin = MySQLdb.connect(host="127.0.0.1", port=port, user="root", autocommit=True)
                break
            except MySQLdb.OperationalError:
                if time.time() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        password = _secret()
        cursor = admin.cursor()
        cursor.execute("CREATE DATABASE cdr")
        cursor.execute("CREATE USER 'fscdr_t'@'127.0.0.1' IDENTIFIED BY %s", (password,))
        cursor.execute("GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON cdr.* TO 'fscdr_t'@'127.0.0.1'")
        cursor.execute("CREATE USER 'fscdr_cert'@'127.0.0.1' REQUIRE X509")
        cursor.execute("GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON cdr.* TO 'fscdr_cert'@'127.0.0.1'")
        cursor.close()
        yield SimpleNamespace(port=port, password=password, admin=admin, dir=directory)
        admin.close()
    finally:
        _stop(process)


def _tls_mysql(tls_mariadb: Any, table: str, query: str, user: str = "fscdr_t", password: str = "") -> dict[str, Any]:
    return {"dbtype": "mysql", "connectionstring": f"mysql://127.0.0.1:{tls_mariadb.port}/cdr?{query}",
            "username": user, "password": password, "table": table}


def _ssl_cipher(tls_mariadb: Any, config: Any) -> str:
    connection = MySQL().connect(config.databases[0], 2.0)
    try:
        cursor = connection.cursor()
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        return cursor.fetchone()[1]
    finally:
        connection.close()


def test_mariadb_ssl_mode_required_encrypts(tls_mariadb, table_name, tmp_path, engines) -> None:
    config = config_of(tmp_path, database=_tls_mysql(tls_mariadb, table_name, "ssl_mode=REQUIRED",
                                                     password=tls_mariadb.password))
    assert _ssl_cipher(tls_mariadb, config)
    written(engines(config))


def test_mariadb_verify_identity_with_the_ca_writes_over_tls(tls_mariadb, certs, table_name, tmp_path, engines) -> None:
    config = config_of(tmp_path, database=_tls_mysql(tls_mariadb, table_name, f"ssl_mode=VERIFY_IDENTITY&ssl_ca={certs.ca}",
                                                     password=tls_mariadb.password))
    assert _ssl_cipher(tls_mariadb, config)
    written(engines(config))
    cursor = tls_mariadb.admin.cursor()
    cursor.execute(f"SELECT COUNT(*) FROM cdr.{table_name}")
    assert cursor.fetchone()[0] == TOTAL_ROWS


def test_mariadb_verify_ca_refuses_a_certificate_from_another_ca(tls_mariadb, certs, table_name, tmp_path,
                                                                 engines) -> None:
    engine = engines(config_of(tmp_path, database=quick(_tls_mysql(
        tls_mariadb, table_name, f"ssl_mode=VERIFY_CA&ssl_ca={certs.other_ca}", password=tls_mariadb.password))))
    assert "TLS/SSL error" in spooled(engine)["last_error"]


def test_mariadb_verify_ca_also_checks_the_host_name_with_this_driver(tls_mariadb, certs, table_name, tmp_path) -> None:
    """mysqlclient on MariaDB's Connector/C maps VERIFY_CA to MYSQL_OPT_SSL_VERIFY_SERVER_CERT, which
    checks the name too: a certificate of the right CA for another name is refused (pinned here so
    that a driver that starts to behave like MySQL's own VERIFY_CA is noticed; docs/security.md)."""
    cert, key = os.path.join(tls_mariadb.dir, "cert.pem"), os.path.join(tls_mariadb.dir, "key.pem")
    cursor = tls_mariadb.admin.cursor()
    shutil.copy(certs.wrong, cert)
    shutil.copy(certs.wrong_key, key)
    cursor.execute("FLUSH SSL")
    try:
        for mode in ("VERIFY_CA", "VERIFY_IDENTITY"):
            config = config_of(tmp_path, database=_tls_mysql(tls_mariadb, table_name, f"ssl_mode={mode}&ssl_ca={certs.ca}",
                                                             password=tls_mariadb.password))
            sink = SqlSink(MySQL(), config.databases[0], table_columns(config))
            with pytest.raises(RetriableError, match="Validation of SSL server certificate failed"):
                sink.open()
        config = config_of(tmp_path, database=_tls_mysql(tls_mariadb, table_name, "ssl_mode=REQUIRED",
                                                         password=tls_mariadb.password))
        assert _ssl_cipher(tls_mariadb, config)  # REQUIRED encrypts without checking the certificate
    finally:
        shutil.copy(certs.server, cert)
        shutil.copy(certs.server_key, key)
        cursor.execute("FLUSH SSL")


def test_mariadb_client_certificate_user(tls_mariadb, certs, table_name, tmp_path, engines) -> None:
    """A user created REQUIRE X509 connects with ssl_cert/ssl_key, and only with them."""
    without = config_of(tmp_path, database=_tls_mysql(tls_mariadb, table_name, f"ssl_ca={certs.ca}", user="fscdr_cert"))
    with pytest.raises(RetriableError, match="Access denied"):
        SqlSink(MySQL(), without.databases[0], table_columns(without)).open()
    engine = engines(config_of(tmp_path, database=_tls_mysql(
        tls_mariadb, table_name, f"ssl_ca={certs.ca}&ssl_cert={certs.client}&ssl_key={certs.client_key}",
        user="fscdr_cert")))
    written(engine)


def test_mariadb_wrong_password_over_tls_is_never_shown(tls_mariadb, certs, table_name, tmp_path, engines,
                                                        caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="fs_cdr")
    engine = engines(config_of(tmp_path, database=quick(_tls_mysql(
        tls_mariadb, table_name, f"ssl_ca={certs.ca}", password=WRONG_PASSWORD))))
    assert "Access denied for user 'fscdr_t'" in spooled(engine)["last_error"]
    assert_never_shown(WRONG_PASSWORD, engine, caplog)


# -- PostgreSQL: roles without superuser rights (the shared server, trust on 127.0.0.1) ----------------

@pytest.fixture
def pg_roles() -> Iterator[Callable[..., tuple[str, str]]]:
    """Create login roles on the shared PostgreSQL (dropped at the end, with what they own):
    ``make(statement, ...)`` where ``{role}`` in a statement is the new role; returns (role, password)."""
    import psycopg

    admin = psycopg.connect(host=POSTGRES["host"], port=POSTGRES["port"], dbname="test", user="postgres", autocommit=True)
    created: list[str] = []

    def make(*grants: str) -> tuple[str, str]:
        role, password = "fscdr_t_" + uuidlib.uuid4().hex[:8], _secret()
        admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER PASSWORD '{password}'")
        created.append(role)
        for grant in grants:
            admin.execute(grant.format(role=role))
        return role, password

    yield make
    for role in created:
        admin.execute(f"DROP OWNED BY {role} CASCADE")
        admin.execute(f"DROP ROLE IF EXISTS {role}")
    admin.close()


@pytest.fixture
def pg_table(table_name, tmp_path) -> Iterator[str]:
    yield table_name
    drop_table("postgresql", tmp_path, table_name)


def _pg_entry(role: str, password: str, table: str, query: str = "", port: int = 0, database: str = "test") -> dict[str, Any]:
    return {"dbtype": "pgsql", "connectionstring": f"postgresql://{POSTGRES['host']}:{port or POSTGRES['port']}/{database}{query}",
            "username": role, "password": password, "table": table}


def test_postgresql_role_with_create_on_the_schema_makes_the_table_and_writes(pg_roles, pg_table, tmp_path,
                                                                              engines) -> None:
    role, password = pg_roles("GRANT USAGE, CREATE ON SCHEMA public TO {role}")
    entry = dict(_pg_entry(role, password, pg_table), flush_interval_ms=500)
    written(engines(config_of(tmp_path, details=True, database=entry)))
    assert _count("postgresql", tmp_path, pg_table) == TOTAL_ROWS


def test_postgresql_role_without_create_writes_into_an_existing_table(pg_roles, pg_table, tmp_path, engines) -> None:
    config = config_of(tmp_path, database=_pg_entry("postgres", "", pg_table))
    _create_table("postgresql", tmp_path, pg_table, config)
    role, password = pg_roles(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {pg_table} TO {{role}}")
    admin = connect("postgresql", tmp_path)
    try:
        assert admin.execute("SELECT has_schema_privilege(%s, 'public', 'CREATE')", (role,)).fetchone() == (False,)
    finally:
        admin.close()
    engine = engines(config_of(tmp_path, database=dict(_pg_entry(role, password, pg_table), flush_interval_ms=500)))
    written(engine)
    feed(engine)  # the same calls again: ON CONFLICT DO UPDATE
    assert engine.flush(20) and engine.status()["sinks"][0]["written"] == 2 * TOTAL_ROWS
    assert _count("postgresql", tmp_path, pg_table) == TOTAL_ROWS


@pytest.mark.parametrize("privileges", ["SELECT", "INSERT", "INSERT, UPDATE", "SELECT, INSERT"])
def test_postgresql_role_missing_a_privilege_waits_with_a_clear_error(pg_roles, pg_table, tmp_path, engines,
                                                                      privileges) -> None:
    """The upsert (INSERT ... ON CONFLICT (uuid) DO UPDATE SET col = EXCLUDED.col) needs SELECT, INSERT
    and UPDATE."""
    config = config_of(tmp_path, database=_pg_entry("postgres", "", pg_table))
    _create_table("postgresql", tmp_path, pg_table, config)
    role, password = pg_roles(f"GRANT {privileges} ON {pg_table} TO {{role}}")
    status = spooled(engines(config_of(tmp_path, database=quick(_pg_entry(role, password, pg_table)))))
    assert f"permission denied for table {pg_table}" in status["last_error"], status
    assert _count("postgresql", tmp_path, pg_table) == 0


@pytest.mark.parametrize("privileges", ["SELECT, INSERT, UPDATE, DELETE", "SELECT, INSERT, UPDATE"])
def test_postgresql_real_time_mode_needs_delete(pg_roles, pg_table, tmp_path, engines, privileges) -> None:
    config = config_of(tmp_path, database=dict(_pg_entry("postgres", "", pg_table), real=True))
    _create_table("postgresql", tmp_path, pg_table, config)
    role, password = pg_roles(f"GRANT {privileges} ON {pg_table} TO {{role}}")
    engine = engines(config_of(tmp_path, database=quick(dict(_pg_entry(role, password, pg_table), real=True))))
    status = _realtime(engine, "" if "DELETE" in privileges else f"permission denied for table {pg_table}")
    if "DELETE" in privileges:
        assert status["healthy"] and status["spooled"] == 0 and not status["last_error"], status
        assert _count("postgresql", tmp_path, pg_table) == TOTAL_ROWS
    else:
        assert not status["healthy"] and f"permission denied for table {pg_table}" in status["last_error"], status


def test_postgresql_role_without_create_and_no_table_waits_with_a_clear_error(pg_roles, pg_table, tmp_path,
                                                                             engines) -> None:
    role, password = pg_roles()
    status = spooled(engines(config_of(tmp_path, database=quick(_pg_entry(role, password, pg_table)))))
    assert "permission denied for schema public" in status["last_error"], status


def test_postgresql_needs_no_temporary_privilege(pg_roles, table_name, tmp_path, engines) -> None:
    """The upsert is a plain INSERT ... ON CONFLICT: a database that does not grant TEMPORARY (PUBLIC
    has it by default) takes whole batches all the same. A change that stages batches in a temporary
    table must update the privileges in docs/security.md, and this test."""
    import psycopg

    database = "fscdr_t_notemp_" + uuidlib.uuid4().hex[:8]
    admin = psycopg.connect(host=POSTGRES["host"], port=POSTGRES["port"], dbname="test", user="postgres", autocommit=True)
    admin.execute(f"CREATE DATABASE {database}")
    try:
        admin.execute(f"REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC")
        role, password = pg_roles()
        entry = dict(_pg_entry(role, password, table_name, database=database), flush_interval_ms=500)
        config = config_of(tmp_path, details=True, database=entry)
        ddl = PostgreSQL().create_table(table_name, table_columns(config))
        with psycopg.connect(host=POSTGRES["host"], port=POSTGRES["port"], dbname=database, user="postgres",
                             autocommit=True) as owner:
            owner.execute(ddl)
            owner.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table_name} TO {role}")
            assert owner.execute("SELECT has_database_privilege(%s, %s, 'TEMPORARY')", (role, database)).fetchone() == (False,)
        written(engines(config))
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        admin.close()


def test_postgresql_url_options_reach_libpq_and_statement_timeout_holds(pg_table, tmp_path) -> None:
    config = config_of(tmp_path, database=_pg_entry(
        "postgres", "", pg_table, "?application_name=fs1_cdr&options=-c%20search_path%3Dbilling,public"
                                  "&target_session_attrs=read-write"))
    connection = PostgreSQL().connect(config.databases[0], 2.0)
    try:
        shown = [connection.execute(f"SHOW {name}").fetchone()[0]
                 for name in ("application_name", "search_path", "statement_timeout")]
    finally:
        connection.close()
    assert shown == ["fs1_cdr", "billing,public", "2s"]


def test_postgresql_sslmode_require_against_a_server_without_tls_fails_retriably(pg_table, tmp_path, engines) -> None:
    engine = engines(config_of(tmp_path, database=quick(_pg_entry("postgres", "", pg_table, "?sslmode=require"))))
    status = spooled(engine)
    assert "server does not support SSL, but SSL was required" in status["last_error"], status


# -- PostgreSQL: a private server with TLS and scram-sha-256 ------------------------------------------

@pytest.fixture(scope="module")
def tls_postgres(certs) -> Iterator[SimpleNamespace]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        owner = None
    if not found or owner is None or shutil.which("runuser") is None or os.geteuid() != 0:
        pytest.skip("a private PostgreSQL needs initdb, a postgres user and root (runuser)")
    import psycopg

    bindir = os.path.dirname(found[-1])
    directory = tempfile.mkdtemp(prefix="fs_cdr_auth_pg_")  # not under pytest's root-only tmp: postgres reads it
    superuser_password, password = _secret(), _secret()

    def as_postgres(*command: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True)

    def own(path: str, mode: int = 0o600) -> None:
        os.chown(path, owner.pw_uid, owner.pw_gid)
        os.chmod(path, mode)

    own(directory, 0o700)
    for source, name in ((certs.server, "server.crt"), (certs.server_key, "server.key"), (certs.ca, "ca.crt")):
        shutil.copy(source, os.path.join(directory, name))
        own(os.path.join(directory, name))
    with open(os.path.join(directory, "pwfile"), "w") as handle:
        handle.write(superuser_password + "\n")
    own(os.path.join(directory, "pwfile"))
    data = os.path.join(directory, "data")
    port = free_port()
    try:
        as_postgres(f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=scram-sha-256",
                    f"--pwfile={directory}/pwfile", "-N")
        with open(os.path.join(data, "pg_hba.conf"), "w") as handle:
            handle.write("hostssl all fscdr_cert 127.0.0.1/32 cert\n"
                         "hostssl all all 127.0.0.1/32 scram-sha-256\n"
                         "host all all 127.0.0.1/32 scram-sha-256\n")
        own(os.path.join(data, "pg_hba.conf"))
        settings = (f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={directory} "
                    f"-c ssl=on -c ssl_cert_file={directory}/server.crt -c ssl_key_file={directory}/server.key "
                    f"-c ssl_ca_file={directory}/ca.crt -c fsync=off -c shared_buffers=16MB")
        as_postgres(f"{bindir}/pg_ctl", "-D", data, "-l", f"{directory}/log", "-w", "-o", settings, "start")
        try:
            with psycopg.connect(host="127.0.0.1", port=port, user="postgres", password=superuser_password,
                                 dbname="postgres", autocommit=True) as admin:
                admin.execute("CREATE DATABASE cdr")
                admin.execute(f"CREATE ROLE fscdr_t LOGIN PASSWORD '{password}'")
                admin.execute("CREATE ROLE fscdr_cert LOGIN")
            with psycopg.connect(host="127.0.0.1", port=port, user="postgres", password=superuser_password,
                                 dbname="cdr", autocommit=True) as admin:
                admin.execute("GRANT USAGE, CREATE ON SCHEMA public TO fscdr_t, fscdr_cert")
            admin = psycopg.connect(host="127.0.0.1", port=port, user="postgres", password=superuser_password,
                                    dbname="cdr", autocommit=True)
            yield SimpleNamespace(port=port, password=password, admin=admin)
            admin.close()
        finally:
            as_postgres(f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _tls_pg(tls_postgres: Any, table: str, query: str, role: str = "fscdr_t", password: str = "") -> dict[str, Any]:
    return {"dbtype": "pgsql", "connectionstring": f"postgresql://127.0.0.1:{tls_postgres.port}/cdr?{query}",
            "username": role, "password": password, "table": table}


def test_postgresql_password_over_verified_tls_writes(tls_postgres, certs, table_name, tmp_path, engines) -> None:
    query = (f"sslmode=verify-full&sslrootcert={certs.ca}&require_auth=scram-sha-256&channel_binding=require"
             "&application_name=fs_cdr_tls_test")
    engine = engines(config_of(tmp_path, database=dict(_tls_pg(tls_postgres, table_name, query, password=tls_postgres.password),
                                                       flush_interval_ms=500)))
    written(engine)
    found = tls_postgres.admin.execute(
        "SELECT s.ssl, a.usename FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
        "WHERE a.application_name = 'fs_cdr_tls_test'").fetchall()
    assert found and all(row == (True, "fscdr_t") for row in found)
    assert tls_postgres.admin.execute(f"SELECT COUNT(*) FROM {table_name}").fetchone() == (TOTAL_ROWS,)


def test_postgresql_wrong_password_is_retriable_spools_and_is_never_shown(tls_postgres, certs, table_name, tmp_path,
                                                                          engines, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="fs_cdr")
    engine = engines(config_of(tmp_path, database=quick(_tls_pg(
        tls_postgres, table_name, f"sslmode=verify-full&sslrootcert={certs.ca}", password=WRONG_PASSWORD))))
    status = spooled(engine)
    assert 'password authentication failed for user "fscdr_t"' in status["last_error"], status
    assert_never_shown(WRONG_PASSWORD, engine, caplog)


def test_postgresql_verify_full_refuses_a_certificate_from_another_ca(tls_postgres, certs, table_name, tmp_path,
                                                                      engines) -> None:
    engine = engines(config_of(tmp_path, database=quick(_tls_pg(
        tls_postgres, table_name, f"sslmode=verify-full&sslrootcert={certs.other_ca}", password=tls_postgres.password))))
    assert "certificate verify failed" in spooled(engine)["last_error"]


def test_postgresql_require_auth_refuses_a_server_that_asks_for_no_password(tls_postgres, certs, table_name,
                                                                            tmp_path) -> None:
    """require_auth=scram-sha-256: a server that lets the role in without the password exchange (cert
    here, trust on a hijacked address) is refused by libpq."""
    config = config_of(tmp_path, database=_tls_pg(
        tls_postgres, table_name, f"sslrootcert={certs.ca}&sslcert={certs.client}&sslkey={certs.client_key}"
                                  "&require_auth=scram-sha-256", role="fscdr_cert"))
    with pytest.raises(RetriableError, match='authentication method requirement "scram-sha-256" failed'):
        SqlSink(PostgreSQL(), config.databases[0], table_columns(config)).open()


def test_postgresql_client_certificate_role(tls_postgres, certs, table_name, tmp_path, engines) -> None:
    """pg_hba ``cert``: the role fscdr_cert logs in with a certificate whose CN is its name, no password."""
    engine = engines(config_of(tmp_path, database=_tls_pg(
        tls_postgres, table_name, f"sslrootcert={certs.ca}&sslcert={certs.client}&sslkey={certs.client_key}",
        role="fscdr_cert")))
    written(engine)
    assert engine.lanes[0].description.endswith("(sslmode verify-full)")

