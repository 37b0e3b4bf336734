//! `make bench`: what each filter costs Envoy, measured in one run on this machine.
//!
//! Every variant is its own Envoy (one worker) in front of the same backend, all started
//! together; rounds are interleaved (bare, noop, …, rl-many, bare, …) so machine drift hits all
//! variants alike. Variants compare our filters with bare Envoy, with the empty proxy-wasm
//! filter, and with Envoy's native filter for the same job. Each round drives every Envoy with wrk
//! for a fixed time, in one-second slices taken in turn, and reads:
//! - Envoy CPU per request: CPU time of all Envoy threads (from /proc schedstat, ns) during
//!   the round divided by the requests wrk completed;
//! - p50/p99 latency as wrk reports it (the median of the slices').
//!
//! The machine drifts between rounds (other tenants, CPU frequency), so a filter's added cost
//! is taken within each round (variant minus bare of the same round) and the median of those
//! is reported, with the spread of the per-round ratios to the empty proxy-wasm filter (the
//! floor any wasm filter pays).

use integration_tests::backend::{Backend, BackendRequest, BackendResponse};
use integration_tests::envoy::Envoy;
use integration_tests::gateway::Gateway;
use integration_tests::load::{cpu_ns, rss_mib, Wrk, WrkRun};
use integration_tests::paths;
use integration_tests::rls::{RateLimitService, Redis, ServiceOptions};
use integration_tests::scratch::ScratchDir;
use serde_json::{json, Value};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

struct Settings {
    rounds: usize,
    seconds: u64,
    connections: u32,
    /// Distinct tokens the `auth-fresh` variant cycles through (more than any round sends, so
    /// the filter's cache of verified tokens rarely helps).
    fresh_tokens: usize,
    /// Only these variants (`BENCH_ONLY=bare,noop,rl-global`), or all when empty.
    only: Vec<String>,
    /// Each wrk connection waits this long after an answer (`BENCH_PACE_MS`, 0: none).
    pace_ms: Option<u32>,
    /// Every round starts each variant's Envoy afresh (`BENCH_FRESH_ENVOY=1`).
    fresh_envoy: bool,
    /// Each round measures a variant in this many slices of whole seconds that add up to
    /// `seconds`, taking the variants in turn slice by slice (`BENCH_SLICES`; by default one
    /// a second).
    slices: u64,
}

impl Settings {
    fn from_env() -> Settings {
        let number =
            |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
        Settings {
            rounds: number("BENCH_ROUNDS", 10) as usize,
            seconds: number("BENCH_SECONDS", 3),
            connections: number("BENCH_CONNECTIONS", 8) as u32,
            fresh_tokens: number("BENCH_FRESH_TOKENS", 40_000) as usize,
            // Envoy's CPU per request depends on how hard it is driven (a saturated Envoy
            // batches more per wakeup), and on a shared machine the rate a saturating run
            // reaches swings between rounds. `BENCH_PACE_MS=5` gives every variant the same
            // offered load instead, below what the slowest serves (8 connections, each waiting
            // 5 ms after an answer: about 1,300 requests a second); the default drives each
            // Envoy as fast as it answers, as the published figures were measured.
            pace_ms: Some(number("BENCH_PACE_MS", 0) as u32).filter(|pace| *pace > 0),
            // One Envoy process compiles a module once, and where V8 puts that code (and how it
            // then shares the caches with Envoy's own) stays for the process's life: a variant
            // measured in one process per run can come out several µs cheaper or dearer in the
            // next run. A fresh Envoy every round spreads the rounds over as many placements.
            fresh_envoy: number("BENCH_FRESH_ENVOY", 0) == 1,
            // The machine's speed swings over a few seconds (bare Envoy's rounds spread by
            // about 12% even in one process), so a variant measured in one stretch meets
            // another machine than bare Envoy did. Slices of a second, the variants in turn,
            // spread each variant over the whole round, so the variants of a round meet the
            // same mix of moments. wrk counts whole seconds.
            slices: {
                let seconds = number("BENCH_SECONDS", 3).max(1);
                number("BENCH_SLICES", seconds).clamp(1, seconds)
            },
            only: std::env::var("BENCH_ONLY")
                .unwrap_or_default()
                .split(',')
                .filter(|name| !name.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }
}

struct Variant {
    name: &'static str,
    description: &'static str,
    envoy: Envoy,
    /// Envoy's configuration, to start it afresh (`BENCH_FRESH_ENVOY`).
    config: String,
    /// The wrk script that shapes this variant's requests, if any.
    script: Option<(&'static str, &'static [&'static str])>,
    /// The request path wrk sends.
    path: &'static str,
    /// Extra request headers (`name: value`) on every request.
    headers: Vec<String>,
    /// Other processes this variant makes work (the rate limit service, Redis): their CPU per
    /// request is measured too.
    helpers: Vec<u32>,
    rounds: Vec<Round>,
    /// Requests wrk has sent this variant so far (warm-ups included), handed to its script
    /// as the last argument so that every run of wrk goes on where the one before stopped.
    sent: Cell<u64>,
}

/// Delays of the three backends behind the aggregation comparison; the slowest is the floor
/// for the aggregated answer's latency.
const AGGREGATED_DELAYS_MS: [u64; 3] = [2, 5, 10];

#[derive(Clone, Copy)]
struct Round {
    requests: f64,
    cpu_us_per_request: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// CPU µs per request of each of the variant's `helpers`.
    helper_us_per_request: [f64; 2],
    /// p50 and p99 with one connection (no queueing), for the variants in [`ONE_CONNECTION`].
    one_connection_ms: Option<(f64, f64)>,
}

/// Variants whose latency is also measured with a single connection: with several, a
/// saturated worker queues requests and latency mostly restates CPU cost.
const ONE_CONNECTION: [&str; 4] = ["bare", "rl-hot", "rl-global", "native-rls"];

/// A ratelimit rule that never rejects (so every variant forwards every request), keyed on
/// one fixed value or on the `x-client` header, with or without the response headers.
fn never_limiting(key: Value, headers: bool) -> Value {
    json!({"rules": [{
        "name": "bench", "key": key, "headers": headers, "limit": {"requests": 1_000_000_000u64, "per": "second"}
    }]})
}

/// The host reads the metrics filter makes for its five built-in labels (route, upstream,
/// method, consumer, status), at the end of the stream as it does (`bench/call-probe`).
const METRICS_READS: [&str; 5] = [
    "property:xds.route_name",
    "property:xds.cluster_name",
    "header::method",
    "header:x-gateway-consumer",
    "response_header::status",
];

/// Every host call the bundle makes on a suite request (12: the bench's last table counts
/// them), in the phase it makes them, for `bench/call-probe` to make without any logic. The
/// request headers (credential, path, method) come in one call; counters are added on a tick;
/// the one worker makes each bucket write without reading the bucket first, as the last
/// writer (`filters/common/src/shared.rs`).
fn bundle_calls() -> Value {
    json!({
        "request_headers": [
            "clock", "headers", "remove_header:authorization", "set_header:x-gateway-consumer",
            "shared_set"
        ],
        "response_headers": ["add_response_header:ratelimit-policy", "add_response_header:ratelimit"],
        "log": [
            "property:xds.route_name", "property:xds.cluster_name", "response_header::status",
            "clock", "histogram"
        ]
    })
}

/// Envoy's native local_ratelimit with a bucket that never runs dry.
fn native_local_ratelimit() -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "bench",
        "token_bucket": {"max_tokens": 1_000_000_000u64, "tokens_per_fill": 1_000_000_000u64, "fill_interval": "1s"},
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "bench_enabled"},
        "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "bench_enforced"}
    })
}

