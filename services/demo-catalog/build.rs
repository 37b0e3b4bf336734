//! Compiles `proto/catalog/v1/catalog.proto` with protox (pure Rust, no protoc):
//! - `catalog.pb` in OUT_DIR: the descriptor set Envoy's gRPC-JSON transcoder loads, with every
//!   import included (the binary embeds it and writes it out with `--descriptor-set PATH`);
//! - the tonic server and client code for `catalog.v1`.
//!
//! `google/api/annotations.proto` and `http.proto` come from the `envoy-types` crate, which ships
//! googleapis' sources; `GOOGLEAPIS_PROTO_DIR` points elsewhere instead.

use std::error::Error;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn Error>> {
    let proto_dir = PathBuf::from("proto");
    let googleapis = googleapis_dir()?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=GOOGLEAPIS_PROTO_DIR");

    let mut compiler = protox::Compiler::new([proto_dir, googleapis])?;
    compiler.include_imports(true).include_source_info(false);
    compiler.open_file("catalog/v1/catalog.proto")?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("catalog.pb"), compiler.encode_file_descriptor_set())?;

    // Rust code only for the catalog itself: its messages use no imported type.
    let mut own = compiler.file_descriptor_set();
    own.file.retain(|file| file.package() == "catalog.v1");
    tonic_prost_build::configure().compile_fds(own)?;
    Ok(())
}

/// The directory holding `google/api/annotations.proto`.
fn googleapis_dir() -> Result<PathBuf, Box<dyn Error>> {
    if let Ok(dir) = std::env::var("GOOGLEAPIS_PROTO_DIR") {
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
        .ok_or("envoy-types is not in `cargo metadata`; set GOOGLEAPIS_PROTO_DIR")?;
    let dir = PathBuf::from(manifest).with_file_name("proto").join("googleapis");
    if !dir.join("google/api/annotations.proto").is_file() {
        return Err(format!("{} has no google/api/annotations.proto; set GOOGLEAPIS_PROTO_DIR", dir.display()).into());
    }
    Ok(dir)
}
