#!/bin/sh
# The stand-in object store: moto's S3 server on 0.0.0.0:$OBJECTSTORE_PORT, then the buckets named in
# $OBJECTSTORE_BUCKETS (space separated) created once it answers; it stops when the server stops.
set -eu
port=${OBJECTSTORE_PORT:-9000}
moto_server -H "${OBJECTSTORE_HOST:-0.0.0.0}" -p "$port" &
server=$!
trap 'kill "$server" 2>/dev/null || true' TERM INT
python - "$port" ${OBJECTSTORE_BUCKETS:-mergetune} <<'PY'
import sys, time, urllib.request

port, buckets = sys.argv[1], sys.argv[2:]
url = f"http://127.0.0.1:{port}"
for _ in range(1200):  # moto imports slowly on a busy machine: up to 2 minutes
    try:
        urllib.request.urlopen(url + "/", timeout=1).read()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(f"objectstore: the S3 server did not answer on {url}")
for bucket in buckets:
    req = urllib.request.Request(f"{url}/{bucket}", method="PUT")
    urllib.request.urlopen(req, timeout=5).read()
    print(f"objectstore: bucket {bucket} ready on port {port}", flush=True)
PY
wait "$server"
