#!/usr/bin/env bash
# What 100,000 tombstones cost a run: two conversations of 100,000
# messages synced from the embedded mock, one of them erased by ID
# (`forget --ids-file`), then incremental syncs of both conversations in
# that output and in a copy taken before the erasure, measured by
# `perf stat` (CPU and wall time, 20 runs each, alternately) and
# `/usr/bin/time` (peak RSS).
#
#   scripts/bench-tombstones.sh [messages]     (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-100000}
cargo build --release --quiet
bin=$PWD/target/release/xquik-dm
work=$(mktemp -d)
trap 'kill $mock 2>/dev/null; rm -rf "$work"' EXIT
"$bin" mock --port 0 --conversations 2 --messages "$messages" --page-size 1000 \
  --no-rate-limit --api-key k >"$work/mock.out" 2>/dev/null &
mock=$!
for _ in $(seq 50); do [ -s "$work/mock.out" ] && break; sleep 0.1; done
url=$(head -1 "$work/mock.out")
export XQUIK_API_KEY=k
sync() { "$bin" --base-url "$url" sync --account bench --user 2000000001 --user 2000000002 --out "$1" --json; }
sync "$work/erased" >/dev/null
cp -a "$work/erased" "$work/control"
grep '"conversation_user_id":"2000000001"' "$work/erased/xquik-dm-handoff.jsonl" |
  sed 's/.*"message_id":"\([0-9]*\)".*/\1/' >"$work/ids.txt"
/usr/bin/time -f "forget: %e s, peak RSS %M KB" "$bin" forget --out "$work/erased" \
  --ids-file "$work/ids.txt" --reason bench --json >/dev/null
for round in 1 2; do
  for out in control erased; do
    printf '%s (round %s): ' "$out" "$round"
    perf stat -r 20 -x, -e task-clock bash -c "$(declare -f sync); bin=$bin url=$url sync $work/$out >/dev/null" 2>&1 |
      awk -F, '{printf "%.1f ms CPU, ", $1}'
    /usr/bin/time -f "peak RSS %M KB" bash -c "$(declare -f sync); bin=$bin url=$url sync $work/$out >/dev/null"
  done
done
