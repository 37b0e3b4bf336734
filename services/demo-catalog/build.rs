//! Compiles `proto/catalog/v1/catalog.proto` with protox (pure Rust, no protoc):
//! - `catalog.pb` in OUT_DIR: the descriptor set Envoy's gRPC-JSON transcoder loads, with every
//!   import included (the binary embeds it and writes it out with `--descriptor-set PATH`);
//! - the tonic server and client code for `catalog.v1`.
//!
//! `google/api/annotations.proto` and `http.proto` come from the published googleapis sources
//! that the `envoy-types` crate ships (see the `proto-sources` crate).

use std::error::Error;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn Error>> {
    let proto_dir = PathBuf::from("proto");
    let googleapis = proto_sources::proto_root()?.join("googleapis");
    println!("cargo:rerun-if-changed=proto");

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
