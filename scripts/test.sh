#!/usr/bin/env bash
# The test command (README "Testing"): every crate's unit and integration tests, against the
# real RabbitMQ (127.0.0.1:5672) and PostgreSQL (127.0.0.1:5432), and an S3-compatible server
# (DR_TEST_S3_ENDPOINT; moto is started from a venv when unset).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DR_TEST_S3_ENDPOINT:-}" ]; then
  eval "$(scripts/s3-test-server.sh start)"
fi
export DR_TEST_S3_ENDPOINT
# --no-fail-fast: one failing test binary must not hide the results of the others.
exec cargo test --workspace --locked --no-fail-fast "$@"
