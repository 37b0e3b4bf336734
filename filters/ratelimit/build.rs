//! Generates the rate limit service protocol's messages (`envoy.service.ratelimit.v3`) with
//! prost, from Envoy's published `rls.proto` (shipped by the `envoy-types` crate; see the
//! `proto-sources` crate): no interface file is copied into this tree.
//!
//! The module runs in wasm, so only what the filter sends and reads is generated: the two
//! packages of the request and response. Fields typed by other Envoy packages (response
//! headers to add, overrides, quota assignments) are dropped from the descriptors before
//! generation; prost skips such fields when decoding, as protobuf allows.

use prost_types::{DescriptorProto, FileDescriptorSet};
use std::error::Error;

const KEPT_PACKAGES: [&str; 2] = ["envoy.service.ratelimit.v3", "envoy.extensions.common.ratelimit.v3"];

fn main() -> Result<(), Box<dyn Error>> {
    let mut compiler = protox::Compiler::new(proto_sources::include_paths()?)?;
    compiler.include_imports(true).include_source_info(false);
    compiler.open_file("envoy/service/ratelimit/v3/rls.proto")?;
    let mut set: FileDescriptorSet = compiler.file_descriptor_set();
    // Protobuf's own files stay for prost's type graph; their types map to `prost-types`.
    set.file.retain(|file| KEPT_PACKAGES.contains(&file.package()) || file.package() == "google.protobuf");
    for file in &mut set.file {
        file.service.clear();
        file.message_type.iter_mut().for_each(keep_known_fields);
    }
    prost_build::Config::new().include_file("rls.rs").compile_fds(set)?;
    Ok(())
}

/// Drops fields whose type lives outside the kept packages and protobuf's well-known types.
fn keep_known_fields(message: &mut DescriptorProto) {
    message.field.retain(|field| {
        let type_name = field.type_name();
        type_name.is_empty()
            || type_name.starts_with(".google.protobuf.")
            || KEPT_PACKAGES.iter().any(|package| type_name.starts_with(&format!(".{package}.")))
    });
    message.nested_type.iter_mut().for_each(keep_known_fields);
}
