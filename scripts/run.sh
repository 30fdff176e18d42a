#!/usr/bin/env bash
# `make run`: database, migrations, demo data, then web + Celery worker + beat. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
UV="${UV:-uv}"
export DEBUG="${DEBUG:-true}"
# Not `export X="$(...)"`: export's own status would hide ensure_db's failure from `set -e`.
# ensure_db has said why in one line on stderr.
DATABASE_URL="$("$UV" run --frozen python scripts/ensure_db.py)" || exit 1
export DATABASE_URL
if [ -z "${CELERY_BROKER_URL:-}" ]; then
  if "$UV" run --frozen python -c "import socket; socket.create_connection(('127.0.0.1', 6379), 1)" 2>/dev/null; then
    export CELERY_BROKER_URL="redis://127.0.0.1:6379/0"
  else
    echo "[run] Redis not reachable on 127.0.0.1:6379: using a file-based broker under .data/broker"
    mkdir -p .data/broker/processed
    export CELERY_BROKER_URL="filesystem://"
  fi
fi
PORT="${PORT:-8000}"

"$UV" run --frozen python manage.py migrate --no-input
# Static files as production serves them: hashed names, gzip/brotli copies, a year's caching
# (WhiteNoise, see STATIC_COLLECTED in the README).
export STATIC_COLLECTED=true
"$UV" run --frozen python manage.py collectstatic --no-input -v 0
"$UV" run --frozen python manage.py demo --if-empty
"$UV" run --frozen python manage.py demo_billing
# Fold the demo history into the rollups now, so the dashboards are full on first load
# (the worker keeps them current every minute after this).
"$UV" run --frozen python manage.py rollup
# The stories that span apps (a near-quota limit, a billing hold), then one alert evaluation so
# the alert queue shows the alerting demo accounts at once (beat keeps evaluating after this).
"$UV" run --frozen python manage.py demo_stories
"$UV" run --frozen python manage.py evaluate_alerts

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "[run] stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

"$UV" run --frozen python manage.py runserver "127.0.0.1:$PORT" --noreload & pids+=($!)
"$UV" run --frozen celery -A config worker --loglevel=INFO --concurrency=2 & pids+=($!)
"$UV" run --frozen celery -A config beat --loglevel=INFO & pids+=($!)

sleep 3
cat <<MSG

  Meterops is running.
    Admin:     http://127.0.0.1:$PORT/admin/
    API docs:  http://127.0.0.1:$PORT/api/docs/
    Demo logins (password for all: meterops-demo):
      admin    superuser
      support  Support group
      manager  Manager group
      auditor  Auditor group (read-only)
    Demo API key (ingest, read, manage): mo_demo_local-development-only-key
    Broker:    $CELERY_BROKER_URL
  Press Ctrl-C to stop.

MSG
wait -n "${pids[@]}"
