#!/usr/bin/env bash
# Start the services the tests talk to, when they are down. Idempotent; prints what it did.
set -u
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() { for _ in $(seq 1 60); do up "$1" && return 0; sleep 1; done; echo "service on port $1 did not come up" >&2; return 1; }

if ! up 5432; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  wait_for 5432
fi
if ! up 3306; then
  echo "starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  wait_for 3306
fi
if ! up 5672; then
  echo "starting RabbitMQ"
  rabbitmq-server -detached || true
  wait_for 5672
fi
# A broker whose app was stopped (a test restarts it) still listens: make sure the app runs.
rabbitmqctl -q start_app >/dev/null 2>&1 || true
echo "services: PostgreSQL :5432, MariaDB :3306 and RabbitMQ :5672 are up"
