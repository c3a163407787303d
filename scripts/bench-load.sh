#!/usr/bin/env bash
# The load benchmark: a full sync of the synthetic world (1,000 x 1,000
# messages by default) into a folder, then `xquik-dm load` of it into a
# private PostgreSQL 15 (the machine's, on a socket in a temporary folder)
# three times, each into empty tables; prints the sync's figures and the
# load's rows/s and peak RSS (medians). Run as root (the server runs as the
# `postgres` user). Arguments: CONVERSATIONS MESSAGES.
set -euo pipefail
cd "$(dirname "$0")/.."
conversations=${1:-1000}
messages=${2:-1000}
pgbin=/usr/lib/postgresql/15/bin
cargo build --release --quiet
bin=$PWD/target/release/xquik-dm

work=$(mktemp -d)
chown postgres:postgres "$work"
cleanup() {
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
  kill "${mock:-0}" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" --log-format json mock --port 0 --no-rate-limit --conversations "$conversations" \
  --messages "$messages" --page-size 100 >"$work/mock.url" 2>/dev/null &
mock=$!
for _ in $(seq 1 100); do [ -s "$work/mock.url" ] && break; sleep 0.1; done
python3 - "$conversations" >"$work/job.toml" <<'PY'
import json, sys
users = [str(2_000_000_001 + i) for i in range(int(sys.argv[1]))]
print('concurrency = 8\nrate_get = 0\n\n[[conversations]]\naccount = "bench"\nusers = ' + json.dumps(users))
PY
start=$(date +%s.%N)
XQUIK_API_KEY=bench "$bin" --base-url "$(head -1 "$work/mock.url")" --log-format json \
  sync --job "$work/job.toml" --out "$work/out" >/dev/null
end=$(date +%s.%N)
kill "$mock"
rows=$((conversations * messages))
python3 -c "print(f'sync:  {$rows} messages in {$end - $start:.2f} s = {$rows / ($end - $start):,.0f} messages/s')"

runuser -u postgres -- "$pgbin/initdb" -A trust -U postgres -E UTF8 --locale C -D "$work/data" >/dev/null
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/data" -o "-k $work -c listen_addresses=''" \
  -w -l "$work/pg.log" start >/dev/null
url="host=$work user=postgres dbname=postgres"
for run in 1 2 3; do
  psql -h "$work" -U postgres -X -q -c 'DROP SCHEMA IF EXISTS xquik_dm CASCADE' 2>/dev/null
  /usr/bin/time -f "%e %M" -o "$work/time.$run" "$bin" --log-format json load \
    --from "$work/out" --to "$url" >/dev/null 2>&1
done
python3 - "$rows" "$work"/time.* <<'PY'
import statistics, sys
rows = int(sys.argv[1])
runs = [tuple(map(float, open(p).read().split()[-2:])) for p in sys.argv[2:]]
wall = statistics.median(w for w, _ in runs)
rss = statistics.median(m for _, m in runs)
print(f"load:  {rows} rows in {wall:.2f} s = {rows / wall:,.0f} rows/s, peak RSS {rss / 1000:.1f} MB (medians of {len(runs)})")
PY