/// The limits file of the bench's rate limit service: one limit that never runs dry.
const BENCH_LIMITS: &str = "\
domain: bench
descriptors:
  - key: rule
    value: bench-global
    descriptors:
      - key: generic_key
        rate_limit: {unit: second, requests_per_unit: 1000000}
";

/// The ratelimit filter with one global rule on one hot key, asking the bench's service.
fn global_rule() -> Value {
    json!({
        "rate_limit_service": {"cluster": "ratelimit", "domain": "bench", "timeout": "1s"},
        "rules": [{"name": "bench-global", "global": true, "key": [{"fixed": "all"}]}]
    })
}

/// Envoy's native ratelimit filter sending the same descriptor as [`global_rule`] to the same
/// service; the route's rate_limits come with it (see `main`).
fn native_ratelimit() -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        "domain": "bench",
        "timeout": "1s",
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}}, "transport_api_version": "V3"}
    })
}

/// Envoy's HTTP cache with the file-system store in `dir`, bounded as in the shipped gateway.
fn file_cache(dir: &std::path::Path) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.http.cache.file_system_http_cache.v3.FileSystemHttpCacheConfig",
            "manager_config": {"thread_pool": {"thread_count": 1}},
            "cache_path": dir.display().to_string(),
            "max_cache_size_bytes": 67108864,
            "max_cache_entry_count": 10000,
            "max_individual_cache_entry_size_bytes": 1048576
        }
    })
}

