//! The key flood: a million distinct client keys through a real Envoy (2 workers) must leave
//! its memory bounded while an active key stays exact.
//!
//! Every flood key is limited to 1 per hour, so no bucket ever goes idle: the hardest case
//! for the table, which fills up and must then send new keys to the rule's overflow bucket
//! (`table_full`: together they get one key's limit) rather than evict an active bucket. `FLOOD_KEYS` (default 1,000,000) and
//! `FLOOD_MAX_SECONDS` (default 240) bound the run; if the time runs out first, the figures
//! say how many keys were sent.

use integration_tests::client;
use integration_tests::envoy::Envoy;
use integration_tests::gateway::Gateway;
use integration_tests::load::{rss_mib, Wrk, WrkRun};
use serde_json::json;
use std::time::{Duration, Instant};

const CAPACITY: f64 = 65_536.0;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

#[test]
fn a_million_keys_leave_memory_bounded_and_active_keys_exact() {
    let target_keys = setting("FLOOD_KEYS", 1_000_000) as f64;
    let max_seconds = setting("FLOOD_MAX_SECONDS", 240);
    let config = json!({
        "capacity": CAPACITY as u64,
        "rules": [{"name": "per-client", "key": [{"header": "x-client"}], "limit": {"requests": 1, "per": "hour", "burst": 5}}]
    });
    let gateway = Gateway::new().direct_route("flood", "/", 200).wasm_filter("ratelimit", config);
    let envoy = Envoy::start(&gateway.render(), 2);
    let rss_at_start = rss_mib(envoy.pid());
    let send = |client: &str| client::request("GET", &format!("{}/", envoy.url()), &[("x-client", client)]).status;

    // The victim: an active client that has used 3 of its 5 requests.
    for _ in 0..3 {
        assert_eq!(send("victim"), 200);
    }
    let wrk = Wrk::find();
    let mut runs = 0;
    let mut flood = |seconds: u64| {
        runs += 1;
        let prefix = format!("run{runs}");
        wrk.run(&WrkRun {
            pace_ms: None,
            url: &envoy.url(),
            seconds,
            threads: 2,
            connections: 32,
            headers: &[],
            script: Some(("distinct_keys.lua", &["x-client", &prefix])),
        })
        .requests
    };
    // Warm-up outside the measurement: connections, worker VMs, allocator arenas.
    // wrk counts the requests it completed; the filter's own count also includes the ones
    // in flight when a run ended, so the number of keys sent is taken from the filter.
    let decision = |name: &str| envoy.sample("gateway_ratelimit_requests_total", &[("decision", name)]);
    let table_full = || envoy.sample("gateway_ratelimit_failures_total", &[("reason", "table_full")]);
    // Every request is one decision (keys without a slot too, in the overflow bucket).
    let flood_keys = || decision("allowed") + decision("rejected") - 3.0;
    flood(2);
    let rss_before = rss_mib(envoy.pid());
    let started = Instant::now();
    let mut samples = vec![(flood_keys(), rss_before)];
    while samples.last().map_or(0.0, |(keys, _)| *keys) < target_keys
        && started.elapsed() < Duration::from_secs(max_seconds)
    {
        flood(10);
        samples.push((flood_keys(), rss_mib(envoy.pid())));
    }
    let seconds = started.elapsed().as_secs_f64();
    let keys = flood_keys();

    // The victim still has exactly its 2 requests, no more, no fewer.
    assert_eq!(send("victim"), 200);
    assert_eq!(send("victim"), 200);
    assert_eq!(send("victim"), 429);
    // Each worker adds its counts to Envoy's counters once a second (so the samples taken
    // during the flood may lag by up to that much).
    std::thread::sleep(Duration::from_millis(2500));

    let table_full = table_full();
    // Keys without a slot shared the overflow bucket (burst 5, one more per hour): all but
    // its first 5 requests were rejected. The victim was rejected once.
    let overflow_allowed = table_full - (decision("rejected") - 1.0);
    // The victim's five allowed requests share one bucket.
    let buckets = decision("allowed") - 4.0 - overflow_allowed;
    let rss_after = rss_mib(envoy.pid());
    println!("flood: {keys:.0} distinct keys in {seconds:.0} s (after a warm-up), 2 workers");
    println!(
        "  buckets in use: {buckets:.0} (table capacity {CAPACITY:.0}); sent to the overflow bucket (table_full): {table_full:.0}, of which allowed: {overflow_allowed:.0}"
    );
    for (sent, rss) in &samples {
        println!("  after {sent:>9.0} keys: Envoy RSS {rss:.1} MiB");
    }
    println!("  Envoy RSS at start (empty table created): {rss_at_start:.1} MiB");
    println!("  RSS growth: {:.1} MiB over {keys:.0} keys after the warm-up", rss_after - rss_before);
    if keys < target_keys {
        println!("  (time cap reached at {keys:.0} keys; memory is flat once the table is full, see samples)");
    }

    // Every flood key was new: given a bucket (one request, allowed) or sent to the overflow
    // bucket, which let through no more than its burst. Buckets never outnumber the table.
    assert!(table_full > 0.0, "the flood filled the table");
    assert!((0.0..=5.0).contains(&overflow_allowed), "the overflow bucket let {overflow_allowed} through");
    assert!(buckets <= CAPACITY, "more buckets than the table holds: {buckets}");
    // Bounded: the table is at most 65,536 entries of 32 bytes (2 MiB) plus its keys.
    assert!(rss_after - rss_at_start < 32.0, "RSS grew {:.1} MiB", rss_after - rss_at_start);
    let (half_keys, half_rss) = samples[samples.len() / 2];
    assert!(rss_after - half_rss < 8.0, "RSS still growing after {half_keys:.0} keys: {half_rss:.1} -> {rss_after:.1}");
}
