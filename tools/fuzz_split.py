"""Mutation fuzzer for the compiled split (fs_cdr/_hangup.c), meant for a sanitizer build.

    tools/fuzz_split.sh [seconds] [seed]

builds fs_cdr/_hangup.c with AddressSanitizer and UndefinedBehaviorSanitizer into a temporary
directory and runs this file against that build: recorded hangup lines, damaged at random (bytes
flipped, inserted, deleted, cut; escapes, UTF-8 fragments, arrays, structure), through every builder
of tests/test_hangup_split.py. A record the split makes must equal the Python path's; any memory
error aborts with the sanitizer's report. Not part of the test suite (it runs for minutes).
"""

from __future__ import annotations

import importlib.util
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

INSERTS = [b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\\", b'"', b"[", b"]", b",", b":", b"\\u0041", b"\\n",
           b"=", b"password=", b'["a","b"]', b'"variable_x":"y",', b"\xf4\x90\x80\x80", b"\xf0\x9f\x98\x80", b" ",
           b"{", b"}"]


def main() -> int:
    module_path, seconds, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    import fs_cdr  # noqa: F401 - the package first, then the sanitizer build in place of its module

    spec = importlib.util.spec_from_file_location("fs_cdr._hangup", module_path)
    assert spec is not None and spec.loader is not None, module_path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["fs_cdr._hangup"] = module
    import fs_cdr.record

    assert fs_cdr.record._hangup is module
    import test_hangup_split as cases

    generator = random.Random(seed)
    builders = list(cases.BUILDERS.values())
    ran = taken = 0
    started = time.time()
    while time.time() - started < seconds:
        data = bytearray(generator.choice(cases.RECORDED))
        for _ in range(generator.randint(1, 4)):
            at = generator.randrange(len(data) + 1)
            kind = generator.random()
            if kind < 0.5:
                data[at:at] = generator.choice(INSERTS)
            elif kind < 0.7 and at < len(data):
                data[at] = generator.randrange(256)
            elif kind < 0.85:
                del data[at:at + generator.randint(1, 20)]
            else:
                del data[at:]
        text = bytes(data)
        builder = generator.choice(builders)
        fast = cases.fast_path(builder, text if generator.random() < 0.7 else cases.swig_str(text))
        ran += 1
        if fast is not cases.DECLINED:
            taken += 1
            assert cases.same(fast, cases.python_path(builder, text)), text[:300]
    print(f"fuzz_split: {ran} lines, {taken} taken by the split and equal to the Python path's record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
