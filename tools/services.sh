#!/usr/bin/env bash
# Start the local servers the tests talk to (MariaDB, PostgreSQL, Redis, RabbitMQ) when they are not
# running. Idempotent; loopback only.
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
