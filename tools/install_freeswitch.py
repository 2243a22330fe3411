#!/usr/bin/env python3
"""Install fs_cdr into a FreeSWITCH, whatever its layout (``make install-freeswitch`` runs this).

1. Finds FreeSWITCH's directories by asking the running FreeSWITCH (``fs_cli -x 'global_getvar
   script_dir'``, ``conf_dir``, ``db_dir``, ``storage_dir``, ``log_dir``, ``mod_dir``); else from
   ``--prefix`` (``/usr`` is the FHS layout of a packaged FreeSWITCH); else the source layout under
   /usr/local/freeswitch, then the FHS paths. A ``--prefix`` named wins over a running FreeSWITCH
   of another prefix (its directories are used only when they are the prefix's).
2. Finds the Python mod_python3 embeds from the libpython that mod_python3.so links (``ldd``).
3. Says what it found and what it will do, then (unless ``--dry-run``) installs fs_cdr and its pinned
   drivers for that Python into the scripts directory (first on mod_python3's sys.path), which compiles
   the C fast path, checks that it imports, adds fs_cdr's startup line to python.conf.xml and installs
   cdr.json — never overwriting either without keeping a copy — and prints the commands that start
   fs_cdr and verify a CDR.

``--uninstall`` removes what an install added (listed in ``<scripts>/.fs_cdr-installed``) and takes the
startup line out again; cdr.json, the spool and the CDRs stay. Standard library only: it runs with any
python3.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent.parent
DRIVERS = "fast,mysql,postgresql,redis"
MANIFEST = ".fs_cdr-installed"
STARTUP = '<param name="startup-script" value="fs_cdr"/>'
DIRECTORIES = ("script_dir", "conf_dir", "db_dir", "storage_dir", "log_dir", "mod_dir")


class InstallError(Exception):
    pass


def fs_cli(prefix: Optional[str], port: int, password: str) -> Optional[str]:
    candidates = [Path(prefix) / "bin/fs_cli"] if prefix else []
    candidates += [Path("/usr/local/freeswitch/bin/fs_cli"), Path("/usr/bin/fs_cli")]
    found = shutil.which("fs_cli")
    if found:
        candidates.insert(0 if not prefix else 1, Path(found))
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    return None


def ask_running(cli: Optional[str], port: int, password: str) -> dict[str, str]:
    """FreeSWITCH's directories as the running FreeSWITCH reports them; {} when none answers."""
    if cli is None:
        return {}
    found = {}
    for name in DIRECTORIES:
        try:
            result = subprocess.run([cli, "-H", "127.0.0.1", "-P", str(port), "-p", password, "-x",
                                     f"global_getvar {name}"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return {}
        value = result.stdout.strip()
        if result.returncode or not value.startswith("/"):
            return {}
        found[name] = value
    return found


def from_prefix(prefix: str) -> dict[str, str]:
    root = Path(prefix)
    if root == Path("/usr"):
        return {"script_dir": "/usr/share/freeswitch/scripts", "conf_dir": "/etc/freeswitch",
                "db_dir": "/var/lib/freeswitch/db", "storage_dir": "/var/lib/freeswitch/storage",
                "log_dir": "/var/log/freeswitch", "mod_dir": "/usr/lib/freeswitch/mod"}
    return {"script_dir": str(root / "scripts"), "conf_dir": str(root / "conf"), "db_dir": str(root / "db"),
            "storage_dir": str(root / "storage"), "log_dir": str(root / "log"), "mod_dir": str(root / "mod")}


def discover(args: argparse.Namespace) -> tuple[dict[str, str], str]:
    running = ask_running(fs_cli(args.prefix, args.esl_port, args.esl_password), args.esl_port, args.esl_password)
    if args.prefix:
        named = from_prefix(args.prefix)
        if running and (running["mod_dir"] == named["mod_dir"] or running["conf_dir"] == named["conf_dir"]):
            return running, (f"the running FreeSWITCH of --prefix {args.prefix} (asked on its event socket, "
                             f"127.0.0.1:{args.esl_port})")
        if running:
            # another FreeSWITCH answers on the event socket: the prefix named is the one meant
            return named, (f"--prefix {args.prefix} (the FreeSWITCH on the event socket, 127.0.0.1:{args.esl_port}, "
                           f"is another one: modules in {running['mod_dir']})")
        return named, f"--prefix {args.prefix} (no FreeSWITCH answered on the event socket)"
    if running:
        return running, f"the running FreeSWITCH (asked on its event socket, 127.0.0.1:{args.esl_port})"
    for prefix in ("/usr/local/freeswitch", "/usr"):
        paths = from_prefix(prefix)
        if Path(paths["mod_dir"], "mod_python3.so").exists():
            return paths, f"the {'FHS' if prefix == '/usr' else 'source'} layout ({prefix}; no FreeSWITCH answered)"
    raise InstallError("no FreeSWITCH found: none answered on the event socket (start it, or pass --esl-port/"
                       "--esl-password), and no mod_python3.so under /usr/local/freeswitch/mod or "
                       "/usr/lib/freeswitch/mod (pass --prefix)")


def embedded_python(mod_dir: str) -> tuple[str, str]:
    """(python binary, libpython) of the Python that mod_python3.so links."""
    module = Path(mod_dir, "mod_python3.so")
    if not module.exists():
        raise InstallError(f"{module} does not exist: build FreeSWITCH with mod_python3 "
                           "(configure --with-python3=/usr/bin/python3), or install its mod_python3 package")
    try:
        linked = subprocess.run(["ldd", str(module)], capture_output=True, text=True, timeout=20).stdout
    except OSError as error:
        raise InstallError(f"cannot run ldd on {module}: {error}") from error
    match = re.search(r"(libpython(\d+\.\d+)[^\s]*\.so[^\s]*)\s*=>\s*(\S+)", linked)
    if not match:
        raise InstallError(f"{module} links no libpython (ldd says: {linked.strip()[:300]})")
    version, library = match.group(2), match.group(3)
    if library == "not":
        raise InstallError(f"{module} links {match.group(1)}, which is not installed")
    beside = Path(library).parent.parent.parent / "bin" / f"python{version}"  # /usr/lib/x86_64-linux-gnu -> /usr/bin
    for candidate in (Path(f"/usr/bin/python{version}"), beside, Path(f"/usr/local/bin/python{version}")):
        if candidate.exists():
            check = subprocess.run([str(candidate), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                                   capture_output=True, text=True, timeout=20)
            if check.returncode == 0:
                return str(candidate), library
    raise InstallError(f"mod_python3 embeds {library}, but no python{version} binary was found beside it")


def with_startup_line(text: str) -> Optional[str]:
    """python.conf.xml with fs_cdr's startup-script line added; None when it has one already."""
    if re.search(r'name="startup-script"\s+value="fs_cdr[\s"]', text):
        return None
    if "<settings>" in text:
        return text.replace("<settings>", f"<settings>\n    {STARTUP}", 1)
    return None


def without_startup_line(text: str) -> str:
    return re.sub(r'\n?\s*<param name="startup-script" value="fs_cdr[^"]*"/>', "", text)


def backup(path: Path) -> Path:
    copy = path.with_name(f"{path.name}.before-fs_cdr-{time.strftime('%Y%m%d%H%M%S')}")
    shutil.copy2(path, copy)
    return copy


def plan(paths: dict[str, str], how: str, python: str, library: str) -> list[str]:
    conf = Path(paths["conf_dir"])
    python_conf = conf / "autoload_configs/python.conf.xml"
    lines = [f"FreeSWITCH found from {how}:"]
    lines += [f"  {name:<12} {paths[name]}" for name in DIRECTORIES]
    lines.append(f"  mod_python3 embeds {library} -> {python}")
    lines.append("Will:")
    lines.append(f"  install fs_cdr and its drivers ({DRIVERS}) for {python} into {paths['script_dir']}, "
                 "compiling the C fast path (fs_cdr._hangup)")
    if not (conf / "cdr.json").exists():
        lines.append(f"  install {conf / 'cdr.json'} (SQLite in {paths['db_dir']}/fs_cdr.sqlite; edit it for your database)")
    else:
        lines.append(f"  keep {conf / 'cdr.json'} as it is")
    if not python_conf.exists():
        lines.append(f"  install {python_conf} (starts fs_cdr with FreeSWITCH)")
    elif with_startup_line(python_conf.read_text()) is not None:
        lines.append(f"  add fs_cdr's startup line to {python_conf} (a copy of it is kept)")
    else:
        lines.append(f"  keep {python_conf}: it starts fs_cdr already")
    return lines


def install(paths: dict[str, str], python: str, source: Path) -> list[str]:
    scripts, conf = Path(paths["script_dir"]), Path(paths["conf_dir"])
    scripts.mkdir(parents=True, exist_ok=True)
    before = set(os.listdir(scripts))
    pip = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True)
    if pip.returncode:
        raise InstallError(f"{python} has no pip: install it (Debian: apt install python3-pip python3-dev)")
    result = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--upgrade",
                             "--no-warn-script-location", "--target", str(scripts), f"{source}[{DRIVERS}]"],
                            capture_output=True, text=True)
    if result.returncode:
        raise InstallError(f"pip could not install fs_cdr for {python}:\n{(result.stdout + result.stderr)[-2000:]}")
    added = sorted(set(os.listdir(scripts)) - before)
    manifest = scripts / MANIFEST
    known = set(manifest.read_text().split()) if manifest.exists() else set()
    manifest.write_text("\n".join(sorted(known | set(added))) + "\n")
    check = subprocess.run([python, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import fs_cdr, fs_cdr._hangup; "
                            "print(fs_cdr.__file__)", str(scripts)], capture_output=True, text=True)
    if check.returncode:
        raise InstallError(f"fs_cdr does not import in {python}: {check.stderr.strip()[-600:]}")
    done = [f"installed fs_cdr ({check.stdout.strip()}) with its compiled fast path for {python}"]
    cdr_json = conf / "cdr.json"
    if not cdr_json.exists():
        shutil.copy(source / "cdr.json", cdr_json)
        done.append(f"installed {cdr_json}")
    python_conf = conf / "autoload_configs/python.conf.xml"
    if not python_conf.exists():
        python_conf.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / "freeswitch/autoload_configs/python.conf.xml", python_conf)
        done.append(f"installed {python_conf}")
    else:
        updated = with_startup_line(python_conf.read_text())
        if updated is not None:
            copy = backup(python_conf)
            python_conf.write_text(updated)
            done.append(f"added fs_cdr's startup line to {python_conf} (it was kept as {copy.name})")
    return done


