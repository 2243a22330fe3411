"""A real FreeSWITCH for tests: a private configuration built from the installed one plus this
repository's files, started with -conf/-log/-db/-run/-scripts so nothing of the installed instance
is touched, and fs_cdr loaded from the working tree.

Needs FreeSWITCH built with mod_python3 (Debian's /usr/bin/python3), in either layout: the source
layout under ``FS_PREFIX`` (default /usr/local/freeswitch: bin/, mod/, conf/) or the FHS layout of a
packaged FreeSWITCH (``FS_PREFIX=/usr``, or found when /usr/local/freeswitch is absent: /usr/bin,
/usr/lib/freeswitch/mod, /etc/freeswitch). Every setting the tests rely on is written into the private
configuration, whatever the installed one says: the passwords, the domain, every listener on
127.0.0.1 on ports of this instance's own (so that two can run at once), sessions per second, and the
modules. Only the modules the build has are loaded.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from processes import process, wait_for

REPO = Path(__file__).resolve().parent.parent


def _layout() -> tuple[Path, Path, Path, Path]:
    """(freeswitch binary, fs_cli, module directory, installed configuration) of the FreeSWITCH to test."""
    prefix = os.environ.get("FS_PREFIX")
    if prefix is None:
        prefix = "/usr/local/freeswitch" if Path("/usr/local/freeswitch/bin/freeswitch").exists() or \
            not Path("/usr/bin/freeswitch").exists() else "/usr"
    root = Path(prefix)
    if root == Path("/usr"):  # FHS, as Debian's packages and FreeSWITCH's own debian/rules install it
        return root / "bin/freeswitch", root / "bin/fs_cli", root / "lib/freeswitch/mod", Path("/etc/freeswitch")
    # a source build: FreeSWITCH's own layout (prefix/mod, prefix/conf), or the FHS one under the
    # prefix (prefix/lib/freeswitch/mod, prefix/etc/freeswitch) that configure chooses for some prefixes
    modules = next((path for path in (root / "mod", root / "lib/freeswitch/mod") if path.is_dir()), root / "mod")
    conf = next((path for path in (root / "conf", root / "etc/freeswitch") if path.is_dir()), root / "conf")
    return root / "bin/freeswitch", root / "bin/fs_cli", modules, conf


FS_BIN, FS_CLI, FS_MOD, FS_CONF = _layout()
FS_PREFIX = FS_BIN.parent.parent
MOD_PYTHON = FS_MOD / "mod_python3.so"
SYSTEM_PYTHON = os.environ.get("FS_PYTHON", "/usr/bin/python3")
#: Drivers for the Python mod_python3 embeds, installed once from pyproject.toml's pins.
DRIVERS = REPO / ".fs-site"
HERE = Path(__file__).resolve().parent / "freeswitch"
#: The directory users' password (vars.xml default_password) and the event socket's, in every instance.
PASSWORD = "fsLocal-7391"
ESL_PASSWORD = "fsCdrTests-2207"
#: Modules every test instance loads when the build has them.
MODULES = ("mod_console", "mod_logfile", "mod_event_socket", "mod_sofia", "mod_loopback", "mod_commands",
           "mod_dptools", "mod_dialplan_xml", "mod_python3", "mod_sndfile", "mod_native_file", "mod_tone_stream",
           "mod_callcenter", "mod_voicemail", "mod_db", "mod_hash", "mod_expr", "mod_say_en")


def _free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        probe = socket.socket(socket.AF_INET, kind)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        finally:
            probe.close()
    return True


def free_ports(count: int) -> list[int]:
    """``count`` consecutive ports free for TCP and UDP on 127.0.0.1 (this instance's listeners)."""
    for _ in range(200):
        base = random.randrange(20000, 39000, 10)
        if all(_free(base + offset) for offset in range(count)):
            return [base + offset for offset in range(count)]
    raise RuntimeError("no free ports for a test FreeSWITCH")


def set_variable(text: str, name: str, value: str) -> str:
    """vars.xml: ``name`` set to ``value`` (replacing a set or stun-set of it, else added)."""
    line = f'<X-PRE-PROCESS cmd="set" data="{name}={value}"/>'
    pattern = rf'<X-PRE-PROCESS\s+cmd="(?:stun-)?set"\s+data="{re.escape(name)}=[^"]*"\s*/>'
    if re.search(pattern, text):
        return re.sub(pattern, lambda _: line, text)
    return text.replace("</include>", f"  {line}\n</include>", 1)


def without_comments(text: str) -> str:
    """A configuration file's text without its XML comments (which FreeSWITCH ignores, and which ship
    commented-out settings and load lines that an edit must not take for live ones)."""
    return re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)


