//! Envoy's HTTP cache in the shipped gateway (`envoy/demo.yaml`): fresh answers are served
//! without the service, stale ones are revalidated, and no client ever gets an answer that was
//! meant for another (RFC 9111 §3, §3.5, §4.1). The inventory instances count every request
//! they answer, so "served from the cache" means "the service saw nothing".

use integration_tests::backend::{Backend, BackendRequest};
use integration_tests::client;
use integration_tests::demo::{self, INVENTORY_MAX_AGE_SECS};
use integration_tests::shipped::{without_rate_limits, DemoServices, ShippedGateway};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Envoy writes a new cache entry on its cache thread after answering, so a request sent the
/// instant the first answer arrived may still miss; tests give the write this long.
const ENTRY_WRITTEN: Duration = Duration::from_millis(300);

/// What the inventory instances answered: (method, path, if-none-match), health checks left out.
type Seen = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

struct CacheSetup {
    gateway: ShippedGateway,
    seen: Seen,
    _services: DemoServices,
    _inventory: Vec<Backend>,
}

impl CacheSetup {
    fn start() -> CacheSetup {
        let services = DemoServices::start();
        let seen: Seen = Arc::default();
        let counting = || {
            let (handler, seen) = (demo::handler("inventory").unwrap(), seen.clone());
            Backend::start(
                "127.0.0.1:0",
                Arc::new(move |request: &BackendRequest| {
                    if request.path != "/healthz" {
                        let validator = request.header("if-none-match").map(str::to_string);
                        seen.lock().unwrap().push((request.method.clone(), request.path.clone(), validator));
                    }
                    handler(request)
                }),
            )
            .unwrap()
        };
        let inventory = vec![counting(), counting()];
        let mut endpoints = services.endpoints();
        endpoints.retain(|(service, _)| *service != "inventory");
        endpoints.push(("inventory", inventory.iter().map(Backend::port).collect()));
        let gateway = ShippedGateway::start_with(&endpoints, services.singles(), without_rate_limits);
        CacheSetup { gateway, seen, _services: services, _inventory: inventory }
    }

    /// How many requests the inventory service answered for `path`.
    fn answered(&self, path: &str) -> usize {
        self.seen.lock().unwrap().iter().filter(|(_, seen, _)| seen == path).count()
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> client::Response {
        client::request("GET", &self.gateway.url(path), headers)
    }
}

#[test]
fn a_fresh_answer_comes_from_the_cache_and_a_stale_one_is_revalidated() {
    let setup = CacheSetup::start();
    let path = "/inventory/kbd-01";
    let first = setup.get(path, &[]);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("age"), None, "the first answer comes from the service");
    let etag = first.header("etag").unwrap().to_string();
    std::thread::sleep(ENTRY_WRITTEN);

    let second = setup.get(path, &[]);
    assert_eq!((second.status, second.body.clone()), (200, first.body.clone()));
    assert!(second.header("age").is_some(), "a cached answer says its age");
    assert_eq!(setup.answered(path), 1, "the second GET never reached the service");
    // Auth, rate limits and metrics still saw it; the access log says it was a cache hit.
    assert!(second.header("ratelimit").is_some(), "the rate limit filter ran before the cache");
    let hit = setup.gateway.access_log_line(second.header("x-request-id").unwrap());
    assert_eq!(hit["details"], "cache.response_from_cache_filter", "{hit}");
    assert!(hit["response_flags"].as_str().unwrap().contains("RFCF"), "{hit}");
    let labels = [("route", "inventory"), ("code", "200")];
    assert_eq!(setup.gateway.envoy.eventually_sample("gateway_requests_total", &labels, 2.0), 2.0);

    // Past max-age the cache asks the service whether its copy is still good (If-None-Match),
    // gets 304 Not Modified, and serves its copy again.
    std::thread::sleep(Duration::from_secs(INVENTORY_MAX_AGE_SECS) + Duration::from_millis(1500));
    let revalidated = setup.get(path, &[]);
    std::thread::sleep(ENTRY_WRITTEN);
    assert_eq!((revalidated.status, revalidated.body.clone()), (200, first.body.clone()));
    let seen = setup.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].2.as_deref(), Some(etag.as_str()), "revalidated with the stored ETag");
    assert_eq!(setup.gateway.envoy.stat("cluster.inventory.upstream_rq_304"), 1);
    let again = setup.get(path, &[]);
    assert!(again.header("age").is_some());
    assert_eq!(setup.answered(path), 2, "fresh again after the revalidation");
}

