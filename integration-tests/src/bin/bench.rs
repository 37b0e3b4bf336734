//! `make bench`: what each filter costs Envoy, measured in one run on this machine.
//!
//! Every variant is its own Envoy (one worker) in front of the same backend, all started
//! together; rounds are interleaved (bare, noop, metrics, bare, …) so machine drift hits all
//! variants alike. Each round drives one Envoy with wrk for a fixed time and reads:
//! - Envoy CPU per request: CPU time of all Envoy threads (from /proc schedstat, ns) during
//!   the round divided by the requests wrk completed;
//! - p50/p99 latency as wrk reports it.
//!
//! The machine drifts between rounds (other tenants, CPU frequency), so a filter's added cost
//! is taken within each round (variant minus bare of the same round) and the median of those
//! is reported, with the spread of the per-round ratios to the empty proxy-wasm filter (the
//! floor any wasm filter pays).

use integration_tests::backend::{Backend, BackendResponse};
use integration_tests::envoy::Envoy;
use integration_tests::gateway::Gateway;
use integration_tests::paths;
use serde_json::json;
use std::process::Command;
use std::sync::Arc;

struct Settings {
    rounds: usize,
    seconds: u64,
    connections: u32,
}

impl Settings {
    fn from_env() -> Settings {
        let number =
            |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
        Settings {
            rounds: number("BENCH_ROUNDS", 10) as usize,
            seconds: number("BENCH_SECONDS", 3),
            connections: number("BENCH_CONNECTIONS", 8) as u32,
        }
    }
}

struct Variant {
    name: &'static str,
    description: &'static str,
    envoy: Envoy,
    rounds: Vec<Round>,
}

#[derive(Clone, Copy)]
struct Round {
    requests: f64,
    cpu_us_per_request: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn main() {
    let settings = Settings::from_env();
    let wrk = paths::tool("wrk", "WRK_BIN", "apt-get install wrk");
    let backend = Backend::start(
        "127.0.0.1:0",
        Arc::new(|_: &_| BackendResponse::json(200, &json!({"id": "1", "name": "Ada Lovelace"}))),
    )
    .unwrap_or_else(|e| panic!("cannot start the backend: {e}"));
    let base = || Gateway::new().cluster("users", &[backend.port()]).route("users", "/users", "users");

    let start = |name, description, gateway: Gateway| Variant {
        name,
        description,
        envoy: Envoy::start(&gateway.render(), 1),
        rounds: vec![],
    };
    let mut variants = vec![
        start("bare", "Envoy, router only", base()),
        start("noop", "+ empty proxy-wasm filter (the floor)", base().wasm_filter("noop", json!({}))),
        start("reads", "+ only the 5 host reads metrics makes", base().wasm_filter("read_probe", json!({}))),
        start("metrics", "+ metrics filter", base().wasm_filter("metrics", json!({}))),
    ];

    println!(
        "bench: {} rounds x {} s per variant, wrk -t1 -c{}, Envoy --concurrency 1",
        settings.rounds, settings.seconds, settings.connections
    );
    for variant in &variants {
        run_wrk(&wrk, &variant.envoy, 1, settings.connections); // warm-up
    }
    for round in 0..settings.rounds {
        for variant in &mut variants {
            let measured = measure(&wrk, &variant.envoy, &settings);
            eprintln!(
                "round {} {:>8}: {:>8.0} req, {:>6.1} us CPU/req, p50 {:.3} ms, p99 {:.3} ms",
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
}

fn measure(wrk: &std::path::Path, envoy: &Envoy, settings: &Settings) -> Round {
    let cpu_before = cpu_ns(envoy.pid());
    let output = run_wrk(wrk, envoy, settings.seconds, settings.connections);
    let cpu_after = cpu_ns(envoy.pid());
    let requests = parse_requests(&output);
    Round {
        requests,
        cpu_us_per_request: (cpu_after - cpu_before) as f64 / 1000.0 / requests.max(1.0),
        p50_ms: parse_percentile(&output, "50%"),
        p99_ms: parse_percentile(&output, "99%"),
        errors: parse_errors(&output),
    }
}

fn run_wrk(wrk: &std::path::Path, envoy: &Envoy, seconds: u64, connections: u32) -> String {
    let output = Command::new(wrk)
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", "--timeout", "5s"])
        .args(["-H", "x-gateway-consumer: bench"])
        .arg(format!("{}/users/1", envoy.url()))
        .output()
        .unwrap_or_else(|e| panic!("cannot run wrk: {e}"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// CPU time of every thread of the process, in nanoseconds (first field of schedstat).
fn cpu_ns(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap_or_else(|e| panic!("/proc/{pid}/task: {e}"));
    tasks
        .filter_map(|task| task.ok())
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()))
        .sum()
}

fn parse_requests(output: &str) -> f64 {
    output
        .lines()
        .find(|line| line.contains(" requests in "))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk output:\n{output}"))
}

fn parse_errors(output: &str) -> u64 {
    output
        .lines()
        .filter(|line| line.contains("Non-2xx") || line.contains("Socket errors"))
        .flat_map(|line| line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u64>().ok()))
        .sum()
}

/// `    50%  412.00us` → 0.412 (milliseconds).
fn parse_percentile(output: &str, label: &str) -> f64 {
    let value = output
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label} in wrk output:\n{output}"));
    let split = value.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        _ => f64::NAN,
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
    for variant in variants {
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
    if let Some((_, ratio)) = ratios.iter().find(|(name, _)| *name == "metrics") {
        let verdict = if *ratio <= 1.5 { "met" } else { "NOT met" };
        println!("target: metrics adds at most 1.5x what the empty filter adds: {ratio:.2}x ({verdict})");
    }
}

/// Resident memory of the process after the rounds, from /proc/<pid>/status.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kib.map_or(f64::NAN, |kib| kib / 1024.0)
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
