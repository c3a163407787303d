#!/usr/bin/env bash
# The benchmark with the object storage scenario: a local S3 server (moto,
# from PyPI, installed into target/ on first use) on 127.0.0.1, a bucket,
# and `xquik-dm bench --bucket s3://bench/dm` against it. Extra arguments go
# to `xquik-dm bench` (e.g. --runs 1 --conversations 100).
set -euo pipefail
cd "$(dirname "$0")/.."

deps=target/pydeps-bench
if ! PYTHONPATH=$deps python3 -c 'import moto' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$deps" 'moto[server]'
fi
cargo build --release --quiet

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PYTHONPATH=$deps python3 -m moto.server -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break
  sleep 0.1
done
python3 - "$port" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
c.request("PUT", "/bench")
assert c.getresponse().status == 200
PY

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
  AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true \
  AWS_METADATA_ENDPOINT=http://127.0.0.1:9
target/release/xquik-dm bench --bucket s3://bench/dm "$@"
# The S3 server shares this machine's cores with the tool and the mock:
# its CPU time is part of what the bucket scenario's wall time reflects.
echo "S3 server (moto) CPU time over the whole benchmark: $(ps -o cputime= -p "$moto" | tr -d ' ')"