fn main() {
    let settings = Settings::from_env();
    let wrk = Wrk::find();
    let backend = Backend::start(
        "127.0.0.1:0",
        Arc::new(|_: &_| BackendResponse::json(200, &json!({"id": "1", "name": "Ada Lovelace"}))),
    )
    .unwrap_or_else(|e| panic!("cannot start the backend: {e}"));
    let base = || Gateway::new().cluster("users", &[backend.port()]).route("users", "/users", "users");

    let start = |name, description, gateway: Gateway| {
        let config = gateway.render();
        Variant {
            name,
            description,
            envoy: Envoy::start(&config, 1),
            config,
            script: None,
            path: "/users/1",
            headers: vec![],
            helpers: vec![],
            rounds: vec![],
            sent: Cell::new(0),
        }
    };
    let distinct_keys = Some(("distinct_keys.lua", &["x-client"][..]));
    let mut variants = vec![
        start("bare", "Envoy, router only", base()),
        start("noop", "+ empty proxy-wasm filter (the floor)", base().wasm_filter("noop", json!({}))),
        start(
            "reads",
            "+ only the 5 host reads metrics makes",
            base().wasm_filter("call_probe", json!({"log": METRICS_READS})),
        ),
        start("metrics", "+ metrics filter", base().wasm_filter("metrics", json!({}))),
        start(
            "native-rl",
            "+ Envoy's native local_ratelimit",
            base().native_filter("envoy.filters.http.local_ratelimit", native_local_ratelimit()),
        ),
        start(
            "rl-hot",
            "+ ratelimit, one hot key",
            base().wasm_filter("ratelimit", never_limiting(json!([{"fixed": "all"}]), true)),
        ),
        start(
            "rl-hot-quiet",
            "+ ratelimit, one hot key, no response headers",
            base().wasm_filter("ratelimit", never_limiting(json!([{"fixed": "all"}]), false)),
        ),
        Variant {
            script: distinct_keys,
            ..start(
                "rl-many",
                "+ ratelimit, a new key every request",
                base().wasm_filter("ratelimit", never_limiting(json!([{"header": "x-client"}]), true)),
            )
        },
    ];

    // Global limits: our global rule and Envoy's ratelimit filter, same service, same Redis.
    let redis = Redis::start();
    let service = RateLimitService::start(ServiceOptions {
        limits: BENCH_LIMITS.into(),
        redis_url: redis.url(),
        redis_timeout_ms: 1000,
    });
    let helpers: Vec<u32> = service.pid().into_iter().chain(redis.pid()).collect();
    let with_service = |gateway: Gateway| gateway.grpc_cluster("ratelimit", &[service.grpc_port()]);
    variants.push(Variant {
        helpers: helpers.clone(),
        ..start(
            "rl-global",
            "+ ratelimit, one global rule (service + Redis)",
            with_service(base()).wasm_filter("ratelimit", global_rule()),
        )
    });
    let mut quiet = global_rule();
    quiet["rules"][0]["headers"] = json!(false);
    variants.push(Variant {
        helpers: helpers.clone(),
        ..start(
            "rl-global-quiet",
            "+ ratelimit, one global rule, no response headers",
            with_service(base()).wasm_filter("ratelimit", quiet),
        )
    });
    let native_route = json!({
        "name": "users",
        "match": {"prefix": "/users"},
        "route": {"cluster": "users", "rate_limits": [{"actions": [
            {"generic_key": {"descriptor_key": "rule", "descriptor_value": "bench-global"}},
            {"generic_key": {"descriptor_value": "all"}}
        ]}]}
    });
    variants.push(Variant {
        helpers: helpers.clone(),
        ..start(
            "native-rls",
            "+ Envoy's native ratelimit, same service",
            with_service(Gateway::new().cluster("users", &[backend.port()]).raw_route(native_route))
                .native_filter("envoy.filters.http.ratelimit", native_ratelimit()),
        )
    });

    // Authentication: ours and Envoy's jwt_authn on RS256 tokens.
    let tokens = BenchTokens::mint(settings.fresh_tokens);
    let bearer = format!("authorization: Bearer {}", tokens.repeated);
    let with_token = |variant: Variant| Variant { headers: vec![bearer.clone()], ..variant };
    variants.push(with_token(start(
        "native-jwt",
        "+ Envoy's native jwt_authn, RS256, no jwt cache",
        base().native_filter("envoy.filters.http.jwt_authn", tokens.native_jwt_authn(false)),
    )));
    variants.push(with_token(start(
        "native-jwt-cache",
        "+ Envoy's native jwt_authn, RS256, jwt cache on",
        base().native_filter("envoy.filters.http.jwt_authn", tokens.native_jwt_authn(true)),
    )));
    variants.push(with_token(start(
        "auth-hot",
        "+ auth, RS256, the same token every request",
        base().wasm_filter("auth", tokens.ours()),
    )));
    variants.push(Variant {
        script: Some(("token_pool.lua", pool_argument(&tokens.pool_file))),
        ..start("auth-fresh", "+ auth, RS256, a token not seen recently", base().wasm_filter("auth", tokens.ours()))
    });
    for (name, description, algorithm, key) in [
        ("auth-fresh-es256", "+ auth, ES256, a token not seen recently", jsonwebtoken::Algorithm::ES256, "ec_p256"),
        ("auth-fresh-eddsa", "+ auth, EdDSA, a token not seen recently", jsonwebtoken::Algorithm::EdDSA, "ed25519"),
    ] {
        let other = BenchTokens::mint_with(algorithm, key, settings.fresh_tokens, name);
        variants.push(Variant {
            script: Some(("token_pool.lua", pool_argument(&other.pool_file))),
            ..start(name, description, base().wasm_filter("auth", other.ours()))
        });
    }
    // A flood of forged tokens (known kid, wrong signature) from one client, without and with
    // the brute-force guard.
    let forged = tokens.forged(FORGED_TOKENS);
    let mut guarded = tokens.ours();
    guarded["brute_force_guard"] = json!({"max_failures": 10, "window": "1m"});
    variants.push(Variant {
        script: Some(("token_pool.lua", pool_argument(&forged))),
        ..start("auth-forged", "+ auth, forged RS256 tokens from one client", base().wasm_filter("auth", tokens.ours()))
    });
    variants.push(Variant {
        script: Some(("token_pool.lua", pool_argument(&forged))),
        ..start(
            "auth-forged-guarded",
            "+ auth, the same flood, brute-force guard on (10 per minute)",
            base().wasm_filter("auth", guarded),
        )
    });

    // Another build of the same filters (`BENCH_BASELINE_DIR`, e.g. the previous release's
    // modules), measured in the same rounds: a change's effect without run-to-run drift.
    let baseline_dir = std::env::var_os("BENCH_BASELINE_DIR").filter(|dir| !dir.is_empty()).map(PathBuf::from);
    let baseline = |dir: &Path, gateway: Gateway, name: &str, config: Value| {
        gateway.wasm_filter_at(name, &dir.join(format!("{name}.wasm")), config, "FAIL_CLOSED")
    };
    if let Some(dir) = &baseline_dir {
        let baseline = |gateway: Gateway, name: &str, config: Value| baseline(dir, gateway, name, config);
        variants.push(start(
            "metrics-base",
            "+ metrics filter, baseline build",
            baseline(base(), "metrics", json!({})),
        ));
        variants.push(start(
            "rl-hot-base",
            "+ ratelimit, one hot key, baseline build",
            baseline(base(), "ratelimit", never_limiting(json!([{"fixed": "all"}]), true)),
        ));
        variants.push(with_token(start(
            "auth-hot-base",
            "+ auth, RS256, the same token every request, baseline build",
            baseline(base(), "auth", tokens.ours()),
        )));
        variants.push(Variant {
            script: Some(("token_pool.lua", pool_argument(&tokens.pool_file))),
            ..start(
                "auth-fresh-base",
                "+ auth, RS256, a token not seen recently, baseline build",
                baseline(base(), "auth", tokens.ours()),
            )
        });
    }

    // The whole suite on every request: metrics, auth (the same RS256 token), ratelimit (one hot
    // key) and aggregate (its endpoint is elsewhere, so it passes the request on), as four
    // modules and as the bundle; and Envoy's native pair for the same jobs.
    let suite = [
        ("metrics", json!({})),
        ("auth", tokens.ours()),
        ("ratelimit", never_limiting(json!([{"fixed": "all"}]), true)),
        (
            "aggregate",
            json!({"endpoints": [{"path": "/dashboard", "backends": [{"name": "u", "cluster": "users", "path": "/users/1"}]}]}),
        ),
    ];
    let modules = suite.iter().fold(base(), |gateway, (module, config)| gateway.wasm_filter(module, config.clone()));
    variants.push(with_token(start("suite-modules", "+ metrics, auth, ratelimit, aggregate: four modules", modules)));
    let sections: serde_json::Map<String, Value> =
        suite.iter().map(|(module, config)| (module.to_string(), config.clone())).collect();
    if let Some(dir) = &baseline_dir {
        variants.push(with_token(start(
            "suite-bundle-base",
            "+ the same four as one gateway.wasm, baseline build",
            baseline(dir, base(), "gateway", Value::Object(sections.clone())),
        )));
    }
    variants.push(with_token(start(
        "suite-bundle",
        "+ the same four as one gateway.wasm",
        base().wasm_filter("gateway", Value::Object(sections)),
    )));
    variants.push(with_token(start(
        "suite-calls",
        "+ only the host calls the bundle makes, no filter logic",
        base().wasm_filter("call_probe", bundle_calls()),
    )));
    variants.push(with_token(start(
        "native-suite",
        "+ Envoy's native jwt_authn (no cache) + local_ratelimit",
        base()
            .native_filter("envoy.filters.http.jwt_authn", tokens.native_jwt_authn(false))
            .native_filter("envoy.filters.http.local_ratelimit", native_local_ratelimit()),
    )));

    // Aggregation: three delayed backends answered as one, against the slowest one alone.
    let delayed: Vec<Backend> = AGGREGATED_DELAYS_MS
        .iter()
        .map(|&delay| {
            let handler = move |_: &BackendRequest| {
                let mut response = BackendResponse::json(200, &json!({format!("took_{delay}ms"): true}));
                response.delay = std::time::Duration::from_millis(delay);
                response
            };
            Backend::start("127.0.0.1:0", Arc::new(handler)).unwrap_or_else(|e| panic!("cannot start a backend: {e}"))
        })
        .collect();
    let with_delayed = |gateway: Gateway| {
        delayed
            .iter()
            .enumerate()
            .fold(gateway, |gateway, (index, backend)| gateway.cluster(&format!("delayed{index}"), &[backend.port()]))
    };
    let slowest = AGGREGATED_DELAYS_MS.len() - 1;
    let three: Vec<Value> = (0..AGGREGATED_DELAYS_MS.len())
        .map(|index| json!({"name": format!("b{index}"), "cluster": format!("delayed{index}"), "path": "/work"}))
        .collect();
    variants.push(Variant {
        path: "/work",
        ..start(
            "slowest",
            "the slowest backend alone, through bare Envoy",
            with_delayed(Gateway::new()).route("slowest", "/", &format!("delayed{slowest}")),
        )
    });
    variants.push(Variant {
        path: "/dashboard",
        ..start(
            "aggregate",
            "+ aggregate: the three backends in one answer",
            with_delayed(Gateway::new())
                .route("slowest", "/", &format!("delayed{slowest}"))
                .wasm_filter("aggregate", json!({"endpoints": [{"path": "/dashboard", "backends": three}]})),
        )
    });

    // Caching: the same cacheable GET proxied every time, and served from Envoy's cache (the
    // file-system store the shipped gateway uses).
    let cacheable = Backend::start(
        "127.0.0.1:0",
        Arc::new(|_: &BackendRequest| {
            BackendResponse::json(200, &json!({"sku": "kbd-01", "name": "Keyboard", "in_stock": 14}))
                .with_header("cache-control", "max-age=3600")
        }),
    )
    .unwrap_or_else(|e| panic!("cannot start a backend: {e}"));
    let cache_dir = ScratchDir::new("bench-cache");
    let cacheable_route =
        || Gateway::new().cluster("inventory", &[cacheable.port()]).route("inventory", "/", "inventory");
    variants.push(Variant {
        path: "/inventory/kbd-01",
        ..start("proxied", "a cacheable GET, proxied every time", cacheable_route())
    });
    variants.push(Variant {
        path: "/inventory/kbd-01",
        ..start(
            "cached",
            "+ Envoy's cache: the same GET from its file store",
            cacheable_route().native_filter("envoy.filters.http.cache", file_cache(cache_dir.path())),
        )
    });

    if !settings.only.is_empty() {
        variants.retain(|variant| settings.only.iter().any(|name| name == variant.name));
    }
    let pacing = settings.pace_ms.map_or("as fast as Envoy answers".to_string(), |pace| {
        format!("each connection waits {pace} ms after an answer")
    });
    let processes = if settings.fresh_envoy { "a fresh Envoy every round" } else { "one Envoy per variant" };
    let slices = match settings.slices {
        1 => String::new(),
        slices => format!(" in {slices} slices taken in turn"),
    };
    println!(
        "bench: {} rounds x {} s per variant{slices}, wrk -t1 -c{} ({pacing}), Envoy --concurrency 1, {processes}",
        settings.rounds, settings.seconds, settings.connections
    );
    for variant in &variants {
        drive(&wrk, variant, 1, settings.connections, settings.pace_ms); // warm-up
    }
    for round in 0..settings.rounds {
        if settings.fresh_envoy && round > 0 {
            for variant in &mut variants {
                variant.envoy = Envoy::start(&variant.config, 1);
                // Warm-up, as for the first round.
                drive(&wrk, variant, 1, settings.connections, settings.pace_ms);
            }
        }
        let mut tallies: Vec<Tally> = variants.iter().map(|_| Tally::default()).collect();
        for slice in 0..settings.slices {
            for (variant, tally) in variants.iter().zip(&mut tallies) {
                tally.measure_slice(&wrk, variant, &settings, slice);
            }
        }
        for (variant, tally) in variants.iter_mut().zip(tallies) {
            let measured = tally.into_round(&wrk, variant, &settings);
            eprintln!(
                "round {} {:>12}: {:>8.0} req, {:>6.1} us CPU/req, p50 {:.3} ms, p99 {:.3} ms",
                round + 1,
                variant.name,
                measured.requests,
                measured.cpu_us_per_request,
                measured.p50_ms,
                measured.p99_ms
            );
            variant.rounds.push(measured);
        }
    }
    report(&variants, &settings);
    report_crossings(&wrk, &variants, &settings);
}

