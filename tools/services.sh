#!/usr/bin/env bash
# Start the local servers the tests talk to (MariaDB, PostgreSQL, Redis, RabbitMQ) when they are not running,
# and install the C headers mysqlclient builds against. Idempotent; loopback only.
set -u

have_port() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 name=$2
    for _ in $(seq 1 60); do
        have_port "$port" && return 0
        sleep 0.5
    done
    echo "services: $name did not come up on 127.0.0.1:$port" >&2
    return 1
}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=""
    for package in libmariadb-dev pkg-config unixodbc-dev odbc-postgresql odbc-mariadb python3-dev; do
        dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
    done
    if [ -n "$missing" ]; then
        echo "services: installing$missing"
        apt-get update -qq >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 $missing >/dev/null
    fi
fi

status=0
if ! have_port 3306; then
    echo "services: starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_port 3306 MariaDB || status=1
fi
if ! have_port 5432; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    wait_port 5432 PostgreSQL || status=1
fi
if ! have_port 6379; then
    echo "services: starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    wait_port 6379 Redis || status=1
fi
if ! have_port 5672 && command -v rabbitmq-server >/dev/null; then
    echo "services: starting RabbitMQ"
    rabbitmq-server -detached
    wait_port 5672 RabbitMQ || status=1
fi
exit $status
