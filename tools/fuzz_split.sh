#!/usr/bin/env bash
# Build fs_cdr/_hangup.c with ASan+UBSan and fuzz it (tools/fuzz_split.py). Usage: tools/fuzz_split.sh [seconds] [seed]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
suffix=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
gcc -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined -Wall -fPIC \
    -shared -I"$include" "$here/fs_cdr/_hangup.c" -o "$work/_hangup$suffix"
ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
    "$python" "$here/tools/fuzz_split.py" "$work/_hangup$suffix" "${1:-300}" "${2:-1}"
