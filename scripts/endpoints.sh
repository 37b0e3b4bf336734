#!/usr/bin/env bash
# Adds or removes an instance of a demo service while the gateway runs: rewrites the
# service's endpoint file (EDS) in the directory Envoy watches, and Envoy follows within a
# second, without a restart.
#
#   scripts/endpoints.sh list   SERVICE
#   scripts/endpoints.sh add    SERVICE HOST:PORT
#   scripts/endpoints.sh remove SERVICE HOST:PORT
#
# SERVICE is users, orders or inventory. The directory is .run/endpoints (where `make demo`
# puts the files), or $ENDPOINTS_DIR. The new file is written beside the old one and moved
# over it, because Envoy reloads a watched file when it is replaced by a rename.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${ENDPOINTS_DIR:-$root/.run/endpoints}
usage() { echo "usage: $0 list SERVICE | add SERVICE HOST:PORT | remove SERVICE HOST:PORT" >&2; exit 2; }

action=${1:-}; service=${2:-}
[[ -n $action && -n $service ]] || usage
file=$dir/$service.yaml
[[ -f $file ]] || { echo "endpoints: no $file (is the demo running? known: $(ls "$dir" 2>/dev/null | sed 's/\.yaml//' | xargs))" >&2; exit 1; }

# The current endpoints, one HOST:PORT a line.
current() {
  sed -n 's/.*socket_address: {address: \([^,]*\), port_value: \([0-9]*\)}.*/\1:\2/p' "$file"
}

write() {
  local tmp
  tmp=$(mktemp "$dir/.$service.XXXXXX")
  {
    echo "# The $service cluster's endpoints (EDS), written by scripts/endpoints.sh."
    echo "resources:"
    echo "- \"@type\": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
    echo "  cluster_name: $service"
    echo "  endpoints:"
    echo "  - lb_endpoints:"
    local endpoint
    for endpoint in "$@"; do
      echo "    - endpoint: {address: {socket_address: {address: ${endpoint%:*}, port_value: ${endpoint##*:}}}}"
    done
  } > "$tmp"
  mv -f "$tmp" "$file"
}

case $action in
  list) current ;;
  add|remove)
    endpoint=${3:-}
    [[ $endpoint =~ ^[A-Za-z0-9.-]+:[0-9]+$ ]] || { echo "endpoints: HOST:PORT expected, got '$endpoint'" >&2; exit 2; }
    mapfile -t endpoints < <(current)
    kept=()
    for known in "${endpoints[@]}"; do [[ $known == "$endpoint" ]] || kept+=("$known"); done
    if [[ $action == add ]]; then
      (( ${#kept[@]} < ${#endpoints[@]} )) && { echo "endpoints: $service already has $endpoint" >&2; exit 1; }
      write "${endpoints[@]}" "$endpoint"
    else
      (( ${#kept[@]} == ${#endpoints[@]} )) && { echo "endpoints: $service has no $endpoint" >&2; exit 1; }
      (( ${#kept[@]} > 0 )) || { echo "endpoints: refusing to remove $service's last instance" >&2; exit 1; }
      write "${kept[@]}"
    fi
    echo "$service: $(current | xargs)"
    ;;
  *) usage ;;
esac
