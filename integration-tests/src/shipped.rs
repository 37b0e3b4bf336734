//! The shipped gateway (`envoy/demo.yaml`) as users run it, moved onto free ports: its API
//! clusters find their instances in EDS files in a scratch directory (changed with the same
//! `scripts/endpoints.sh` users run), and its access log is written there too.

use crate::backend::Backend;
use crate::catalog::Catalog;
use crate::demo;
use crate::envoy::Envoy;
use crate::paths;
use crate::rls::{RateLimitService, Redis, ServiceOptions};
use crate::scratch::ScratchDir;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The API services that run as several instances (the identity provider runs as one).
pub const API_SERVICES: [&str; 3] = ["users", "orders", "inventory"];

/// Points every `<dir>/<module>.wasm` at the module built in this checkout.
pub fn with_built_modules(yaml: &str) -> String {
    yaml.lines()
        .map(|line| match line.find("filename: ") {
            Some(at) if line.contains(".wasm") => {
                let path = line[at + "filename: ".len()..].trim_end_matches(['}', ' ']);
                let module = path.rsplit('/').next().unwrap_or_default().trim_end_matches(".wasm");
                line.replace(path, &paths::wasm_module(module).display().to_string())
            }
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes the catalog's descriptor set (what `make demo` puts in `.run/catalog.pb`) into `dir`.
pub fn write_descriptor_set(dir: &Path) -> PathBuf {
    let path = dir.join("catalog.pb");
    std::fs::write(&path, demo_catalog::DESCRIPTOR_SET).unwrap();
    path
}

/// Where the services that run as one instance listen.
#[derive(Clone, Copy)]
pub struct Singles {
    pub idp: u16,
    pub catalog: u16,
    /// The rate limit service's gRPC port.
    pub ratelimit: u16,
}

/// The demo's rate limits raised far above any test load (nothing else changes; the global
/// rule, whose limit is in the service's file, becomes a local rule with such a limit).
pub fn without_rate_limits(yaml: String) -> String {
    let unlimited = r#""limit": {"requests": 1000000, "per": "second"}"#;
    let limits = [
        r#""global": true"#,
        r#""limit": {"requests": 60, "per": "minute", "burst": 20}"#,
        r#""limit": {"requests": 1000, "per": "hour", "burst": 50}"#,
    ];
    limits.iter().fold(yaml, |yaml, limit| {
        assert!(yaml.contains(limit), "the demo's limit {limit} changed; update this test");
        yaml.replace(limit, unlimited)
    })
}

pub struct ShippedGateway {
    pub envoy: Envoy,
    dir: ScratchDir,
}

impl ShippedGateway {
    /// `envoy/demo.yaml` with Envoy's listener and admin on free ports, each API service's
    /// instances at `instances` (service, ports), the identity provider and the catalog at
    /// `singles`, the cache and the descriptor set in a scratch directory, and `edit` applied to
    /// the YAML (for tests that must lower a limit).
    pub fn start_with(
        instances: &[(&str, Vec<u16>)],
        singles: Singles,
        edit: impl Fn(String) -> String,
    ) -> ShippedGateway {
        let dir = ScratchDir::new("shipped");
        let endpoints = dir.path().join("endpoints");
        std::fs::create_dir_all(&endpoints).unwrap();
        for service in API_SERVICES {
            let shipped = std::fs::read_to_string(paths::repo_root().join(format!("envoy/endpoints/{service}.yaml")))
                .unwrap_or_else(|e| panic!("envoy/endpoints/{service}.yaml: {e}"));
            // Keep the shipped file's form; only the instances change.
            let mut lines: Vec<String> =
                shipped.lines().filter(|line| !line.contains("- endpoint:")).map(str::to_string).collect();
            let ports =
                instances.iter().find(|(name, _)| *name == service).map(|(_, ports)| ports.clone()).unwrap_or_default();
            for port in ports {
                lines.push(format!(
                    "    - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}"
                ));
            }
            std::fs::write(endpoints.join(format!("{service}.yaml")), lines.join("\n") + "\n").unwrap();
        }
        // Envoy's file-system cache needs its directory to exist.
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        let mut yaml =
            with_built_modules(&std::fs::read_to_string(paths::repo_root().join("envoy/demo.yaml")).unwrap());
        yaml = yaml
            .replace("port_value: 9901", "port_value: 0")
            .replace("port_value: 10000", "port_value: 0")
            .replace("port_value: 8084", &format!("port_value: {}", singles.idp))
            .replace("port_value: 8085", &format!("port_value: {}", singles.catalog))
            .replace("port_value: 8089", &format!("port_value: {}", singles.ratelimit))
            .replace(".run/catalog.pb", &write_descriptor_set(dir.path()).display().to_string())
            .replace(".run/cache", &cache.display().to_string())
            .replace(".run/endpoints", &endpoints.display().to_string())
            .replace(".run/access.log", &dir.path().join("access.log").display().to_string());
        let envoy = Envoy::start(&edit(yaml), 2);
        ShippedGateway { envoy, dir }
    }

    pub fn start(instances: &[(&str, Vec<u16>)], singles: Singles) -> ShippedGateway {
        Self::start_with(instances, singles, |yaml| yaml)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.envoy.url())
    }

    /// Runs `scripts/endpoints.sh ARGS` against this gateway's endpoint files.
    pub fn endpoints(&self, args: &[&str]) -> String {
        let output = Command::new(paths::repo_root().join("scripts/endpoints.sh"))
            .args(args)
            .env("ENDPOINTS_DIR", self.dir.path().join("endpoints"))
            .output()
            .expect("run scripts/endpoints.sh");
        assert!(output.status.success(), "endpoints.sh {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The access log's lines, each parsed as JSON.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.access_log_path())
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
            .collect()
    }

    /// `Bearer <token>` from the demo identity provider for `sub`, once the gateway has fetched
    /// its key set (the first fetch happens on a tick after start).
    pub fn bearer(&self, sub: &str) -> String {
        let token = crate::client::get(&self.url(&format!("/token?sub={sub}&format=raw"))).text();
        let bearer = format!("Bearer {token}");
        let started = std::time::Instant::now();
        while crate::client::request("GET", &self.url("/users/1"), &[("authorization", &bearer)]).status == 401 {
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "the gateway never got the key set");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        bearer
    }

    /// The access log line of the request `request_id`, once Envoy has written it.
    pub fn access_log_line(&self, request_id: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let line = self.access_log().into_iter().find(|line| line["request_id"].as_str() == Some(request_id));
            if let Some(line) = line {
                return line;
            }
            assert!(std::time::Instant::now() < deadline, "no access log line for {request_id}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }
}

/// The demo services: two instances of each API service, one identity provider and one
/// catalog gRPC service in this process, and the rate limit service (with the shipped limits,
/// `envoy/ratelimit/limits.yaml`) and its Redis as processes, all on free ports.
pub struct DemoServices {
    pub instances: Vec<(&'static str, Backend)>,
    pub idp: Backend,
    pub catalog: Catalog,
    pub ratelimit: RateLimitService,
    pub redis: Redis,
}

impl DemoServices {
    pub fn start() -> DemoServices {
        let start = |service: &str| Backend::start("127.0.0.1:0", demo::handler(service).unwrap()).unwrap();
        let instances =
            API_SERVICES.iter().flat_map(|service| [(*service, start(service)), (*service, start(service))]).collect();
        let redis = Redis::start();
        let limits = std::fs::read_to_string(paths::repo_root().join("envoy/ratelimit/limits.yaml"))
            .unwrap_or_else(|e| panic!("envoy/ratelimit/limits.yaml: {e}"));
        let ratelimit =
            RateLimitService::start(ServiceOptions { limits, redis_url: redis.url(), redis_timeout_ms: 50 });
        DemoServices { instances, idp: start("idp"), catalog: Catalog::start(), ratelimit, redis }
    }

    pub fn singles(&self) -> Singles {
        Singles { idp: self.idp.port(), catalog: self.catalog.port(), ratelimit: self.ratelimit.grpc_port() }
    }

    /// Each API service with the ports of its instances.
    pub fn endpoints(&self) -> Vec<(&str, Vec<u16>)> {
        API_SERVICES
            .iter()
            .map(|service| {
                (*service, self.instances.iter().filter(|(name, _)| name == service).map(|(_, b)| b.port()).collect())
            })
            .collect()
    }

    /// The instances of one service.
    pub fn of(&self, service: &str) -> Vec<&Backend> {
        self.instances.iter().filter(|(name, _)| *name == service).map(|(_, backend)| backend).collect()
    }
}
