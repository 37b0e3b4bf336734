//! Load generation with wrk, for the benchmark and the load-shaped tests, and the process
//! figures (CPU time, resident memory) read around it.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Wrk {
    binary: PathBuf,
}

/// What wrk reported for one run.
#[derive(Debug, Clone, Copy)]
pub struct WrkReport {
    pub requests: f64,
    /// Non-2xx answers plus socket errors.
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub struct WrkRun<'a> {
    pub url: &'a str,
    pub seconds: u64,
    pub threads: u32,
    pub connections: u32,
    pub headers: &'a [&'a str],
    /// A script from `integration-tests/wrk/` and its arguments.
    pub script: Option<(&'a str, &'a [&'a str])>,
    /// Each connection waits this many ms after each answer before its next request (wrk's
    /// `delay()`), so the offered load stays below what any variant can serve and every
    /// variant serves about the same rate; `None` drives Envoy as fast as it answers.
    pub pace_ms: Option<u32>,
}

impl Wrk {
    pub fn find() -> Wrk {
        Wrk { binary: crate::paths::tool("wrk", "WRK_BIN", "apt-get install wrk") }
    }

    pub fn run(&self, run: &WrkRun) -> WrkReport {
        let mut command = Command::new(&self.binary);
        command
            .arg(format!("-t{}", run.threads))
            .arg(format!("-c{}", run.connections))
            .arg(format!("-d{}s", run.seconds))
            .args(["--latency", "--timeout", "5s"]);
        for header in run.headers {
            command.args(["-H", header]);
        }
        let paced_script = run.pace_ms.map(|pace| paced(run.script.map(|(script, _)| script), pace));
        match (&paced_script, run.script) {
            (Some(paced), _) => {
                command.arg("-s").arg(paced);
            }
            (None, Some((script, _))) => {
                command.arg("-s").arg(script_path(script));
            }
            (None, None) => {}
        }
        command.arg(run.url);
        if let Some((_, arguments)) = run.script {
            command.arg("--").args(arguments.iter());
        }
        let output = command.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        if let Some(paced) = paced_script {
            let _ = std::fs::remove_file(paced);
        }
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            panic!("wrk failed: {}{text}", String::from_utf8_lossy(&output.stderr));
        }
        WrkReport {
            requests: parse_requests(&text),
            errors: parse_errors(&text),
            p50_ms: parse_percentile(&text, "50%"),
            p99_ms: parse_percentile(&text, "99%"),
        }
    }
}

/// A copy of `script` (or an empty script) with a `delay()` of `pace_ms`, in a temporary file.
fn paced(script: Option<&str>, pace_ms: u32) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = script.map(|name| std::fs::read_to_string(script_path(name)).unwrap_or_default()).unwrap_or_default();
    let path = std::env::temp_dir().join(format!(
        "wrk-paced-{}-{}.lua",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, format!("{base}\nfunction delay()\n  return {pace_ms}\nend\n"))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

fn script_path(name: &str) -> PathBuf {
    let path = crate::paths::repo_root().join("integration-tests/wrk").join(name);
    assert!(path.is_file(), "no wrk script {}", path.display());
    path
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

/// CPU time of every thread of the process, in nanoseconds (first field of schedstat).
pub fn cpu_ns(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap_or_else(|e| panic!("/proc/{pid}/task: {e}"));
    tasks
        .filter_map(|task| task.ok())
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()))
        .sum()
}

/// Resident memory of the process, from /proc/<pid>/status.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kib.map_or(f64::NAN, |kib| kib / 1024.0)
}