def set_param(text: str, name: str, value: str) -> str:
    """A ``<param name=... value=...>`` of a configuration file set to ``value`` (added if missing).
    The file's comments go first: a commented-out param (FreeSWITCH's own switch.conf.xml ships the
    RTP port range so) must not be the one set, or the setting silently stays at its default."""
    text = without_comments(text)
    pattern = rf'<param\s+name="{re.escape(name)}"\s+value="[^"]*"\s*/>'
    line = f'<param name="{name}" value="{value}"/>'
    if re.search(pattern, text):
        return re.sub(pattern, lambda _: line, text)
    return re.sub(r"<settings>", lambda _: f"<settings>\n    {line}", text, count=1)


def missing_reason() -> Optional[str]:
    """Why the live tests cannot run here, or None."""
    if not FS_BIN.exists():
        return f"no FreeSWITCH at {FS_BIN} (build it with mod_python3 under {FS_PREFIX}, or set FS_PREFIX)"
    if not MOD_PYTHON.exists():
        return f"FreeSWITCH at {FS_PREFIX} has no mod_python3"
    if not Path(SYSTEM_PYTHON).exists():
        return f"no {SYSTEM_PYTHON} for mod_python3's drivers"
    return None


def module_missing(name: str) -> Optional[str]:
    """Why a scenario needing FreeSWITCH's ``name`` (mod_callcenter, mod_voicemail) cannot run, or None."""
    if not (FS_MOD / f"{name}.so").exists():
        return f"FreeSWITCH at {FS_PREFIX} was built without {name}"
    return None


def ensure_drivers() -> Path:
    """pip-install fs_cdr's pinned drivers for /usr/bin/python3 into .fs-site (once per pyproject)."""
    stamp = DRIVERS / ".pyproject"
    wanted = (REPO / "pyproject.toml").read_text()
    if not (stamp.exists() and stamp.read_text() == wanted):
        shutil.rmtree(DRIVERS, ignore_errors=True)
        subprocess.run(
            [SYSTEM_PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(DRIVERS),
             f"{REPO}[fast,mysql,postgresql,redis]"],
            check=True,
        )
        # fs_cdr itself comes from the working tree, not from this copy.
        shutil.rmtree(DRIVERS / "fs_cdr", ignore_errors=True)
        stamp.write_text(wanted)
    return DRIVERS


