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

/// Docker cannot run here, so what the compose gateway loads is checked against what the
/// Dockerfile builds: every module `envoy/compose.yaml` names is copied into the image, and
/// every file the compose file mounts exists.
#[test]
fn compose_gateway_gets_every_module_it_loads() {
    let root = paths::repo_root();
    let envoy_config = std::fs::read_to_string(root.join("envoy/compose.yaml")).unwrap();
    let dockerfile = std::fs::read_to_string(root.join("docker/Dockerfile")).unwrap();
    let modules: Vec<&str> =
        envoy_config.split("/etc/envoy/wasm/").skip(1).filter_map(|rest| rest.split(".wasm").next()).collect();
    assert!(!modules.is_empty(), "compose.yaml loads no module");
    for module in modules {
        let copied = format!("/src/target/wasm32-wasip1/release/{module}.wasm");
        assert!(dockerfile.contains(&copied), "docker/Dockerfile does not copy {module}.wasm");
    }
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    for mounted in compose.lines().filter_map(|l| l.trim().strip_prefix("- ./")).map(|l| l.split(':').next().unwrap()) {
        assert!(root.join(mounted).is_file(), "docker-compose.yml mounts ./{mounted}, which does not exist");
    }
    assert!(root.join("docker/Dockerfile").is_file());
}
