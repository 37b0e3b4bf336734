//! Where the published `.proto` files are, for build scripts.
//!
//! The `envoy-types` crate ships Envoy's data-plane API and its imports (googleapis, xds,
//! protoc-gen-validate) under its `proto/` directory. Build scripts compile what they need from
//! there with protox, so no third-party interface file lives in this repository.
//! `ENVOY_PROTO_ROOT` points elsewhere (a directory with the same layout).

use std::error::Error;
use std::path::PathBuf;

/// The directories under the root, each an include path of its own.
pub const INCLUDE_DIRS: [&str; 4] = ["data-plane-api", "xds", "protoc-gen-validate", "googleapis"];

/// The directory holding `data-plane-api/`, `googleapis/`, `xds/` and `protoc-gen-validate/`.
/// Call from a build script (it runs `cargo metadata` in the package being built).
pub fn proto_root() -> Result<PathBuf, Box<dyn Error>> {
    println!("cargo:rerun-if-env-changed=ENVOY_PROTO_ROOT");
    if let Ok(dir) = std::env::var("ENVOY_PROTO_ROOT") {
        return Ok(PathBuf::from(dir));
    }
    let cargo = std::env::var("CARGO")?;
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(std::env::var("CARGO_MANIFEST_DIR")?)
        .output()?;
    if !output.status.success() {
        return Err(format!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let manifest = metadata
        .get("packages")
        .and_then(|packages| packages.as_array())
        .and_then(|packages| {
            packages.iter().find(|package| package.get("name").is_some_and(|name| name == "envoy-types"))
        })
        .and_then(|package| package.get("manifest_path")?.as_str())
        .ok_or("envoy-types is not in `cargo metadata`; set ENVOY_PROTO_ROOT")?;
    let root = PathBuf::from(manifest).with_file_name("proto");
    if !root.join("data-plane-api/envoy/service/ratelimit/v3/rls.proto").is_file() {
        return Err(format!("{} does not hold Envoy's protos; set ENVOY_PROTO_ROOT", root.display()).into());
    }
    Ok(root)
}

/// [`proto_root`] with each of [`INCLUDE_DIRS`] appended: the include paths for protox.
pub fn include_paths() -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let root = proto_root()?;
    Ok(INCLUDE_DIRS.iter().map(|dir| root.join(dir)).collect())
}