/// Distinct forged tokens in the `auth-forged` flood.
const FORGED_TOKENS: usize = 10_000;

/// Host calls (filter to Envoy) and callbacks (Envoy into the VM) per request, from the
/// counters every module keeps (`gateway_host_calls_total`, `gateway_vm_callbacks_total`),
/// over a run of its own: each is a crossing of the VM boundary.
fn report_crossings(wrk: &Wrk, variants: &[Variant], settings: &Settings) {
    let counted = ["metrics", "auth-hot", "rl-hot", "suite-modules", "suite-bundle"];
    let measured: Vec<&Variant> = variants.iter().filter(|variant| counted.contains(&variant.name)).collect();
    if measured.is_empty() {
        return;
    }
    println!();
    println!("Boundary crossings per request (a run of {} s each):", settings.seconds);
    println!();
    println!("| variant | host calls | callbacks into the VM |");
    println!("|---|---:|---:|");
    // The modules add their counts to Envoy's counters once a second.
    let settle = || std::thread::sleep(std::time::Duration::from_millis(1_300));
    let read = |variant: &Variant| {
        let stat = |name: &str| variant.envoy.stat(&format!("wasmcustom.{name}")) as f64;
        (stat("gateway_host_calls_total"), stat("gateway_vm_callbacks_total"))
    };
    for variant in measured {
        settle();
        let before = read(variant);
        let report = drive(wrk, variant, settings.seconds, settings.connections, settings.pace_ms);
        settle();
        let after = read(variant);
        let requests = report.requests.max(1.0);
        println!(
            "| {} | {:.1} | {:.1} |",
            variant.name,
            (after.0 - before.0) / requests,
            (after.1 - before.1) / requests
        );
    }
}

