#!/usr/bin/env bash
# Runs the gateway demo in the foreground: two instances of each demo API service (users,
# orders, inventory on 127.0.0.1:8081-8083 and :8091-8093), the development identity provider
# on :8084, the catalog gRPC service on :8085, Redis on :6389 and the rate limit service on
# :8089 (admin :9089), and two replicas of Envoy with our filters: 127.0.0.1:10000 (admin
# :9901) and 127.0.0.1:10001 (admin :9902), which share the global rate limits. Envoy finds
# the API instances in .run/endpoints/ (EDS files it watches). Ctrl-C stops everything.
# Called by `make demo`, which installs Envoy and builds the filters first.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
envoy=${ENVOY_BIN:-$root/.venv/bin/envoy}
mkdir -p .run
# Fresh endpoint files for each run; scripts/endpoints.sh changes them while the demo runs.
rm -rf .run/endpoints .run/access*.log .run/cache .run/cache-2
cp -r envoy/endpoints .run/endpoints
# Envoy's HTTP cache keeps its entries here (it does not create the directory itself).
mkdir -p .run/cache .run/cache-2
# The second replica: the same gateway on other ports, with its own access log and cache.
sed -e 's/port_value: 10000/port_value: 10001/' -e 's/port_value: 9901/port_value: 9902/' \
  -e 's|\.run/access\.log|.run/access-2.log|' -e 's|cache_path: \.run/cache|cache_path: .run/cache-2|' \
  envoy/demo.yaml > .run/replica-2.yaml
redis=$(command -v redis-server) || { echo "demo: redis-server is missing; run \`make setup\`" >&2; exit 1; }

for port in 10000 10001 9901 9902 8081 8082 8083 8084 8085 8089 9089 8091 8092 8093 6389; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: port $port on 127.0.0.1 is already in use; stop what listens there and retry" >&2
    exit 1
  fi
done

cargo build --quiet --release -p integration-tests --bin demo-backends
cargo build --quiet --release -p demo-catalog -p ratelimit-service
# The descriptor set the gRPC-JSON transcoder loads, generated from catalog.proto at build time.
target/release/demo-catalog --descriptor-set .run/catalog.pb

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping the demo"
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop EXIT
# Ctrl-C is how the demo is meant to end: stop cleanly and report success.
trap 'stop; exit 0' INT TERM

target/release/demo-backends 127.0.0.1 8081 > .run/backends.log 2>&1 &
pids+=($!)
target/release/demo-backends 127.0.0.1 8091 users orders inventory > .run/backends-2.log 2>&1 &
pids+=($!)
# The access log is written each second (Envoy's default is every 10 s).
target/release/demo-catalog 127.0.0.1:8085 > .run/catalog.log 2>&1 &
pids+=($!)
# Redis only for the demo's counters: no persistence, loopback only.
"$redis" --port 6389 --bind 127.0.0.1 --save '' --appendonly no > .run/redis.log 2>&1 &
pids+=($!)
target/release/ratelimit-service --config envoy/ratelimit/limits.yaml --grpc 127.0.0.1:8089 --admin 127.0.0.1:9089 \
  --redis redis://127.0.0.1:6389 > .run/ratelimit.log 2>&1 &
pids+=($!)
envoy_pids=()
for replica in 1 2; do
  config=envoy/demo.yaml log=.run/envoy.log
  [[ $replica == 2 ]] && config=.run/replica-2.yaml log=.run/envoy-2.log
  "$envoy" --config-path "$config" --concurrency 2 --disable-hot-restart --file-flush-interval-msec 1000 \
    --log-level warning --component-log-level wasm:info > "$log" 2>&1 &
  pids+=($!)
  envoy_pids+=($!)
done

for admin in 9901 9902; do
  for _ in $(seq 1 200); do
    if [[ $(curl -s "http://127.0.0.1:$admin/ready" 2>/dev/null) == LIVE ]]; then break; fi
    for pid in "${envoy_pids[@]}"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        echo "demo: an Envoy exited; its logs (.run/envoy.log, .run/envoy-2.log):" >&2
        cat .run/envoy.log .run/envoy-2.log >&2
        exit 1
      fi
    done
    sleep 0.1
  done
  [[ $(curl -s "http://127.0.0.1:$admin/ready") == LIVE ]] || { echo "demo: Envoy (admin $admin) not ready; see .run/envoy*.log" >&2; exit 1; }
done

cat <<'TEXT'
The gateway is running on http://127.0.0.1:10000 (Envoy admin on http://127.0.0.1:9901),
and a second replica on http://127.0.0.1:10001 (admin http://127.0.0.1:9902).
Try:
  TOKEN=$(curl -s 'http://127.0.0.1:10000/token?sub=ada&scope=orders:read%20orders:write&format=raw')
  curl -s http://127.0.0.1:10000/users/1
  curl -s -H "authorization: Bearer $TOKEN" 'http://127.0.0.1:10000/orders?user_id=1'
  curl -si http://127.0.0.1:10000/inventory/kbd-01   # twice: the second is from Envoy's cache (age)
  curl -s http://127.0.0.1:10000/catalog/products/kbd-01   # JSON, served by a gRPC service
  curl -s -X POST -H "authorization: Bearer $TOKEN" -d '{"sku":"cam-04","name":"Webcam","price_cents":4900}' \
    http://127.0.0.1:10000/catalog/products
  # Writes to orders: 3 a minute per client, counted once for both replicas (the 4th is 429):
  for port in 10000 10001 10000 10001; do
    curl -s -o /dev/null -w "$port %{http_code}\n" -X POST -H "authorization: Bearer $TOKEN" http://127.0.0.1:$port/orders
  done
  curl -s -H "authorization: Bearer $TOKEN" http://127.0.0.1:10000/api/users/1/dashboard   # three services, one answer
  curl -s -H 'x-api-key: demo-key-ci-bot' http://127.0.0.1:10000/api/users/2/dashboard
  curl -s http://127.0.0.1:9901/stats/prometheus | grep '^gateway_'
  curl -s http://127.0.0.1:9089/metrics | grep '^ratelimit_service_'   # the rate limit service
  scripts/endpoints.sh add users 127.0.0.1:8095      # a new instance (start one there first)
  scripts/endpoints.sh remove users 127.0.0.1:8091   # take one out; Envoy follows at once
Logs: .run/access.log and .run/access-2.log (one JSON line per request), .run/envoy*.log,
.run/backends*.log, .run/catalog.log, .run/ratelimit.log.
Press Ctrl-C to stop.
TEXT
wait
