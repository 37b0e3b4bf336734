//! A real Envoy process: started on a rendered config with every port chosen by the kernel,
//! ready when its admin `/ready` says LIVE, killed when dropped (a panicking test included),
//! and its log printed when the test that owns it fails.

use crate::client;
use crate::paths;
use crate::process;
use crate::prometheus_text::Series;
use crate::scratch::ScratchDir;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Envoy {
    child: Child,
    scratch: ScratchDir,
    admin: String,
    listeners: Vec<(String, u16)>,
}

impl Envoy {
    /// Starts Envoy with `config` (YAML; listeners and admin on port 0) and `concurrency` workers.
    pub fn start(config: &str, concurrency: u32) -> Envoy {
        Self::try_start(config, concurrency).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start(config: &str, concurrency: u32) -> Result<Envoy, String> {
        let binary = paths::envoy_binary();
        if !binary.exists() {
            return Err(format!(
                "Envoy binary not found at {}: run `make setup` or set ENVOY_BIN to an Envoy 1.40 binary",
                binary.display()
            ));
        }
        let scratch = ScratchDir::new("envoy");
        let config_path = scratch.path().join("envoy.yaml");
        let admin_path = scratch.path().join("admin-address");
        let log_path = scratch.path().join("envoy.log");
        let config = crate::form::apply(config);
        std::fs::write(&config_path, config).map_err(|e| format!("cannot write config: {e}"))?;
        let log = std::fs::File::create(&log_path).map_err(|e| format!("cannot create log: {e}"))?;
        let child = process::spawn_tied(
            Command::new(&binary)
                .arg("--config-path")
                .arg(&config_path)
                .arg("--admin-address-path")
                .arg(&admin_path)
                .args([
                    "--concurrency",
                    &concurrency.to_string(),
                    "--disable-hot-restart",
                    // Access logs reach their file within a second (Envoy's default is 10 s).
                    "--file-flush-interval-msec",
                    "1000",
                    "--log-level",
                    "warning",
                    "--component-log-level",
                    "wasm:info",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut envoy = Envoy { child, scratch, admin: String::new(), listeners: Vec::new() };
        envoy.wait_until_ready()?;
        Ok(envoy)
    }

    fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let admin_path = self.scratch.path().join("admin-address");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("Envoy exited during startup ({status}); its log:\n{}", self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("Envoy not ready after {STARTUP_TIMEOUT:?}; its log:\n{}", self.log()));
            }
            if self.admin.is_empty() {
                if let Ok(address) = std::fs::read_to_string(&admin_path) {
                    self.admin = address.trim().to_string();
                }
            }
            if !self.admin.is_empty() {
                let ready = client::get(&format!("http://{}/ready", self.admin));
                if ready.status == 200 && ready.text().trim() == "LIVE" {
                    self.listeners = self.read_listeners()?;
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Listener name and the port the kernel gave it, from admin `/listeners` (internal
    /// listeners have no socket and are left out).
    fn read_listeners(&self) -> Result<Vec<(String, u16)>, String> {
        let body = client::get(&format!("http://{}/listeners?format=json", self.admin)).json();
        let listeners = body["listener_statuses"].as_array().cloned().unwrap_or_default();
        listeners
            .iter()
            .filter(|listener| listener["local_address"].get("envoy_internal_address").is_none())
            .map(|listener| {
                let name = listener["name"].as_str().unwrap_or_default().to_string();
                let port = listener["local_address"]["socket_address"]["port_value"].as_u64();
                match port.and_then(|p| u16::try_from(p).ok()) {
                    Some(port) => Ok((name, port)),
                    None => Err(format!("listener {name} has no port in {listener}")),
                }
            })
            .collect()
    }

    /// `http://127.0.0.1:PORT` of the listener with this name.
    pub fn listener_url(&self, name: &str) -> String {
        match self.listeners.iter().find(|(listener, _)| listener == name) {
            Some((_, port)) => format!("http://127.0.0.1:{port}"),
            None => panic!("no listener named {name}; Envoy has {:?}", self.listeners),
        }
    }

    /// The URL of the only (or first) listener.
    pub fn url(&self) -> String {
        let name = self.listeners.first().map(|(name, _)| name.clone()).unwrap_or_default();
        self.listener_url(&name)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.path().join("envoy.log")).unwrap_or_default()
    }

    /// The `/stats/prometheus` text.
    pub fn prometheus_text(&self) -> String {
        client::get(&format!("{}/stats/prometheus", self.admin_url())).text()
    }

    /// One of Envoy's own stats by its full name (`cluster.users.upstream_rq_200`), from the
    /// admin `/stats` text; 0 when Envoy has not created it.
    pub fn stat(&self, name: &str) -> u64 {
        let text = client::get(&format!("{}/stats?filter=^{}$", self.admin_url(), name.replace('.', "\\."))).text();
        text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok()).unwrap_or(0)
    }

    /// Every series of one family in `/stats/prometheus`: its labels and value.
    pub fn series(&self, family: &str) -> Vec<Series> {
        crate::prometheus_text::parse(&self.prometheus_text(), family)
    }

    /// The sum over all series of `family` whose labels include all of `labels`.
    pub fn sample(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(family).iter().filter(|series| series.has(labels)).map(|series| series.value).sum()
    }

    /// Like [`Envoy::sample`], but waits (up to 10 s) for the value to become `expected`:
    /// Envoy merges histograms from the workers asynchronously after a flush, so a first read
    /// can be one merge behind. Returns the last value read.
    pub fn eventually_sample(&self, family: &str, labels: &[(&str, &str)], expected: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.sample(family, labels);
            if value == expected || Instant::now() > deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Downstream connections each of `workers` worker threads accepted so far: tests of
    /// cross-worker behaviour check that every worker really took part.
    pub fn connections_per_worker(&self, workers: u32) -> Vec<f64> {
        let text = self.prometheus_text();
        (0..workers)
            .map(|worker| {
                text.lines()
                    .filter(|line| {
                        line.starts_with("envoy_listener_worker_downstream_cx_total{")
                            && line.contains(&format!("worker_id=\"{worker}\""))
                    })
                    .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            })
            .collect()
    }

    /// Whether Envoy is still running (a config it rejected at runtime may make it exit).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- Envoy log ({}) -----\n{}", self.scratch.path().display(), self.log());
        }
    }
}

/// Runs `envoy --mode validate` on a config file; returns Envoy's output on failure.
pub fn validate(config_path: &std::path::Path) -> Result<(), String> {
    let binary = paths::envoy_binary();
    let output = Command::new(&binary)
        .args(["--mode", "validate", "--disable-hot-restart", "--config-path"])
        .arg(config_path)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
    }
}