class LiveSwitch:
    """One FreeSWITCH process with a configuration of its own under ``root``."""

    def __init__(self, root: Path, cdr: dict[str, Any], fs_cdr: bool = True,
                 native_cdr: tuple[str, ...] = (), config_argument: bool = True, preinstalled: bool = True) -> None:
        """``fs_cdr``: start fs_cdr with FreeSWITCH; ``native_cdr``: FreeSWITCH's own CDR modules to
        keep loaded (all are off otherwise; the benchmark compares with them); ``preinstalled``
        False: nothing of fs_cdr in the scripts directory or python.conf.xml (the installer's test
        puts it there)."""
        self.preinstalled = preinstalled
        self.root = root
        self.fs_cdr = fs_cdr
        self.native_cdr = native_cdr
        #: False: no path in python.conf.xml; cdr.json is then found in the conf directory
        self.config_argument = config_argument
        self.conf = root / "conf"
        self.log_dir = root / "log"
        self.scripts = root / "scripts"
        self.cdr_path = root / "cdr.json"
        self.process: Optional[subprocess.Popen] = None
        #: this instance's listeners, all on 127.0.0.1
        self.esl_port, self.internal_port, self.external_port, ws, wss = free_ports(5)
        self._ws_ports = (ws, wss)
        self.write_cdr(cdr)

    # -- configuration ---------------------------------------------------------------------------
    def write_cdr(self, cdr: dict[str, Any]) -> None:
        self.cdr_path.write_text(json.dumps({"cdr": cdr}, indent=2))

    def prepare(self) -> None:
        shutil.copytree(FS_CONF, self.conf, symlinks=True)
        for name in ("log", "db", "run", "storage", "recordings", "temp", "cache"):
            (self.root / name).mkdir(exist_ok=True)
        # scripts: the pinned drivers, and fs_cdr from the working tree
        self.scripts.mkdir()
        if not self.preinstalled:
            (self.conf / "autoload_configs/python.conf.xml").write_text(
                '<configuration name="python.conf" description="Python Configuration">\n  <settings>\n'
                '  </settings>\n</configuration>\n')
        for entry in (ensure_drivers().iterdir() if self.preinstalled else ()):
            if entry.name not in ("bin", "__pycache__") and not entry.name.startswith("."):
                (self.scripts / entry.name).symlink_to(entry)
        if self.preinstalled:
            (self.scripts / "fs_cdr").symlink_to(REPO / "fs_cdr")
            self._python_conf()
        self._dialplan_and_profiles()

    def _python_conf(self) -> None:
        # fs_cdr starts with FreeSWITCH, from the repository's python.conf.xml
        python_conf = (REPO / "freeswitch/autoload_configs/python.conf.xml").read_text()
        if self.config_argument:
            python_conf = python_conf.replace('value="fs_cdr"', f'value="fs_cdr {self.cdr_path}"')
        else:
            shutil.copy(self.cdr_path, self.conf / "cdr.json")
        if not self.fs_cdr:
            python_conf = python_conf.replace('<param name="startup-script"', '<!-- param name="startup-script"')
            python_conf = python_conf.replace('/>\n  </settings>', '-->\n  </settings>')
        (self.conf / "autoload_configs/python.conf.xml").write_text(python_conf)

    def _dialplan_and_profiles(self) -> None:
        # the repository's dialplan examples, and the test-only far end, users and gateway
        # The examples go first in the default context, before the vanilla extensions (which claim
        # many numbers), as the README tells operators to include them.
        examples = self.conf / "dialplan/fs_cdr.xml"
        shutil.copy(REPO / "freeswitch/dialplan/default/fs_cdr.xml", examples)
        default = (self.conf / "dialplan/default.xml").read_text()
        load = self.conf / "dialplan/fs_cdr_load.xml"
        shutil.copy(HERE / "default_fs_cdr_load.xml", load)
        default = default.replace(
            '<context name="default">',
            f'<context name="default">\n    <X-PRE-PROCESS cmd="include" data="{examples}"/>'
            f'\n    <X-PRE-PROCESS cmd="include" data="{load}"/>',
            1,
        )
        (self.conf / "dialplan/default.xml").write_text(default)
        shutil.copy(HERE / "public_fs_cdr_far_end.xml", self.conf / "dialplan/public/00_fs_cdr_far_end.xml")
        shutil.copy(HERE / "directory_fs_cdr_users.xml", self.conf / "directory/default/fs_cdr_users.xml")
        (self.conf / "sip_profiles/internal").mkdir(exist_ok=True)
        carrier = (HERE / "gateway_fs_cdr_carrier.xml").read_text().replace("127.0.0.1:5080",
                                                                             f"127.0.0.1:{self.external_port}")
        (self.conf / "sip_profiles/internal/fs_cdr_carrier.xml").write_text(carrier)
        internal = (self.conf / "sip_profiles/internal.xml").read_text()
        internal = re.sub(r"<gateways>\s*</gateways>",
                          # the preprocessor only sees X-PRE-PROCESS at the start of a line
                          f'<gateways>\n    <X-PRE-PROCESS cmd="include" data="{self.conf}/sip_profiles/internal/*.xml"/>\n  </gateways>',
                          internal)
        (self.conf / "sip_profiles/internal.xml").write_text(internal)
        # The sample switch.conf.xml admits 30 new sessions a second and 1,000 at once; a load test
        # needs more, whatever the installed copy says (fsctl sps takes effect only the next second).
        switch = (self.conf / "autoload_configs/switch.conf.xml").read_text()
        switch = re.sub(r'(name="sessions-per-second" value=")\d+"', r'\g<1>5000"', switch)
        switch = re.sub(r'(name="max-sessions" value=")\d+"', r'\g<1>5000"', switch)
        (self.conf / "autoload_configs/switch.conf.xml").write_text(switch)
        self._own_settings()
        # FreeSWITCH's own CDR modules are not what is under test here (the benchmark compares them)
        # the installed file's comments go first: a load line inside a comment (even one spanning
        # lines) is not loaded, and must not be taken for one or get a nested comment
        modules = without_comments((self.conf / "autoload_configs/modules.conf.xml").read_text())
        for module in {"mod_cdr_csv", "mod_cdr_sqlite", "mod_json_cdr", "mod_xml_cdr"} - set(self.native_cdr):
            modules = re.sub(rf'^(\s*)<load module="{module}"/>', rf"\1<!-- {module} off for tests -->", modules,
                             flags=re.MULTILINE)
        for module in self.native_cdr:
            # asked for (the benchmark compares them): loaded, whether or not the installed copy loads it
            if not re.search(rf'^\s*<load module="{module}"/>', modules, flags=re.MULTILINE):
                modules = modules.replace("</modules>", f'  <load module="{module}"/>\n  </modules>', 1)
        # mod_callcenter and mod_voicemail, where built, loaded whatever the installed copy says; the
        # queues and agents the call-center scenarios use replace the installed callcenter.conf.xml
        for module in ("mod_callcenter", "mod_voicemail"):
            if module_missing(module) is None and not re.search(rf'^\s*<load module="{module}"/>', modules,
                                                                 flags=re.MULTILINE):
                modules = modules.replace("</modules>", f'  <load module="{module}"/>\n  </modules>', 1)
        (self.conf / "autoload_configs/modules.conf.xml").write_text(modules)
        if module_missing("mod_callcenter") is None:
            shutil.copy(HERE / "callcenter_fs_cdr.xml", self.conf / "autoload_configs/callcenter.conf.xml")

    def _own_settings(self) -> None:
        """What the tests rely on, written over whatever the installed configuration says."""
        variables = (self.conf / "vars.xml").read_text()
        for name, value in (("default_password", PASSWORD), ("domain", "127.0.0.1"), ("bind_server_ip", "127.0.0.1"),
                            ("external_rtp_ip", "127.0.0.1"), ("external_sip_ip", "127.0.0.1"),
                            ("internal_sip_port", str(self.internal_port)),
                            ("external_sip_port", str(self.external_port))):
            variables = set_variable(variables, name, value)
        (self.conf / "vars.xml").write_text(variables)
        events = self.conf / "autoload_configs/event_socket.conf.xml"
        text = events.read_text()
        for name, value in (("listen-ip", "127.0.0.1"), ("listen-port", str(self.esl_port)),
                            ("password", ESL_PASSWORD), ("nat-map", "false")):
            text = set_param(text, name, value)
        events.write_text(text)
        profiles = self.conf / "sip_profiles"
        for path in list(profiles.iterdir()):
            if "ipv6" in path.name:  # they would bind the machine's IPv6 address
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        for name, ws in (("internal.xml", True), ("external.xml", False)):
            path = profiles / name
            text = path.read_text()
            for param in ("sip-ip", "rtp-ip"):
                text = set_param(text, param, "127.0.0.1")
            if ws:
                text = set_param(text, "ws-binding", f"127.0.0.1:{self._ws_ports[0]}")
                text = set_param(text, "wss-binding", f"127.0.0.1:{self._ws_ports[1]}")
            path.write_text(text)
        switch = self.conf / "autoload_configs/switch.conf.xml"
        text = switch.read_text()
        start = 40000 + (self.esl_port % 1000) * 20
        text = set_param(text, "rtp-start-port", str(start))
        text = set_param(text, "rtp-end-port", str(start + 19))
        switch.write_text(text)
        # only listeners on loopback: modules that open others are left out
        modules = self.conf / "autoload_configs/modules.conf.xml"
        text = modules.read_text()
        text = re.sub(r'^(\s*)<load module="(mod_[a-z0-9_]+)"/>',
                      lambda m: m.group(0) if (FS_MOD / f"{m.group(2)}.so").exists() and m.group(2) not in
                      ("mod_verto", "mod_signalwire", "mod_rtc", "mod_skinny", "mod_msrp")
                      else f"{m.group(1)}<!-- {m.group(2)}: not for tests -->", text, flags=re.MULTILINE)
        for module in MODULES:
            if (FS_MOD / f"{module}.so").exists() and not re.search(rf'^\s*<load module="{module}"/>', text,
                                                                  flags=re.MULTILINE):
                text = text.replace("</modules>", f'  <load module="{module}"/>\n  </modules>', 1)
        modules.write_text(text)

    def event_socket(self) -> Any:
        """A connection to this instance's event socket."""
        from fs_cdr.esl import EventSocket

        return EventSocket(port=self.esl_port, password=ESL_PASSWORD)

    def place_calls(self, originate: str, calls: int, rate: float = 0.0, timeout_s: float = 300.0) -> tuple[float, int]:
        """``bgapi <originate>`` ``calls`` times, ``rate`` a second (0: as fast as the socket takes them);
        then wait until FreeSWITCH has finished every job (its BACKGROUND_JOB event) and no channel is
        left. A channel count alone is no sign of the end: right after a burst is sent, FreeSWITCH may
        not have created the first channels yet. Returns the seconds from the first originate until the
        last channel was gone, and how many originates FreeSWITCH answered with -ERR."""
        socket = self.event_socket()
        try:
            socket.subscribe("BACKGROUND_JOB")
            started = time.time()
            for index in range(calls):
                delay = started + index / rate - time.time() if rate > 0 else 0.0
                if delay > 0:
                    time.sleep(delay)
                socket.sock.sendall(f"bgapi {originate}\n\n".encode())
            deadline, finished, failed = started + timeout_s, 0, 0
            while finished < calls:
                event = socket.next_event(timeout_s=max(0.1, deadline - time.time()))
                if event is None:
                    raise RuntimeError(f"FreeSWITCH finished {finished} of {calls} originates in {timeout_s:.0f} s")
                if event.get("Event-Name") == "BACKGROUND_JOB":
                    finished += 1
                    failed += not str(event.get("_body", "")).startswith("+OK")
            while not socket.api("show channels count").strip().startswith("0 total"):
                if time.time() > deadline:
                    raise RuntimeError(f"channels still up after {timeout_s:.0f} s")
                time.sleep(0.2)
            return time.time() - started, failed
        finally:
            socket.close()

    # -- process -----------------------------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> None:
        """FreeSWITCH up on this instance's ports and, where it loads fs_cdr at startup, fs_cdr's engine
        running: mod_python3's startup load may still be starting it when FreeSWITCH says it is ready,
        and a call placed before then has events fs_cdr never sees."""
        self._start_switch(timeout_s)
        if self.fs_cdr and self.preinstalled and not self.wait_for_fs_cdr():
            status, log = self.api("python fs_cdr status"), self.log_text()[-2000:]
            self.kill()
            raise RuntimeError(f"fs_cdr did not start in FreeSWITCH: {status}\n{log}")

    def _start_switch(self, timeout_s: float) -> None:
        args = [str(FS_BIN), "-nc", "-nf", "-nonat", "-nonatmap",
                "-conf", str(self.conf), "-log", str(self.log_dir), "-db", str(self.root / "db"),
                "-run", str(self.root / "run"), "-scripts", str(self.scripts), "-storage", str(self.root / "storage"),
                "-recordings", str(self.root / "recordings"), "-temp", str(self.root / "temp"),
                "-cache", str(self.root / "cache")]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        cwd=str(self.root), start_new_session=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"FreeSWITCH exited with {self.process.returncode}; see {self.log_dir}")
            # ready, and it is this instance that answers on this instance's port
            if "is ready" in self.api("status", timeout_s=3) and str(self.conf) in self.api("global_getvar conf_dir"):
                return
            time.sleep(0.3)
        self.kill()  # never leave a half-started switch holding its ports
        raise RuntimeError("FreeSWITCH did not become ready")

    def fs_cdr_status(self) -> Optional[dict[str, Any]]:
        """``python fs_cdr status json``, or None while fs_cdr does not answer it."""
        try:
            found = json.loads(self.api("python fs_cdr status json"))
        except ValueError:
            return None
        return found if isinstance(found, dict) else None

    def wait_for_fs_cdr(self, timeout_s: float = 30.0) -> bool:
        """Until fs_cdr's engine runs in this switch (mod_python3's startup load may still be starting
        it when FreeSWITCH says it is ready: a call placed before then has events fs_cdr never sees)."""
        return self.wait_until(lambda: "config" in (self.fs_cdr_status() or {}), timeout_s, 0.3)

    def api(self, command: str, timeout_s: float = 30.0) -> str:
        """An API command through the event socket, as ``fs_cli -x`` runs it."""
        try:
            result = subprocess.run([str(FS_CLI), "-H", "127.0.0.1", "-P", str(self.esl_port), "-p", ESL_PASSWORD,
                                     "-x", command],
                                    capture_output=True, text=True, timeout=timeout_s, errors="replace")
        except subprocess.TimeoutExpired:
            return ""
        return result.stdout

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """``fsctl shutdown``, as an operator stops FreeSWITCH; then wait for the process to end."""
        if self.process is None:
            return
        self.api("fsctl shutdown", timeout_s=5)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def cpu_seconds(self) -> float:
        """FreeSWITCH's user+system CPU time so far."""
        assert self.process is not None
        found = process(self.process.pid)
        assert found is not None, "FreeSWITCH is gone"
        return found.cpu_s

    def worker_pids(self) -> list[int]:
        """fs_cdr's sink workers (child processes of FreeSWITCH), from ``python fs_cdr status json``."""
        status = self.fs_cdr_status()
        return [pid for sink in status["sinks"] for pid in sink.get("worker_pids", [])] if status else []

    def started_workers(self, timeout_s: float = 10.0) -> list[int]:
        """The sink workers' pids, once there are some: FreeSWITCH says it is ready before the startup
        script has started fs_cdr, and each writer starts its worker in its own thread after that."""
        assert self.wait_until(self.worker_pids, timeout_s), "no sink worker started"
        return self.worker_pids()

    def log_text(self) -> str:
        path = self.log_dir / "freeswitch.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_until(self, condition, timeout_s: float = 20.0, step_s: float = 0.2) -> bool:
        """``wait_for`` at a pace for a switch: most of what is asked is an fs_cli round trip."""
        return wait_for(condition, timeout_s, step_s)

    def phone(self, destination: str, talk_ms: int = 2000, caller: str = "1100", name: str = "", extra: str = "") -> str:
        """Extension ``caller`` calls ``destination`` over SIP (external profile -> internal profile,
        authenticated like a phone). The phone's own leg is left out of the CDRs with fs_cdr_skip."""
        variables = (f"fs_cdr_skip=true,sip_auth_username={caller},sip_auth_password={PASSWORD},"
                     f"origination_caller_id_number={caller},origination_caller_id_name={name or 'Phone' + caller},"
                     f"originate_timeout=15{',' + extra if extra else ''}")
        return self.api(f"originate {{{variables}}}sofia/external/{destination}@127.0.0.1:{self.internal_port} "
                        f"&sleep({talk_ms})")