fn drive(
    wrk: &Wrk,
    variant: &Variant,
    seconds: u64,
    connections: u32,
    pace_ms: Option<u32>,
) -> integration_tests::load::WrkReport {
    let mut headers = vec!["x-gateway-consumer: bench"];
    headers.extend(variant.headers.iter().map(String::as_str));
    // The scripts' last argument: where this run starts (`token_pool.lua`: the token after the
    // last one sent, so no token comes back while the cache of verified tokens may still hold
    // it) or what makes its keys new (`distinct_keys.lua`: a prefix no earlier run used).
    let sent = variant.sent.get().to_string();
    let arguments: Vec<&str> = variant
        .script
        .map(|(_, arguments)| arguments.iter().copied().chain([sent.as_str()]).collect())
        .unwrap_or_default();
    let report = wrk.run(&WrkRun {
        url: &format!("{}{}", variant.envoy.url(), variant.path),
        seconds,
        threads: 1,
        connections,
        headers: &headers,
        script: variant.script.map(|(script, _)| (script, arguments.as_slice())),
        pace_ms,
    });
    variant.sent.set(variant.sent.get() + report.requests as u64);
    report
}

/// One variant's slices of a round, added up.
#[derive(Default)]
struct Tally {
    requests: f64,
    cpu_ns: u64,
    helper_ns: [u64; 2],
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
    errors: u64,
}

impl Tally {
    /// Slice `slice` of the round: the round's seconds shared out in whole seconds, the first
    /// slices taking one more where they do not divide evenly.
    fn measure_slice(&mut self, wrk: &Wrk, variant: &Variant, settings: &Settings, slice: u64) {
        let cpu_before = cpu_ns(variant.envoy.pid());
        let helpers_before: Vec<u64> = variant.helpers.iter().map(|pid| cpu_ns(*pid)).collect();
        let seconds = settings.seconds / settings.slices + u64::from(slice < settings.seconds % settings.slices);
        let report = drive(wrk, variant, seconds, settings.connections, settings.pace_ms);
        self.cpu_ns += cpu_ns(variant.envoy.pid()).saturating_sub(cpu_before);
        for ((spent, pid), before) in self.helper_ns.iter_mut().zip(&variant.helpers).zip(helpers_before) {
            *spent += cpu_ns(*pid).saturating_sub(before);
        }
        self.requests += report.requests;
        self.p50_ms.push(report.p50_ms);
        self.p99_ms.push(report.p99_ms);
        self.errors += report.errors;
    }

    /// The round's figures: CPU per request over all slices; latency percentiles as the median
    /// of the slices' (the slice's own when there is one); latency with one connection measured
    /// now, for the variants that want it.
    fn into_round(self, wrk: &Wrk, variant: &Variant, settings: &Settings) -> Round {
        let per_request = |ns: u64| ns as f64 / 1000.0 / self.requests.max(1.0);
        let one_connection_ms = ONE_CONNECTION.contains(&variant.name).then(|| {
            let report = drive(wrk, variant, settings.seconds, 1, settings.pace_ms);
            (report.p50_ms, report.p99_ms)
        });
        Round {
            requests: self.requests,
            cpu_us_per_request: per_request(self.cpu_ns),
            p50_ms: median(self.p50_ms.iter().copied()),
            p99_ms: median(self.p99_ms.iter().copied()),
            errors: self.errors,
            helper_us_per_request: self.helper_ns.map(per_request),
            one_connection_ms,
        }
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Fewer rounds than this give no interval: resampling two or three rounds yields a handful of
/// distinct samples, and an interval far narrower than the rounds' real spread.
const MIN_INTERVAL_ROUNDS: usize = 5;

/// A 95% interval for `estimate` over a run's rounds: the estimate recomputed on 2,000 samples
/// of `rounds` round indices drawn with replacement (each sample keeps a round's variants
/// together), and the 2.5th and 97.5th percentiles of those. The draws are seeded, so one
/// run's figures give one interval. `None` below [`MIN_INTERVAL_ROUNDS`].
fn bootstrap_interval(rounds: usize, estimate: impl Fn(&[usize]) -> f64) -> Option<(f64, f64)> {
    const SAMPLES: usize = 2_000;
    if rounds < MIN_INTERVAL_ROUNDS {
        return None;
    }
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next_round = || {
        // xorshift64*: enough to spread the draws; nothing here needs more.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % rounds
    };
    let mut estimates: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let sample: Vec<usize> = (0..rounds).map(|_| next_round()).collect();
            estimate(&sample)
        })
        .collect();
    estimates.sort_by(f64::total_cmp);
    Some((estimates[SAMPLES * 25 / 1000], estimates[SAMPLES * 975 / 1000 - 1]))
}

