//! docker-compose.yml cannot run here (no Docker engine), so it is checked with a real
//! parser, and its Envoy image must be the version the tests run.

use integration_tests::paths;
use std::process::Command;

#[test]
fn compose_file_passes_docker_compose_config() {
    let binary = paths::tool("docker-compose", "DOCKER_COMPOSE_BIN", "apt-get install docker-compose");
    let root = paths::repo_root();
    let output = Command::new(binary)
        .args(["--project-directory"])
        .arg(&root)
        .args(["-f"])
        .arg(root.join("docker-compose.yml"))
        .args(["config", "-q"])
        .output()
        .expect("run docker-compose");
    assert!(output.status.success(), "docker-compose config -q failed:\n{}", String::from_utf8_lossy(&output.stderr));
}

/// One pinned version: the Makefile's ENVOY_VERSION, the binary the tests run, and the image.
#[test]
fn compose_runs_the_pinned_envoy_version() {
    let root = paths::repo_root();
    let makefile = std::fs::read_to_string(root.join("Makefile")).unwrap();
    let pinned = makefile
        .lines()
        .find_map(|line| line.strip_prefix("ENVOY_VERSION := "))
        .expect("Makefile pins ENVOY_VERSION")
        .trim();
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    assert!(
        compose.contains(&format!("image: envoyproxy/envoy:v{pinned}\n")),
        "docker-compose.yml must use envoyproxy/envoy:v{pinned}"
    );
    let version = Command::new(paths::envoy_binary()).arg("--version").output().expect("run envoy --version");
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(version.contains(&format!("/{pinned}/")), "the tests' Envoy is not {pinned}: {version}");
}
