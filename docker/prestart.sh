#!/bin/sh
# Runs before the API starts (the api image's entrypoint): wait for Postgres, apply migrations, then exec
# the command. The API refuses to start on an unmigrated database, so this must succeed first.
set -eu

tries=0
until python - <<'PY'
from sqlalchemy import text

from mergetune.common.db import make_engine
from mergetune.common.settings import get_settings

engine = make_engine(get_settings().DATABASE_URL)
with engine.connect() as conn:
    conn.execute(text("SELECT 1"))
PY
do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "prestart: database not reachable after 60 tries" >&2
    exit 1
  fi
  echo "prestart: waiting for the database ($tries)" >&2
  sleep 1
done

echo "prestart: alembic upgrade head" >&2
alembic -c /app/alembic.ini upgrade head

exec "$@"
