#!/usr/bin/env bash
# Runs the gateway demo in the foreground: two instances of each demo API service (users,
# orders, inventory on 127.0.0.1:8081-8083 and :8091-8093), the development identity provider
# on :8084, the catalog gRPC service on :8085, and Envoy with our filters on 127.0.0.1:10000 (admin 127.0.0.1:9901). Envoy finds
# the API instances in .run/endpoints/ (EDS files it watches). Ctrl-C stops everything.
# Called by `make demo`, which installs Envoy and builds the filters first.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
envoy=${ENVOY_BIN:-$root/.venv/bin/envoy}
mkdir -p .run
# Fresh endpoint files for each run; scripts/endpoints.sh changes them while the demo runs.
rm -rf .run/endpoints .run/access.log .run/cache
cp -r envoy/endpoints .run/endpoints
# Envoy's HTTP cache keeps its entries here (it does not create the directory itself).
mkdir -p .run/cache

for port in 10000 9901 8081 8082 8083 8084 8085 8091 8092 8093; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: port $port on 127.0.0.1 is already in use; stop what listens there and retry" >&2
    exit 1
  fi
done

cargo build --quiet --release -p integration-tests --bin demo-backends
cargo build --quiet --release -p demo-catalog
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
"$envoy" --config-path envoy/demo.yaml --concurrency 2 --disable-hot-restart --file-flush-interval-msec 1000 \
  --log-level warning --component-log-level wasm:info > .run/envoy.log 2>&1 &
pids+=($!)

for _ in $(seq 1 200); do
  if [[ $(curl -s http://127.0.0.1:9901/ready 2>/dev/null) == LIVE ]]; then break; fi
  if ! kill -0 "${pids[3]}" 2>/dev/null; then
    echo "demo: Envoy exited; its log (.run/envoy.log):" >&2
    cat .run/envoy.log >&2
    exit 1
  fi
  sleep 0.1
done
[[ $(curl -s http://127.0.0.1:9901/ready) == LIVE ]] || { echo "demo: Envoy not ready; see .run/envoy.log" >&2; exit 1; }

cat <<'TEXT'
The gateway is running on http://127.0.0.1:10000 (Envoy admin on http://127.0.0.1:9901).
Try:
  TOKEN=$(curl -s 'http://127.0.0.1:10000/token?sub=ada&scope=orders:read%20orders:write&format=raw')
  curl -s http://127.0.0.1:10000/users/1
  curl -s -H "authorization: Bearer $TOKEN" 'http://127.0.0.1:10000/orders?user_id=1'
  curl -si http://127.0.0.1:10000/inventory/kbd-01   # twice: the second is from Envoy's cache (age)
  curl -s http://127.0.0.1:10000/catalog/products/kbd-01   # JSON, served by a gRPC service
  curl -s -X POST -H "authorization: Bearer $TOKEN" -d '{"sku":"cam-04","name":"Webcam","price_cents":4900}' \
    http://127.0.0.1:10000/catalog/products
  curl -si -X POST -H "authorization: Bearer $TOKEN" http://127.0.0.1:10000/orders   # 3 per minute, then 429
  curl -s -H "authorization: Bearer $TOKEN" http://127.0.0.1:10000/api/users/1/dashboard   # three services, one answer
  curl -s -H 'x-api-key: demo-key-ci-bot' http://127.0.0.1:10000/api/users/2/dashboard
  curl -s http://127.0.0.1:9901/stats/prometheus | grep '^gateway_'
  scripts/endpoints.sh add users 127.0.0.1:8095      # a new instance (start one there first)
  scripts/endpoints.sh remove users 127.0.0.1:8091   # take one out; Envoy follows at once
Logs: .run/access.log (one JSON line per request), .run/envoy.log, .run/backends*.log, .run/catalog.log.
Press Ctrl-C to stop.
TEXT
wait
