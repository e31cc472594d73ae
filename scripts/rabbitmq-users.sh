#!/usr/bin/env bash
# Create per-role RabbitMQ users with least-privilege permissions on one vhost.
#
#   scripts/rabbitmq-users.sh [--vhost /] [--prefix drfleet]
#
# Users: <prefix>-backup, -restore, -drill, -verify, -policy, -retention, -keys, -audit, -scheduler,
# -publisher, -monitor.
# Passwords come from DRFLEET_RMQ_PASSWORD_<USER> (upper case, '-' → '_', e.g.
# DRFLEET_RMQ_PASSWORD_DRFLEET_BACKUP), else DRFLEET_RMQ_PASSWORD; a missing one is generated
# and printed once.
#
# RabbitMQ checks configure/write/read as regexes over resource names:
# - declaring an exchange/queue needs configure on it (every drfleet process declares the
#   topology at start, idempotently, so workers may configure exactly the dr.* names);
# - binding a queue needs write on the queue and read on the exchange;
# - publishing needs write on the exchange; consuming needs read on the queue.
# Hence a role's read set is its own queue plus the exchanges its bindings name. (The
# dead-letter exchange and queue share the name `dr.dead-letter`, so readers of the exchange
# can read that queue too — it holds redacted copies: no token signature. Workers publish
# those copies to the exchange, covered by BIND_WRITE.)
set -euo pipefail
VHOST=/
PREFIX=drfleet
while [ $# -gt 0 ]; do
  case "$1" in
    --vhost) VHOST=$2; shift 2 ;;
    --prefix) PREFIX=$2; shift 2 ;;
    *) echo "usage: $0 [--vhost VHOST] [--prefix PREFIX]" >&2; exit 2 ;;
  esac
done

TOPOLOGY='^dr\.(commands|events|dead-letter|backup|restore|drill|verify|policy|retention|keys|audit)$'
BIND_WRITE='^dr\.(backup|restore|drill|verify|policy|retention|keys|audit|dead-letter|events)$'
EXCHANGES='dr\.commands|dr\.events|dr\.dead-letter'

user() { # user NAME CONFIGURE WRITE READ
  local name=$1 var pw
  var="DRFLEET_RMQ_PASSWORD_$(echo "$name" | tr 'a-z-' 'A-Z_')"
  pw=${!var:-${DRFLEET_RMQ_PASSWORD:-}}
  if [ -z "$pw" ]; then
    pw=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
    echo "$name password: $pw"
  fi
  if rabbitmqctl -q list_users | awk '{print $1}' | grep -qx "$name"; then
    rabbitmqctl -q change_password "$name" "$pw" >/dev/null
  else
    rabbitmqctl -q add_user "$name" "$pw" >/dev/null
  fi
  rabbitmqctl -q set_permissions -p "$VHOST" "$name" "$2" "$3" "$4" >/dev/null
}

for role in backup restore drill verify policy retention keys; do
  user "$PREFIX-$role" "$TOPOLOGY" "$BIND_WRITE" "^(dr\\.$role|$EXCHANGES)\$"
done
user "$PREFIX-audit" "$TOPOLOGY" "$BIND_WRITE" "^(dr\\.audit|$EXCHANGES)\$"
# The scheduler: declares the topology, publishes commands and (its outbox relay) events. It
# never consumes; read on the queues is what RabbitMQ asks of whoever declares a queue with a
# dead-letter exchange, and the scheduler may start before any worker.
user "$PREFIX-scheduler" "$TOPOLOGY" '^dr\.(backup|restore|drill|verify|policy|retention|keys|audit|dead-letter|events|commands)$' "^(dr\\.(backup|restore|drill|verify|policy|retention|keys|audit)|$EXCHANGES)\$"
# Upstream services: publish commands, nothing else.
user "$PREFIX-publisher" '^$' '^dr\.commands$' '^$'
# Security monitoring: its own server-named queues bound to dr.events.
user "$PREFIX-monitor" '^amq\.gen-.*$' '^amq\.gen-.*$' '^(dr\.events|amq\.gen-.*)$'
