#!/usr/bin/env bash
# Start moto's S3-compatible server for the tests, from PyPI in a venv (.venv-moto).
# `scripts/s3-test-server.sh start` prints `export DR_TEST_S3_ENDPOINT=...` for eval.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${DR_TEST_S3_PORT:-5055}
VENV=${DR_TEST_S3_VENV:-.venv-moto}
case "${1:-start}" in
  start)
    if ! curl -fsS "http://127.0.0.1:$PORT/moto-api/" >/dev/null 2>&1; then
      if [ ! -x "$VENV/bin/moto_server" ]; then
        python3 -m venv "$VENV" >&2
        "$VENV/bin/pip" install -q 'moto[server]>=5,<6' >&2
      fi
      nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$VENV/moto.log" 2>&1 &
      for _ in $(seq 1 60); do
        curl -fsS "http://127.0.0.1:$PORT/moto-api/" >/dev/null 2>&1 && break
        sleep 0.5
      done
    fi
    curl -fsS "http://127.0.0.1:$PORT/moto-api/" >/dev/null
    echo "export DR_TEST_S3_ENDPOINT=http://127.0.0.1:$PORT"
    ;;
  stop)
    pkill -f "moto_server -H 127.0.0.1 -p $PORT" || true
    ;;
esac