def uninstall(paths: dict[str, str]) -> list[str]:
    scripts, conf = Path(paths["script_dir"]), Path(paths["conf_dir"])
    manifest = scripts / MANIFEST
    if not manifest.exists():
        raise InstallError(f"no {manifest}: fs_cdr was not installed there by this installer")
    removed = []
    for name in manifest.read_text().split():
        target = scripts / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        removed.append(name)
    manifest.unlink()
    done = [f"removed {len(removed)} entries from {scripts}"]
    python_conf = conf / "autoload_configs/python.conf.xml"
    if python_conf.exists():
        text = python_conf.read_text()
        stripped = without_startup_line(text)
        if stripped != text:
            copy = backup(python_conf)
            python_conf.write_text(stripped)
            done.append(f"took fs_cdr's startup line out of {python_conf} (kept as {copy.name})")
    done.append(f"kept {conf / 'cdr.json'}, the spool and the CDRs; restart FreeSWITCH to unload fs_cdr")
    return done


def next_steps(paths: dict[str, str], esl: str) -> list[str]:
    cli = f"fs_cli{esl}"
    return [
        "Start fs_cdr now (or restart FreeSWITCH, which starts it from python.conf.xml):",
        f"  {cli} -x 'load mod_python3'      # if modules.conf.xml does not load it yet",
        f"  {cli} -x 'python fs_cdr start'",
        f"  {cli} -x 'python fs_cdr status'",
        "Verify a CDR (the default cdr.json writes SQLite):",
        f"  {cli} -x 'originate null/1000 &hangup()'",
        f"  sqlite3 {paths['db_dir']}/fs_cdr.sqlite 'SELECT uuid, leg, hangup_cause FROM cdr ORDER BY end_epoch DESC LIMIT 1'",
        "After an upgrade (running this again), restart FreeSWITCH: Python keeps the old code loaded until then.",
    ]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="install_freeswitch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", help="FreeSWITCH's install prefix (/usr for the FHS layout); a running FreeSWITCH "
                                         "of another prefix is then left alone")
    parser.add_argument("--esl-port", type=int, default=8021, help="the running FreeSWITCH's event socket port")
    parser.add_argument("--esl-password", default="ClueCon", help="its event socket password")
    parser.add_argument("--dry-run", action="store_true", help="say what would be done, do nothing")
    parser.add_argument("--uninstall", action="store_true", help="remove what an install added")
    args = parser.parse_args(argv)
    try:
        paths, how = discover(args)
        esl = "" if (args.esl_port, args.esl_password) == (8021, "ClueCon") else \
            f" -P {args.esl_port} -p '{args.esl_password}'"
        if args.uninstall:
            print(f"FreeSWITCH found from {how}: scripts {paths['script_dir']}, conf {paths['conf_dir']}")
            if not args.dry_run:
                print("\n".join(uninstall(paths)))
            return 0
        python, library = embedded_python(paths["mod_dir"])
        print("\n".join(plan(paths, how, python, library)))
        if args.dry_run:
            print("(dry run: nothing was changed)")
            return 0
        print("\n".join(install(paths, python, HERE)))
        print("\n".join(next_steps(paths, esl)))
        return 0
    except InstallError as error:
        print(f"install_freeswitch: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
