"""A real FreeSWITCH for tests: a private configuration built from the installed one plus this
repository's files, started with -conf/-log/-db/-run/-scripts so nothing of the installed instance
is touched, and fs_cdr loaded from the working tree.

Needs FreeSWITCH built with mod_python3 (Debian's /usr/bin/python3) under ``FS_PREFIX``
(default /usr/local/freeswitch). Every listener stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from processes import process, wait_for

REPO = Path(__file__).resolve().parent.parent
FS_PREFIX = Path(os.environ.get("FS_PREFIX", "/usr/local/freeswitch"))
FS_BIN = FS_PREFIX / "bin" / "freeswitch"
FS_CLI = FS_PREFIX / "bin" / "fs_cli"
MOD_PYTHON = FS_PREFIX / "mod" / "mod_python3.so"
SYSTEM_PYTHON = os.environ.get("FS_PYTHON", "/usr/bin/python3")
#: Drivers for the Python mod_python3 embeds, installed once from pyproject.toml's pins.
DRIVERS = REPO / ".fs-site"
HERE = Path(__file__).resolve().parent / "freeswitch"
PASSWORD = "fsLocal-7391"


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
    if not (FS_PREFIX / "mod" / f"{name}.so").exists():
        return f"FreeSWITCH at {FS_PREFIX} was built without {name}"
    return None


#: The harness's listeners: the event socket and sofia's internal and external profiles.
PORTS = (8021, 5060, 5080)


def listener_pids(port: int) -> set[int]:
    """The processes listening on 127.0.0.1:``port`` (TCP), as ``ss`` shows them."""
    try:
        found = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {int(pid) for pid in re.findall(r"pid=(\d+)", found)}


def ports_taken() -> dict[int, set[int]]:
    """The harness's ports some process already listens on (another harness FreeSWITCH), by port."""
    return {port: pids for port in PORTS if (pids := listener_pids(port))}


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
                 native_cdr: tuple[str, ...] = (), config_argument: bool = True) -> None:
        """``fs_cdr``: start fs_cdr with FreeSWITCH; ``native_cdr``: FreeSWITCH's own CDR modules to
        keep loaded (all are off otherwise; the benchmark compares with them)."""
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
        self.write_cdr(cdr)

    # -- configuration ---------------------------------------------------------------------------
    def write_cdr(self, cdr: dict[str, Any]) -> None:
        self.cdr_path.write_text(json.dumps({"cdr": cdr}, indent=2))

    def prepare(self) -> None:
        shutil.copytree(FS_PREFIX / "conf", self.conf, symlinks=True)
        for name in ("log", "db", "run", "storage", "recordings", "temp", "cache"):
            (self.root / name).mkdir(exist_ok=True)
        # scripts: the pinned drivers, and fs_cdr from the working tree
        self.scripts.mkdir()
        for entry in ensure_drivers().iterdir():
            if entry.name not in ("bin", "__pycache__") and not entry.name.startswith("."):
                (self.scripts / entry.name).symlink_to(entry)
        (self.scripts / "fs_cdr").symlink_to(REPO / "fs_cdr")
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
        shutil.copy(HERE / "gateway_fs_cdr_carrier.xml", self.conf / "sip_profiles/internal/fs_cdr_carrier.xml")
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
        variables = (self.conf / "vars.xml").read_text()
        variables = variables.replace('data="domain=$${local_ip_v4}"', 'data="domain=127.0.0.1"')
        # the test users' password is the harness's, whatever the installed vars.xml says
        variables = re.sub(r'data="default_password=[^"]*"', f'data="default_password={PASSWORD}"', variables)
        (self.conf / "vars.xml").write_text(variables)
        # FreeSWITCH's own CDR modules are not what is under test here (the benchmark compares them)
        modules = (self.conf / "autoload_configs/modules.conf.xml").read_text()
        for module in {"mod_cdr_csv", "mod_cdr_sqlite", "mod_json_cdr", "mod_xml_cdr"} - set(self.native_cdr):
            # only a line that loads it: one already inside a comment must not get a nested comment
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

    # -- process -----------------------------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> None:
        # Only one harness FreeSWITCH fits these ports: started beside another, this one could not
        # listen, and every fs_cli command (a shutdown too) would reach the other one.
        taken = ports_taken()
        if taken:
            raise RuntimeError(f"another FreeSWITCH already listens on the harness's ports {taken}: "
                               "wait until it has stopped")
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
            if "is ready" in self.api("status", timeout_s=3):
                if self.process.pid not in listener_pids(8021):
                    self.kill()
                    raise RuntimeError("the event socket on port 8021 is not this FreeSWITCH's")
                return
            time.sleep(0.3)
        raise RuntimeError("FreeSWITCH did not become ready")

    def api(self, command: str, timeout_s: float = 30.0) -> str:
        """An API command through the event socket, as ``fs_cli -x`` runs it."""
        try:
            result = subprocess.run([str(FS_CLI), "-H", "127.0.0.1", "-P", "8021", "-p", "ClueCon", "-x", command],
                                    capture_output=True, text=True, timeout=timeout_s, errors="replace")
        except subprocess.TimeoutExpired:
            return ""
        return result.stdout

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """``fsctl shutdown``, as an operator stops FreeSWITCH; then wait for the process to end."""
        if self.process is None:
            return
        if self.process.pid not in listener_pids(8021):
            self.kill()  # the event socket is not ours: a shutdown sent there would stop another switch
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
        try:
            status = json.loads(self.api("python fs_cdr status json"))
        except ValueError:
            return []
        return [pid for sink in status["sinks"] for pid in sink.get("worker_pids", [])]

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
        return self.api(f"originate {{{variables}}}sofia/external/{destination}@127.0.0.1:5060 &sleep({talk_ms})")
