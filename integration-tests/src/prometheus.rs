//! A real Prometheus server (the Debian package) scraping one Envoy's admin endpoint, and
//! PromQL instant queries against it.

use crate::client;
use crate::paths;
use crate::process;
use crate::scratch::ScratchDir;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An instant-query result: each series' labels and its value.
pub type Samples = BTreeMap<BTreeMap<String, String>, f64>;

pub struct Prometheus {
    child: Child,
    url: String,
    scratch: ScratchDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (host:port) at `/stats/prometheus` every second.
    pub fn start(target: &str) -> Prometheus {
        let binary = paths::tool("prometheus", "PROMETHEUS_BIN", "apt-get install prometheus");
        let scratch = ScratchDir::new("prometheus");
        let config = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: envoy\n    metrics_path: /stats/prometheus\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(scratch.path().join("prometheus.yml"), config).unwrap_or_else(|e| panic!("prometheus.yml: {e}"));
        let port = process::free_port();
        let log = std::fs::File::create(scratch.path().join("prometheus.log")).unwrap_or_else(|e| panic!("log: {e}"));
        let child = process::spawn_tied(
            Command::new(binary)
                .arg(format!("--config.file={}", scratch.path().join("prometheus.yml").display()))
                .arg(format!("--storage.tsdb.path={}", scratch.path().join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )
        .unwrap_or_else(|e| panic!("start prometheus: {e}"));
        Prometheus { child, url: format!("http://127.0.0.1:{port}"), scratch }
    }

    /// The instant-query result as (labels → value); `None` if Prometheus refused the query or
    /// is not up yet.
    pub fn query(&self, promql: &str) -> Option<Samples> {
        let url = format!("{}/api/v1/query?query={}", self.url, encode(promql));
        let response = client::get(&url);
        if response.status != 200 {
            return None;
        }
        let body = response.json();
        let result = body["data"]["result"].as_array()?;
        result
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                let value = series["value"][1].as_str()?.parse().ok()?;
                Some((labels, value))
            })
            .collect()
    }

    /// Polls `promql` (up to 60 s) until `done` holds for its result; returns the last result.
    pub fn until(&self, promql: &str, done: impl Fn(&Samples) -> bool) -> Option<Samples> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let result = self.query(promql);
            if result.as_ref().is_some_and(&done) || Instant::now() > deadline {
                return result;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Polls `promql` (up to 60 s) until it returns `expected`; returns the last result.
    pub fn eventually(&self, promql: &str, expected: &Samples) -> Option<Samples> {
        self.until(promql, |result| result == expected)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- Prometheus log -----\n{}", self.log());
        }
    }
}

fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}
