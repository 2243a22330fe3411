#!/usr/bin/env bash
# Install fs_cdr into a FreeSWITCH: the package and its pinned drivers into FreeSWITCH's scripts
# directory (first on mod_python3's sys.path), for the Python mod_python3 embeds (/usr/bin/python3).
set -euo pipefail
prefix=${1:-/usr/local/freeswitch}
python=${FS_PYTHON:-/usr/bin/python3}
here=$(cd "$(dirname "$0")/.." && pwd)
[ -d "$prefix/scripts" ] || { echo "no $prefix/scripts: is FreeSWITCH installed under $prefix?" >&2; exit 1; }
"$python" -m pip install --quiet --upgrade --target "$prefix/scripts" "$here[fast,mysql,postgresql,redis]"
if [ ! -e "$prefix/conf/cdr.json" ]; then
    cp "$here/cdr.json" "$prefix/conf/cdr.json"
    echo "installed $prefix/conf/cdr.json"
fi
if [ -e "$prefix/conf/autoload_configs/python.conf.xml" ] && ! grep -q fs_cdr "$prefix/conf/autoload_configs/python.conf.xml"; then
    cp "$prefix/conf/autoload_configs/python.conf.xml" "$prefix/conf/autoload_configs/python.conf.xml.before-fs_cdr"
fi
cp "$here/freeswitch/autoload_configs/python.conf.xml" "$prefix/conf/autoload_configs/python.conf.xml"
echo "fs_cdr installed in $prefix/scripts; start it with: fs_cli -x 'pyrun fs_cdr' (or restart FreeSWITCH)"