#[test]
fn vary_keeps_each_language_apart() {
    let setup = CacheSetup::start();
    let path = "/inventory/mon-27";
    let name = |language: &str| {
        let answer = setup.get(path, &[("accept-language", language)]);
        std::thread::sleep(ENTRY_WRITTEN);
        (answer.json()["name"].as_str().unwrap().to_string(), answer.header("age").is_some())
    };
    assert_eq!(name("de"), ("27-Zoll-Monitor".to_string(), false));
    assert_eq!(name("en"), ("27\" monitor".to_string(), false), "an English client never gets the German copy");
    assert_eq!(name("de"), ("27-Zoll-Monitor".to_string(), true));
    assert_eq!(name("en"), ("27\" monitor".to_string(), true));
    assert_eq!(setup.answered(path), 2, "one answer per language");
}

#[test]
fn no_client_gets_an_answer_meant_for_another() {
    let setup = CacheSetup::start();
    let reading = |answer: &client::Response| answer.json()["reading"].as_u64().unwrap();
    // Two clients in turn: each must get the service's own answer, never the first one's copy.
    for (path, rule) in [
        ("/inventory/kbd-01/live", "no-store"),
        ("/inventory/kbd-01/reservations", "private"),
        ("/inventory/kbd-01/watch", "sets a cookie, though it says max-age=60"),
    ] {
        let first = setup.get(path, &[]);
        std::thread::sleep(ENTRY_WRITTEN);
        let second = setup.get(path, &[]);
        assert_eq!((first.status, second.status), (200, 200), "{path}");
        assert_ne!(reading(&first), reading(&second), "{path} ({rule}) was served from the cache");
        assert_eq!(setup.answered(path), 2, "{path} ({rule})");
        assert_eq!(second.header("age"), None, "{path}");
    }
    let cookies = |answer: client::Response| answer.header("set-cookie").map(str::to_string);
    let (one, other) =
        (cookies(setup.get("/inventory/kbd-01/watch", &[])), cookies(setup.get("/inventory/kbd-01/watch", &[])));
    assert_ne!(one, other, "a session cookie was handed to a second client");

    // POST answers are never reused, whoever sends them.
    let (ada, grace) = (setup.gateway.bearer("ada"), setup.gateway.bearer("grace"));
    let post = |bearer: &str| {
        let path = "/inventory/kbd-01/reservations";
        client::request("POST", &setup.gateway.url(path), &[("authorization", bearer)]).json()["reserved_for"].clone()
    };
    assert_eq!((post(&ada), post(&grace)), (json!("ada"), json!("grace")));

    // An answer to a request with credentials is the caller's own: an anonymous copy is never
    // served to a consumer, and a consumer's answer is never stored. A request with an API key
    // or a cookie counts as credentialed even where the gateway does not check it.
    let quote = "/inventory/kbd-01/quote";
    let anonymous = setup.get(quote, &[]).json();
    std::thread::sleep(ENTRY_WRITTEN);
    assert_eq!(anonymous["price_list"], "public");
    assert!(setup.get(quote, &[]).header("age").is_some(), "the anonymous quote is shared");
    assert_eq!(setup.answered(quote), 1);
    for (header, value, caller) in [
        ("authorization", ada.as_str(), "ada"),
        ("authorization", grace.as_str(), "grace"),
        ("authorization", ada.as_str(), "ada"),
        ("x-api-key", "demo-key-ci-bot", "anonymous"),
        ("cookie", "session=1", "anonymous"),
    ] {
        let answer = setup.get(quote, &[(header, value)]);
        assert_eq!(answer.header("age"), None, "{caller} ({header}) got a cached copy");
        assert_eq!(answer.json()["for"], caller);
    }
    assert_eq!(setup.answered(quote), 6, "every credentialed request reached the service");
    let later = setup.get(quote, &[]).json();
    assert_eq!(later, anonymous, "no consumer's answer replaced the anonymous copy");
}

#[test]
fn the_cache_is_bounded_by_the_shipped_config() {
    let setup = CacheSetup::start();
    let gauge = |name: &str| {
        let stats = client::get(&format!("{}/stats?filter=^cache\\.{name}", setup.gateway.envoy.admin_url())).text();
        stats.lines().find_map(|line| line.rsplit(": ").next()?.parse::<u64>().ok())
    };
    assert_eq!(gauge("size_limit_bytes"), Some(64 * 1024 * 1024));
    assert_eq!(gauge("size_limit_count"), Some(10_000));
    setup.get("/inventory/kbd-01", &[]);
    let started = Instant::now();
    while gauge("size_count") != Some(1) {
        assert!(started.elapsed() < Duration::from_secs(5), "the entry was never counted");
        std::thread::sleep(Duration::from_millis(50));
    }
}
