"""tools/install_freeswitch.py: finds FreeSWITCH (asking the running one, else the layout), installs
fs_cdr for the Python mod_python3 embeds, keeps what the operator had, and uninstalls again."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_switch import ESL_PASSWORD, MOD_PYTHON, REPO, LiveSwitch, missing_reason

INSTALLER = REPO / "tools" / "install_freeswitch.py"
sys.path.insert(0, str(REPO / "tools"))
import install_freeswitch  # noqa: E402


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(INSTALLER), *args], capture_output=True, text=True, timeout=600)


def test_the_startup_line_joins_the_operators_python_conf_and_leaves_again() -> None:
    theirs = ('<configuration name="python.conf">\n  <settings>\n    <param name="startup-script" value="ivr"/>\n'
              '  </settings>\n</configuration>\n')
    ours = install_freeswitch.with_startup_line(theirs)
    assert ours is not None and 'value="ivr"' in ours and 'value="fs_cdr"' in ours
    assert install_freeswitch.with_startup_line(ours) is None  # installing twice adds nothing
    assert install_freeswitch.without_startup_line(ours) == theirs


def test_a_prefix_without_mod_python3_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "mod").mkdir()
    result = run("--prefix", str(tmp_path), "--esl-port", "1", "--dry-run")
    assert result.returncode == 1
    assert f"{tmp_path}/mod/mod_python3.so does not exist" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.freeswitch
@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
def test_install_into_the_running_freeswitch_then_a_call_then_uninstall(tmp_path) -> None:
    live = LiveSwitch(tmp_path, {}, preinstalled=False)
    live.prepare()
    live.start()
    try:
        args = ("--esl-port", str(live.esl_port), "--esl-password", ESL_PASSWORD)
        dry = run(*args, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "from the running FreeSWITCH" in dry.stdout and str(live.scripts) in dry.stdout
        assert "mod_python3 embeds" in dry.stdout and "nothing was changed" in dry.stdout
        assert not (live.scripts / "fs_cdr").exists()

        # copies an earlier install left in the installed configuration come along: only new ones count
        before = set((live.conf / "autoload_configs").glob("python.conf.xml.before-fs_cdr-*"))
        installed = run(*args)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert (live.scripts / "fs_cdr").is_dir() and list((live.scripts / "fs_cdr").glob("_hangup*.so"))
        assert (live.conf / "cdr.json").exists()
        assert "python fs_cdr start" in installed.stdout and "fs_cdr.sqlite" in installed.stdout
        kept = set((live.conf / "autoload_configs").glob("python.conf.xml.before-fs_cdr-*")) - before
        assert kept, "the operator's python.conf.xml was not kept"
        (live.conf / "cdr.json").write_text((live.conf / "cdr.json").read_text().replace('"log": false', '"log": true'))

        upgraded = run(*args)  # an upgrade is the same command again
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        assert "it starts fs_cdr already" in upgraded.stdout and "keep" in upgraded.stdout
        assert '"log": true' in (live.conf / "cdr.json").read_text()  # the operator's cdr.json stays
        assert set((live.conf / "autoload_configs").glob("python.conf.xml.before-fs_cdr-*")) - before == kept
    finally:
        live.shutdown()
    live.start()  # fs_cdr now starts with FreeSWITCH, from the installed files alone
    try:
        assert live.wait_until(lambda: "+OK" in live.api("python fs_cdr status") or
                               "fs_cdr  config" in live.api("python fs_cdr status"), 20), live.api("python fs_cdr status")
        assert live.api("originate null/1000 &hangup()").startswith(("+OK", "-ERR NORMAL_CLEARING"))
        database = tmp_path / "db" / "fs_cdr.sqlite"

        def count() -> int:
            try:
                with sqlite3.connect(str(database)) as connection:
                    return connection.execute("SELECT count(*) FROM cdr").fetchone()[0]
            except sqlite3.OperationalError:
                return 0

        assert live.wait_until(lambda: count() == 1, 20), live.api("python fs_cdr status")
    finally:
        live.shutdown()

    removed = run("--esl-port", "1", "--prefix", str(tmp_path / "nowhere"), "--uninstall")
    assert removed.returncode == 1  # nothing installed there
    live.start()
    try:
        # a prefix named while another FreeSWITCH runs: the prefix is the one meant, not the running one
        other = tmp_path / "other"
        (other / "mod").mkdir(parents=True)
        (other / "mod" / "mod_python3.so").symlink_to(MOD_PYTHON)
        dry = run("--esl-port", str(live.esl_port), "--esl-password", ESL_PASSWORD, "--prefix", str(other),
                  "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "is another one" in dry.stdout and f"into {other}/scripts" in dry.stdout, dry.stdout
        removed = run("--esl-port", str(live.esl_port), "--esl-password", ESL_PASSWORD, "--prefix", str(other),
                      "--uninstall")
        assert removed.returncode == 1 and (live.scripts / "fs_cdr").exists()  # the running one's install stays
        removed = run("--esl-port", str(live.esl_port), "--esl-password", ESL_PASSWORD, "--uninstall")
        assert removed.returncode == 0, removed.stderr
        assert not (live.scripts / "fs_cdr").exists() and (live.conf / "cdr.json").exists()
        assert 'value="fs_cdr"' not in (live.conf / "autoload_configs/python.conf.xml").read_text()
    finally:
        live.shutdown()
    time.sleep(0.1)
    assert Path(tmp_path / "db" / "fs_cdr.sqlite").exists()  # the CDRs stay
