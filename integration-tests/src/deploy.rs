//! What Kubernetes and Istio users deploy, made from the same files the demo and compose use:
//! - `deploy/kubernetes/config.yaml`: the ConfigMaps (Envoy's `envoy/compose.yaml` and the
//!   rate limit service's `envoy/ratelimit/limits.yaml`), committed and checked current;
//! - per module, an OCI image layout in Istio's Wasm image format (a manifest whose config is
//!   `application/vnd.module.wasm.config.v1+json` and whose one layer is the module itself,
//!   `application/vnd.module.wasm.content.layer.v1+wasm`), written without Docker, and an
//!   Istio `WasmPlugin` that pulls it by digest (`sha256`), both under `target/deploy/`.

use crate::paths;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;

pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.module.wasm.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Where `--bin deploy` writes the image layouts and the WasmPlugins.
pub fn output_dir() -> std::path::PathBuf {
    paths::repo_root().join("target/deploy")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The ConfigMaps of `deploy/kubernetes/`: the compose Envoy config (the same gateway as the
/// demo, with services found by DNS name) and the global rules' limits, verbatim.
pub fn kubernetes_config() -> String {
    let root = paths::repo_root();
    let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let block = |text: &str| {
        text.lines()
            .map(|line| if line.is_empty() { String::new() } else { format!("    {line}") })
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "# Generated from envoy/compose.yaml and envoy/ratelimit/limits.yaml by\n\
         # `cargo run -p integration-tests --bin deploy`; do not edit (make test checks it is current).\n\
         apiVersion: v1\n\
         kind: ConfigMap\n\
         metadata:\n  name: gateway-envoy\n  labels: {{app.kubernetes.io/part-of: envoy-gateway-filters}}\n\
         data:\n  envoy.yaml: |\n{}\n\
         ---\n\
         apiVersion: v1\n\
         kind: ConfigMap\n\
         metadata:\n  name: ratelimit-limits\n  labels: {{app.kubernetes.io/part-of: envoy-gateway-filters}}\n\
         data:\n  limits.yaml: |\n{}\n",
        block(&read("envoy/compose.yaml")),
        block(&read("envoy/ratelimit/limits.yaml"))
    )
}

/// One module's image, as OCI content: (blobs by digest, the manifest's digest).
pub struct WasmImage {
    pub blobs: Vec<(String, Vec<u8>)>,
    pub manifest_digest: String,
    pub manifest_size: usize,
}

/// The image of `module` (its `.wasm` bytes). Deterministic: no timestamps, so one build of
/// a module always gives the same digest.
pub fn wasm_image(module: &str, wasm: &[u8]) -> WasmImage {
    let layer_digest = format!("sha256:{}", sha256_hex(wasm));
    // The runtime config of the Wasm image format: the proxy-wasm ABI the module speaks
    // (proxy-wasm-rust-sdk 0.2: ABI 0.2.1) and its root id.
    let config = serde_json::to_vec(&json!({
        "type": "envoy_proxy",
        "abiVersions": ["v0.2.1"],
        "config": {"rootIds": [module]}
    }))
    .unwrap_or_default();
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config.len()},
        "layers": [{
            "mediaType": LAYER_MEDIA_TYPE,
            "digest": layer_digest,
            "size": wasm.len(),
            "annotations": {"org.opencontainers.image.title": "plugin.wasm"}
        }],
        "annotations": {"org.opencontainers.image.title": format!("{module}.wasm")}
    }))
    .unwrap_or_default();
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    let manifest_size = manifest.len();
    WasmImage {
        blobs: vec![(config_digest, config), (layer_digest, wasm.to_vec()), (manifest_digest.clone(), manifest)],
        manifest_digest,
        manifest_size,
    }
}

/// Writes `image` as an OCI image layout in `dir` (`oci-layout`, `index.json`, `blobs/`),
/// tagged `tag`: what `oras cp --from-oci-layout` or `skopeo copy oci:` push to a registry.
pub fn write_layout(image: &WasmImage, tag: &str, dir: &Path) -> std::io::Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    for (digest, bytes) in &image.blobs {
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes)?;
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": image.manifest_digest,
            "size": image.manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }]
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&index).unwrap_or_default())
}

/// Where each module goes in Istio's chain and what a failure does: as the shipped Envoy
/// config orders and protects them.
fn placement(module: &str) -> (&'static str, &'static str) {
    match module {
        "auth" | "gateway" => ("AUTHN", "FAIL_CLOSE"),
        "ratelimit" => ("AUTHZ", "FAIL_OPEN"),
        "metrics" => ("STATS", "FAIL_OPEN"),
        _ => ("UNSPECIFIED_PHASE", "FAIL_CLOSE"),
    }
}

/// The Istio `WasmPlugin` for `module`, pulled from `registry` by digest, with the module's
/// configuration from `examples/<module>.yaml` as its `pluginConfig`.
pub fn wasm_plugin(module: &str, registry: &str, manifest_digest: &str, plugin_config: &Value) -> Value {
    let (phase, fail_strategy) = placement(module);
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": format!("gateway-{module}"), "namespace": "istio-system"},
        "spec": {
            "selector": {"matchLabels": {"istio": "ingressgateway"}},
            "url": format!("oci://{registry}/{module}@{manifest_digest}"),
            "sha256": manifest_digest.trim_start_matches("sha256:"),
            "imagePullPolicy": "IfNotPresent",
            "phase": phase,
            "failStrategy": fail_strategy,
            "pluginName": module,
            "pluginConfig": plugin_config
        }
    })
}

/// The configuration of `module`'s wasm filter in `examples/<module>.yaml`.
pub fn example_config(module: &str) -> Value {
    let path = paths::repo_root().join(format!("examples/{module}.yaml"));
    let yaml: Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    fn find(node: &Value) -> Option<&str> {
        match node {
            Value::Object(map) => map
                .get("configuration")
                .and_then(|configuration| configuration["value"].as_str())
                .or_else(|| map.values().find_map(find)),
            Value::Array(items) => items.iter().find_map(find),
            _ => None,
        }
    }
    let text = find(&yaml).unwrap_or_else(|| panic!("{} has no filter configuration", path.display()));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{}: the configuration is not JSON: {e}", path.display()))
}
