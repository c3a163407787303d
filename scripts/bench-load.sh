#!/usr/bin/env bash
# The load benchmark: a full sync of the synthetic world (1,000 x 1,000
# messages by default) into a folder, then `xquik-dm load` of it into a
# private PostgreSQL 15 (the machine's, with a certificate from a CA made
# here) three times per way of connecting, each into empty tables, the ways
# taking turns: the Unix socket (no TLS), TCP on 127.0.0.1 without TLS, and
# TCP with TLS (sslmode=verify-full). Prints the sync's figures, each way's
# rows/s and peak RSS (medians), and TLS as a share of the two others. Run
# as root (the server runs as the `postgres` user). Arguments:
# CONVERSATIONS MESSAGES.
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

# A CA and a certificate for localhost (EC P-256, as managed databases
# commonly serve), the server's key readable by the server alone.
(
  cd "$work"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout ca.key -out ca.pem -days 2 -subj /CN=bench-ca 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
  printf 'subjectAltName=DNS:localhost\n' >server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out server.pem -days 2 -extfile server.ext 2>/dev/null
  chown postgres:postgres server.key server.pem
  chmod 600 server.key
)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
runuser -u postgres -- "$pgbin/initdb" -A trust -U postgres -E UTF8 --locale C -D "$work/data" >/dev/null
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/data" -w -l "$work/pg.log" start -o \
  "-k $work -p $port -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file=$work/server.pem -c ssl_key_file=$work/server.key" \
  >/dev/null
declare -A urls=(
  [socket]="host=$work port=$port user=postgres dbname=postgres"
  [tcp]="host=localhost hostaddr=127.0.0.1 port=$port user=postgres dbname=postgres sslmode=disable"
  [tls]="host=localhost hostaddr=127.0.0.1 port=$port user=postgres dbname=postgres sslmode=verify-full sslrootcert=$work/ca.pem"
)
for run in 1 2 3; do
  for way in socket tcp tls; do
    psql -h "$work" -p "$port" -U postgres -X -q -c 'DROP SCHEMA IF EXISTS xquik_dm CASCADE' 2>/dev/null
    /usr/bin/time -f "%e %M" -o "$work/time.$way.$run" "$bin" --log-format json load \
      --from "$work/out" --to "${urls[$way]}" >/dev/null 2>&1
  done
done
python3 - "$rows" "$work" <<'PY'
import statistics, sys
rows, work = int(sys.argv[1]), sys.argv[2]
label = {"socket": "Unix socket, no TLS", "tcp": "TCP, no TLS", "tls": "TCP, TLS verify-full"}
rate = {}
for way in ("socket", "tcp", "tls"):
    runs = [tuple(map(float, open(f"{work}/time.{way}.{r}").read().split()[-2:])) for r in (1, 2, 3)]
    wall = statistics.median(w for w, _ in runs)
    rss = statistics.median(m for _, m in runs)
    rate[way] = rows / wall
    print(f"load ({label[way]}): {rows} rows in {wall:.2f} s = {rate[way]:,.0f} rows/s, peak RSS {rss / 1000:.1f} MB (medians of {len(runs)})")
print(f"TLS / TCP without TLS: {rate['tls'] / rate['tcp']:.0%}; TLS / Unix socket: {rate['tls'] / rate['socket']:.0%}")
PY
