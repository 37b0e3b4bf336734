//! Where the harness finds the Envoy binary, the built filters and the repository files.

use std::path::{Path, PathBuf};

/// The repository root (this crate lives one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `$ENVOY_BIN`, else the binary that `make setup` installs into the project virtualenv.
pub fn envoy_binary() -> PathBuf {
    match std::env::var_os("ENVOY_BIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => repo_root().join(".venv/bin/envoy"),
    }
}

/// The release build of a filter module, e.g. `wasm_module("metrics")`, or the one in
/// `$GATEWAY_WASM_DIR` (to benchmark another build against this one). Fails with the command
/// to run when it has not been built: a missing module never skips a test.
pub fn wasm_module(name: &str) -> PathBuf {
    let dir = match std::env::var_os("GATEWAY_WASM_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join("target/wasm32-wasip1/release"),
    };
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build the filters first with `make wasm` (or run everything with `make test`)",
        path.display()
    );
    path
}

/// A release binary of this workspace, e.g. `service_binary("ratelimit-service")`. Fails with
/// the command to run when it has not been built.
pub fn service_binary(name: &str) -> PathBuf {
    let path = repo_root().join("target/release").join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first with `make services` (or run everything with `make test`)",
        path.display()
    );
    path
}

/// A program from PATH or an override variable, with the install command when it is absent.
pub fn tool(name: &str, override_var: &str, install_hint: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(override_var).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: run `make setup` (or `{install_hint}`), or set {override_var}")
        })
}