/// The interval and the verdict on `target`: "met" or "NOT met" when the whole interval lies
/// on one side of it, else that this run cannot tell.
fn settled_verdict(interval: Option<(f64, f64)>, target: f64) -> String {
    let Some((low, high)) = interval else {
        return format!("no interval from fewer than {MIN_INTERVAL_ROUNDS} rounds (BENCH_ROUNDS), so not settled");
    };
    let verdict = if high <= target {
        "met"
    } else if low > target {
        "NOT met"
    } else {
        "not settled: the interval spans the target; more rounds (BENCH_ROUNDS) narrow it"
    };
    format!("95% interval over the rounds {low:.2}-{high:.2}; {verdict}")
}

fn report(variants: &[Variant], settings: &Settings) {
    let Some(bare) = variants.iter().find(|v| v.name == "bare") else { return };
    let noop = variants.iter().find(|v| v.name == "noop");
    // Per round: what the variant adds over bare measured in the same round.
    let added = |variant: &Variant| -> Vec<f64> {
        variant.rounds.iter().zip(&bare.rounds).map(|(r, b)| r.cpu_us_per_request - b.cpu_us_per_request).collect()
    };
    let floor = noop.map(|n| median(added(n).into_iter())).unwrap_or(f64::NAN);

    println!();
    println!("machine: {}, {} cores; {}", cpu_model(), cores(), envoy_version());
    println!();
    println!(
        "| variant | req/s | Envoy CPU µs/req | added over bare | vs empty wasm filter (per-round range) | p50 ms | p99 ms | Envoy RSS MiB | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut ratios = Vec::new();
    // The aggregation and cache comparisons have their own tables.
    let (others, filters): (Vec<&Variant>, Vec<&Variant>) =
        variants.iter().partition(|variant| ["slowest", "aggregate", "proxied", "cached"].contains(&variant.name));
    for variant in filters {
        let m = |f: fn(&Round) -> f64| median(variant.rounds.iter().map(f));
        let variant_added = added(variant);
        let added_median = median(variant_added.iter().copied());
        let versus_floor = match noop {
            Some(noop) if variant.name != "bare" => {
                let per_round: Vec<f64> = variant_added.iter().zip(added(noop)).map(|(v, n)| v / n).collect();
                let (low, high) = per_round.iter().fold((f64::MAX, f64::MIN), |(l, h), &r| (l.min(r), h.max(r)));
                ratios.push((variant.name, added_median / floor));
                format!("{:.2}x ({low:.2}-{high:.2})", added_median / floor)
            }
            _ => String::new(),
        };
        println!(
            "| {} ({}) | {:.0} | {:.1} | {:+.1} | {} | {:.3} | {:.3} | {:.1} | {} |",
            variant.name,
            variant.description,
            m(|r| r.requests) / settings.seconds as f64,
            m(|r| r.cpu_us_per_request),
            added_median,
            versus_floor,
            m(|r| r.p50_ms),
            m(|r| r.p99_ms),
            rss_mib(variant.envoy.pid()),
            variant.rounds.iter().map(|r| r.errors).sum::<u64>()
        );
    }
    println!();
    for (variant, target) in [("metrics", 1.5), ("rl-hot", 2.0), ("rl-many", 2.0), ("auth-hot", 2.0)] {
        if let Some((_, ratio)) = ratios.iter().find(|(name, _)| *name == variant) {
            let verdict = if *ratio <= target { "met" } else { "NOT met" };
            println!("target: {variant} adds at most {target}x what the empty filter adds: {ratio:.2}x ({verdict})");
        }
    }
    let find = |name: &str| variants.iter().find(|variant| variant.name == name);
    let added_median = |variant: &Variant| median(added(variant).into_iter());
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    if let (Some(bundle), Some(modules)) = (find("suite-bundle"), find("suite-modules")) {
        // Both estimates come with an interval over the run's rounds, and the verdict says when
        // the run cannot tell: on a shared machine the rounds spread more than these margins.
        let cpu =
            |variant: &Variant, round: usize| variant.rounds.get(round).map_or(f64::NAN, |r| r.cpu_us_per_request);
        let versus_modules = |rounds: &[usize]| {
            let added = |variant: &Variant| median(rounds.iter().map(|&i| cpu(variant, i) - cpu(bare, i)));
            added(bundle) / added(modules)
        };
        let rounds: Vec<usize> = (0..bare.rounds.len()).collect();
        let ratio = versus_modules(&rounds);
        println!(
            "target: the bundle adds at most 0.7x what the four modules add: {ratio:.2}x ({})",
            settled_verdict(bootstrap_interval(rounds.len(), versus_modules), 0.7)
        );
        let over_bare =
            |variant: &Variant, rounds: &[usize]| median(rounds.iter().map(|&i| cpu(variant, i) / cpu(bare, i)));
        let bundle_over_bare = |rounds: &[usize]| over_bare(bundle, rounds);
        let bundle_versus_bare = bundle_over_bare(&rounds);
        println!(
            "target: the bundle costs at most 1.75x bare Envoy (stretch 1.6x): {bundle_versus_bare:.2}x ({})",
            settled_verdict(bootstrap_interval(rounds.len(), bundle_over_bare), 1.75)
        );
        if let Some(native) = find("native-suite") {
            println!(
                "  (Envoy's native jwt_authn + local_ratelimit in the same run: {:.2}x bare)",
                over_bare(native, &rounds)
            );
        }
        if let Some(calls) = find("suite-calls") {
            println!("  (the bundle's host calls alone, without its logic: {:.2}x bare)", over_bare(calls, &rounds));
        }
    }
    for (variant, baseline) in [
        ("metrics", "metrics-base"),
        ("rl-hot", "rl-hot-base"),
        ("auth-hot", "auth-hot-base"),
        ("auth-fresh", "auth-fresh-base"),
        ("suite-bundle", "suite-bundle-base"),
    ] {
        if let (Some(new), Some(old)) = (find(variant), find(baseline)) {
            let (new, old) = (added_median(new), added_median(old));
            println!(
                "{variant} against the baseline build: adds {new:+.1} µs, the baseline {old:+.1} µs ({:.2}x)",
                new / old
            );
        }
    }
    if let (Some(fresh), Some(native)) = (find("auth-fresh"), find("native-jwt")) {
        let ratio = added_median(fresh) / added_median(native);
        println!(
            "target: a fresh RS256 token adds at most 3x what jwt_authn (no cache) adds: {ratio:.2}x ({})",
            verdict(ratio <= 3.0)
        );
    }
    if let (Some(guarded), Some(open)) = (find("auth-forged-guarded"), find("auth-forged")) {
        let ratio = added_median(guarded) / added_median(open);
        println!(
            "target: with the guard, a flood of forged tokens costs at most 1/10 of the CPU: {ratio:.3}x ({})",
            verdict(ratio <= 0.1)
        );
    }
    report_global(variants, settings);
    report_cache(&others, settings);
    report_aggregation(&others, settings);
}

/// A global rule against a local one and Envoy's native ratelimit filter on the same service:
/// what each adds to Envoy's CPU and latency, and what the service and Redis spend per request.
fn report_global(variants: &[Variant], settings: &Settings) {
    let one_p50 = |round: &Round| round.one_connection_ms.map_or(f64::NAN, |(p50, _)| p50);
    let one_p99 = |round: &Round| round.one_connection_ms.map_or(f64::NAN, |(_, p99)| p99);
    let find = |name| variants.iter().find(|variant| variant.name == name);
    let (Some(bare), Some(noop), Some(local), Some(global), Some(native)) =
        (find("bare"), find("noop"), find("rl-hot"), find("rl-global"), find("native-rls"))
    else {
        return;
    };
    // Per round, against bare of the same round; the median of those.
    let added = |variant: &Variant, f: fn(&Round) -> f64| {
        median(variant.rounds.iter().zip(&bare.rounds).map(|(r, b)| f(r) - f(b)))
    };
    println!();
    println!("global limits: one hot key; the service and Redis run on the same two cores as Envoy and wrk");
    println!();
    println!(
        "| variant | Envoy CPU µs/req | added over bare | p50 / p99 added ms, 1 connection | p50 / p99 added ms, {} connections | service CPU µs/req | Redis CPU µs/req |",
        settings.connections
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for variant in [local, global, native] {
        let helper = |index: usize| -> String {
            if variant.helpers.len() > index {
                format!("{:.1}", median(variant.rounds.iter().map(|r| r.helper_us_per_request[index])))
            } else {
                "-".into()
            }
        };
        println!(
            "| {} ({}) | {:.1} | {:+.1} | {:+.3} / {:+.3} | {:+.3} / {:+.3} | {} | {} |",
            variant.name,
            variant.description,
            median(variant.rounds.iter().map(|r| r.cpu_us_per_request)),
            added(variant, |r| r.cpu_us_per_request),
            added(variant, one_p50),
            added(variant, one_p99),
            added(variant, |r| r.p50_ms),
            added(variant, |r| r.p99_ms),
            helper(0),
            helper(1)
        );
    }
    println!();
    let p50 = added(global, one_p50);
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!("target: rl-global adds at most 0.5 ms at p50 (1 connection): {p50:+.3} ms ({})", verdict(p50 <= 0.5));
    let cpu = added(global, |r| r.cpu_us_per_request);
    let budget = added(native, |r| r.cpu_us_per_request) + added(noop, |r| r.cpu_us_per_request);
    println!(
        "target: rl-global adds at most native-rls + the empty filter's CPU: {cpu:+.1} vs {budget:+.1} µs ({})",
        verdict(cpu <= budget)
    );
}

/// A cached GET against the same GET proxied: Envoy CPU per request and latency, side by side.
fn report_cache(variants: &[&Variant], settings: &Settings) {
    let find = |name| variants.iter().find(|variant| variant.name == name);
    let (Some(proxied), Some(cached)) = (find("proxied"), find("cached")) else { return };
    comparison_table(&[proxied, cached], settings);
    let cpu = |variant: &Variant| median(variant.rounds.iter().map(|r| r.cpu_us_per_request));
    println!("cache: a cached GET costs Envoy {:.2}x the CPU of the same GET proxied", cpu(cached) / cpu(proxied));
}

/// One table row per variant: medians over the rounds, RSS now, errors summed.
fn comparison_table(variants: &[&Variant], settings: &Settings) {
    println!();
    println!("| variant | req/s | Envoy CPU µs/req | p50 ms | p99 ms | Envoy RSS MiB | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for variant in variants {
        let m = |f: fn(&Round) -> f64| median(variant.rounds.iter().map(f));
        println!(
            "| {} ({}) | {:.0} | {:.1} | {:.3} | {:.3} | {:.1} | {} |",
            variant.name,
            variant.description,
            m(|r| r.requests) / settings.seconds as f64,
            m(|r| r.cpu_us_per_request),
            m(|r| r.p50_ms),
            m(|r| r.p99_ms),
            rss_mib(variant.envoy.pid()),
            variant.rounds.iter().map(|r| r.errors).sum::<u64>()
        );
    }
}

/// The aggregated endpoint against its slowest backend alone: latency (the target) and CPU.
fn report_aggregation(variants: &[&Variant], settings: &Settings) {
    let (Some(slowest), Some(aggregate)) = (
        variants.iter().find(|variant| variant.name == "slowest"),
        variants.iter().find(|variant| variant.name == "aggregate"),
    ) else {
        return;
    };
    println!();
    println!("aggregation: backends delayed {AGGREGATED_DELAYS_MS:?} ms, the aggregate calls all three in parallel");
    comparison_table(&[slowest, aggregate], settings);
    let extra_p50 = median(aggregate.rounds.iter().zip(&slowest.rounds).map(|(a, s)| a.p50_ms - s.p50_ms));
    let verdict = if extra_p50 <= 2.0 { "met" } else { "NOT met" };
    println!();
    println!("target: aggregate p50 at most the slowest backend's + 2 ms: {extra_p50:+.3} ms ({verdict})");
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn cores() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(0)
}

/// `envoy --version` prints `<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`.
fn envoy_version() -> String {
    let output = Command::new(paths::envoy_binary()).arg("--version").output();
    let text = output.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let build = text.split("version: ").nth(1).unwrap_or("").trim();
    let mut parts = build.split('/');
    match (parts.next(), parts.next()) {
        (Some(sha), Some(version)) => format!("Envoy {version} ({})", sha.get(..12).unwrap_or(sha)),
        _ => format!("Envoy {build}"),
    }
}

/// RS256 tokens for the authentication variants, signed with the test-only key in
/// `filters/auth/tests/fixtures`, and the provider configurations that accept them.
struct BenchTokens {
    jwk: Value,
    repeated: String,
    pool_file: std::path::PathBuf,
}

impl BenchTokens {
    fn mint(count: usize) -> BenchTokens {
        BenchTokens::mint_with(jsonwebtoken::Algorithm::RS256, "rsa", count, "auth-fresh")
    }

    /// `count` tokens signed with the fixture key `key` (`rsa`, `ec_p256`, `ed25519`).
    fn mint_with(algorithm: jsonwebtoken::Algorithm, key: &str, count: usize, variant: &str) -> BenchTokens {
        let keys: Value = serde_json::from_str(
            &std::fs::read_to_string(paths::repo_root().join("filters/auth/tests/fixtures/test_keys.json"))
                .unwrap_or_else(|e| panic!("test keys: {e}")),
        )
        .unwrap_or_else(|e| panic!("test keys: {e}"));
        let pem = keys[key]["private_pem"].as_str().unwrap_or_default().to_string();
        let jwk = keys[key]["jwk"].clone();
        let kid = jwk["kid"].as_str().unwrap_or_default().to_string();
        let encoding = match algorithm {
            jsonwebtoken::Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()),
            jsonwebtoken::Algorithm::EdDSA => jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes()),
            _ => jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()),
        };
        let encoding = encoding.unwrap_or_else(|e| panic!("test key {key}: {e}"));
        let exp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 86_400;
        let sign = |subject: usize| {
            let mut header = jsonwebtoken::Header::new(algorithm);
            header.kid = Some(kid.clone());
            let claims =
                json!({"iss": "https://bench.test", "aud": "bench", "sub": format!("user-{subject}"), "exp": exp});
            jsonwebtoken::encode(&header, &claims, &encoding).unwrap_or_else(|e| panic!("signing: {e}"))
        };
        eprintln!("bench: signing {count} {algorithm:?} tokens for the {variant} variant ...");
        let halves: Vec<Vec<String>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..2)
                .map(|half| scope.spawn(move || (half..count).step_by(2).map(sign).collect::<Vec<_>>()))
                .collect();
            workers.into_iter().map(|worker| worker.join().unwrap_or_default()).collect()
        });
        let pool_file = paths::repo_root().join(format!("target/bench-tokens-{variant}.txt"));
        std::fs::write(&pool_file, halves.concat().join("\n") + "\n")
            .unwrap_or_else(|e| panic!("{}: {e}", pool_file.display()));
        BenchTokens { jwk, repeated: sign(count), pool_file }
    }

    fn jwks(&self) -> String {
        json!({ "keys": [self.jwk] }).to_string()
    }

    fn ours(&self) -> Value {
        json!({
            "providers": {"bench": {"issuer": "https://bench.test", "audiences": ["bench"], "local_jwks": {"inline_string": self.jwks()}}},
            "rules": [{"requires": {"provider_name": "bench"}}]
        })
    }

    fn native_jwt_authn(&self, cache: bool) -> Value {
        let mut provider = json!({"issuer": "https://bench.test", "audiences": ["bench"], "local_jwks": {"inline_string": self.jwks()}});
        if cache {
            provider["jwt_cache_config"] = json!({"jwt_cache_size": 1000});
        }
        json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"bench": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]
        })
    }

    /// A file of `count` forged tokens: each one's header and claims with another token's
    /// signature (the known `kid`, so every one costs a full signature check).
    fn forged(&self, count: usize) -> std::path::PathBuf {
        let tokens = std::fs::read_to_string(&self.pool_file).unwrap_or_default();
        let tokens: Vec<&str> = tokens.lines().take(count + 1).collect();
        let forged: Vec<String> = tokens
            .windows(2)
            .filter_map(|pair| {
                let (signed, _) = pair[0].rsplit_once('.')?;
                let (_, other_signature) = pair[1].rsplit_once('.')?;
                Some(format!("{signed}.{other_signature}"))
            })
            .collect();
        let path = paths::repo_root().join("target/bench-forged-tokens.txt");
        std::fs::write(&path, forged.join("\n") + "\n").unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }
}

/// The wrk script argument: a token file's path (the bench runs once, so the string lives as
/// long as the process).
fn pool_argument(path: &std::path::Path) -> &'static [&'static str] {
    let path: &'static str = Box::leak(path.display().to_string().into_boxed_str());
    Box::leak(vec![path].into_boxed_slice())
}
