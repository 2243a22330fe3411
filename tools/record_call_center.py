"""Record the call-center scenarios (tests/call_center_scenarios.py) into tests/events/, so the suite
without FreeSWITCH checks every leg's outcome and hangup_by, and the call row, against what a real
switch sent.

    .venv/bin/python tools/record_call_center.py [scenario ...]

Starts a private FreeSWITCH (tests/live_switch.py: it refuses to start while another harness
FreeSWITCH holds its ports), subscribes to the channel events over the event socket (``event json``,
the serialization of ``Event.serialize('json')``), runs each scenario and writes ``<scenario>.jsonl``
and ``<scenario>.commands.txt``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from call_center_scenarios import EVENTS, NEEDS, SCENARIOS, record
from live_switch import LiveSwitch, module_missing

from fs_cdr.channel import dumps


def main(names: list[str]) -> int:
    out = ROOT / "tests" / "events"
    with tempfile.TemporaryDirectory(prefix="fs_cdr_record_") as directory:
        live = LiveSwitch(Path(directory), {"log": True, "spool_dir": str(Path(directory) / "spool")})
        live.prepare()
        live.start()
        try:
            time.sleep(2)  # mod_callcenter loads its agents after "is ready"
            socket = live.event_socket()
            socket.subscribe(*EVENTS.split())
            for name in names or list(SCENARIOS):
                story, command, actions = SCENARIOS[name]
                missing = module_missing(NEEDS[name]) if name in NEEDS else None
                if missing:
                    print(f"{name}: skipped, {missing}")
                    continue
                events, ran = record(live, socket, command, actions)
                (out / f"{name}.jsonl").write_text("".join(dumps(event) + "\n" for event in events))
                (out / f"{name}.commands.txt").write_text(
                    f"# scenario {name} (tools/record_call_center.py): {story}\n" + "\n".join(ran) + "\n")
                hangups = sum(1 for event in events if event["Event-Name"] == "CHANNEL_HANGUP_COMPLETE")
                print(f"{name}: {len(events)} events, {hangups} hangups; " + " | ".join(ran))
                time.sleep(1)
            socket.close()
        finally:
            if live.process is not None and live.process.poll() is not None:
                print(f"FreeSWITCH exited with {live.process.returncode}:\n" + live.log_text()[-3000:])
            live.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
