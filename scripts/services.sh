# Sourced by .ci/run and scripts/demo: install (Debian packages) and start the services drfleet
# needs on this machine when they are missing or stopped. Needs root for apt and the service
# control commands; does nothing when the services already answer.

apt_updated=${apt_updated:-0}
need_pkg() { # need_pkg <command> <package...>: install the packages unless <command> exists
  if ! command -v "$1" >/dev/null 2>&1; then
    if [ "$apt_updated" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq; apt_updated=1; fi
    shift
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

# PostgreSQL on 127.0.0.1:5432 with trust authentication on loopback (user postgres).
ensure_postgres() {
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    need_pkg __force_install__ postgresql
  fi
  local ver hba
  ver=$(ls /etc/postgresql | sort -V | tail -n 1)
  if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start || pg_ctlcluster "$ver" main start
  fi
  for _ in $(seq 1 60); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
  if ! psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
    # A freshly installed cluster asks for passwords on TCP; drfleet's tests and demo use
    # trust on loopback.
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main reload || pg_ctlcluster "$ver" main reload
    sleep 1
  fi
}

# RabbitMQ on 127.0.0.1:5672 (guest/guest on loopback).
ensure_rabbitmq() {
  need_pkg rabbitmq-server rabbitmq-server
  if ! rabbitmqctl -q status >/dev/null 2>&1; then
    rabbitmq-server -detached || true
  fi
  timeout 120 rabbitmqctl await_startup >/dev/null
}
