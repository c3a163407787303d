#!/usr/bin/env bash
# Compares the CPU a full sync spends per message in two versions of
# xquik-dm: the working tree against an earlier commit, on the same machine.
#
#   scripts/bench-ab.sh <commit> [pairs]      e.g. scripts/bench-ab.sh 4dfbe0c 7
#
# A shared machine drifts by more than the difference being measured, so the
# two versions run `bench --runs 1` alternately, back to back, and the
# comparison is the median of the pairs' ratios. The earlier version is built
# once (from a temporary git worktree, sharing target/ for the dependencies)
# and kept as target/ab/xquik-dm-<commit>.
set -euo pipefail

rev=${1:?usage: scripts/bench-ab.sh <commit> [pairs]}
pairs=${2:-7}
root=$(git rev-parse --show-toplevel)
cd "$root"
mkdir -p target/ab
old="target/ab/xquik-dm-$rev"

if [ ! -x "$old" ]; then
    tree=$(mktemp -d)
    git worktree add --detach "$tree" "$rev" >/dev/null
    (cd "$tree" && CARGO_TARGET_DIR="$root/target" cargo build --release --quiet)
    cp target/release/xquik-dm "$old"
    git worktree remove --force "$tree"
fi
cargo build --release --quiet
new=target/release/xquik-dm

for i in $(seq "$pairs"); do
    "$old" bench --runs 1 --json >"target/ab/old-$i.json" 2>/dev/null
    "$new" bench --runs 1 --json >"target/ab/new-$i.json" 2>/dev/null
    echo "pair $i of $pairs done" >&2
done

python3 - "$pairs" "$rev" <<'PY'
import json, statistics, sys

pairs, rev = int(sys.argv[1]), sys.argv[2]
load = lambda side, i: json.load(open(f"target/ab/{side}-{i}.json"))
old = [load("old", i) for i in range(1, pairs + 1)]
new = [load("new", i) for i in range(1, pairs + 1)]

def per_million(run, scenario):
    figures = run[scenario]
    return figures["cpu_s"] / figures["messages"] * 1e6

print(f"xquik-dm CPU per message: {rev} vs the working tree, {pairs} alternating pairs, medians")
print(f"{'scenario':<20} {'CPU s / 1M (' + rev + ')':>22} {'CPU s / 1M (now)':>18} {'messages per CPU-s':>20}")
for scenario in ("fetch_only", "full_sync"):
    a = [per_million(r, scenario) for r in old]
    b = [per_million(r, scenario) for r in new]
    ratio = statistics.median(x / y for x, y in zip(a, b))
    print(f"{scenario:<20} {statistics.median(a):>22.2f} {statistics.median(b):>18.2f} {ratio:>19.2f}x")
for name, runs in ((rev, old), ("now", new)):
    share = statistics.median(
        r["full_sync"]["messages_per_s"] / r["fetch_only"]["messages_per_s"] for r in runs
    )
    print(f"full sync / fetch-only messages/s ({name}): {share:.0%}")
PY
