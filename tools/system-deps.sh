#!/usr/bin/env bash
# The Debian packages the Python dependencies build against (mysqlclient: libmariadb-dev, pkg-config;
# pyodbc: unixodbc-dev; the drivers for /usr/bin/python3: python3-dev) and the ODBC drivers the tests
# use, and the binaries the HTTP and NATS sink tests run (nats-server, started privately by the tests; openssl,
# for a throwaway CA). Installed when missing and when run as root; otherwise it only says what is missing.
set -u
missing=""
for package in libmariadb-dev pkg-config unixodbc-dev odbc-postgresql odbc-mariadb python3-dev nats-server openssl; do
    dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
done
[ -n "$missing" ] || exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "system-deps: installing$missing"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 $missing >/dev/null
else
    echo "system-deps: missing Debian packages:$missing (install them as root)" >&2
fi
