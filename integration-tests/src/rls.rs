//! Global rate limiting for real: a `redis-server` process and the `ratelimit-service`
//! binary (built by `make services`), each on loopback ports, killable, pausable and
//! restartable on the same port, as the failure tests need.

use crate::paths;
use crate::process;
use crate::scratch::ScratchDir;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during startup ({status})");
        }
        assert!(Instant::now() < deadline, "{what} is not listening on {port} after {STARTUP_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, signal: i32) {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// A throwaway `redis-server` (no persistence) on a loopback port.
pub struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        let mut redis = Redis { child: None, port: process::free_port() };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `kill -9`: what a crashed Redis looks like to its clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts (again) on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let binary = paths::tool("redis-server", "REDIS_SERVER_BIN", "apt-get install redis-server");
        let mut child = process::spawn_tied(
            Command::new(binary)
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("start redis-server");
        wait_for_port(self.port, &mut child, "redis-server");
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How the service is started.
#[derive(Clone)]
pub struct ServiceOptions {
    /// The limits file (YAML).
    pub limits: String,
    pub redis_url: String,
    pub redis_timeout_ms: u64,
}

/// The `ratelimit-service` binary.
pub struct RateLimitService {
    child: Option<Child>,
    options: ServiceOptions,
    grpc_port: u16,
    admin_port: u16,
    scratch: ScratchDir,
}

impl RateLimitService {
    pub fn start(options: ServiceOptions) -> RateLimitService {
        let scratch = ScratchDir::new("ratelimit-service");
        std::fs::write(scratch.path().join("limits.yaml"), &options.limits).expect("write limits");
        let mut service = RateLimitService { child: None, options, grpc_port: 0, admin_port: 0, scratch };
        service.restart();
        service
    }

    /// The port Envoy's `ratelimit` cluster points at.
    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process holds its connections but answers nothing, like a stalled service.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGSTOP);
        }
    }

    pub fn resume(&self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGCONT);
        }
    }

    /// Starts (again), on the same ports as before if it ran already.
    pub fn restart(&mut self) {
        self.kill();
        let binary = paths::service_binary("ratelimit-service");
        let port = |port: u16| format!("127.0.0.1:{port}");
        let mut child = process::spawn_tied(
            Command::new(&binary)
                .arg("--config")
                .arg(self.scratch.path().join("limits.yaml"))
                .args(["--grpc", &port(self.grpc_port), "--admin", &port(self.admin_port)])
                .args(["--redis", &self.options.redis_url])
                .args(["--redis-timeout", &self.options.redis_timeout_ms.to_string()])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("the service's first line");
        // "ratelimit-service listening on grpc://127.0.0.1:P (admin http://127.0.0.1:Q), ..."
        let port_after = |marker: &str| -> u16 {
            let rest = line.split(marker).nth(1).unwrap_or_else(|| panic!("no {marker} in {line:?}"));
            let digits: String =
                rest.chars().skip_while(|c| *c != ':').skip(1).take_while(char::is_ascii_digit).collect();
            digits.parse().unwrap_or_else(|_| panic!("no port after {marker} in {line:?}"))
        };
        self.grpc_port = port_after("grpc://");
        self.admin_port = port_after("admin http://");
        wait_for_port(self.grpc_port, &mut child, "ratelimit-service");
        self.child = Some(child);
    }

    /// The service's Prometheus text.
    pub fn metrics(&self) -> String {
        crate::client::get(&format!("{}/metrics", self.admin_url())).text()
    }

    /// One sample of the service's metrics, 0 when absent.
    pub fn sample(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until `/healthz` says Redis answers.
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while crate::client::get(&format!("{}/healthz", self.admin_url())).status != 200 {
            assert!(Instant::now() < deadline, "the rate limit service is not healthy after {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RateLimitService {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}
