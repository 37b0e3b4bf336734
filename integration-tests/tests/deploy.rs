//! What Kubernetes and Istio users deploy: the manifests under `deploy/kubernetes` pass the
//! published Kubernetes schemas (`kubernetes-validate --strict`), the ConfigMap is the compose
//! gateway's config, each module's OCI image layout (Istio's Wasm image format) and WasmPlugin
//! agree with the built module byte for byte and digest for digest, and the WasmPlugins pass
//! Istio's published CRD schema (`@kubernetes-models/istio`).

use integration_tests::deploy::{
    example_config, kubernetes_config, sha256_hex, wasm_image, wasm_plugin, write_layout, CONFIG_MEDIA_TYPE,
    LAYER_MEDIA_TYPE, MANIFEST_MEDIA_TYPE,
};
use integration_tests::paths;
use integration_tests::schemas::{committed_path, MODULES};
use integration_tests::scratch::ScratchDir;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn kubernetes_dir() -> PathBuf {
    paths::repo_root().join("deploy/kubernetes")
}

/// The files `kustomization.yaml` lists as resources.
fn resources() -> Vec<PathBuf> {
    let kustomization: Value =
        serde_norway::from_str(&std::fs::read_to_string(kubernetes_dir().join("kustomization.yaml")).unwrap()).unwrap();
    kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|file| kubernetes_dir().join(file.as_str().expect("a file name")))
        .collect()
}

/// Runs a schema checker: its output, as `Ok` if it accepted everything.
fn checked(command: &mut Command) -> Result<String, String> {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e} (run scripts/setup.sh test)"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn kubernetes_validate(files: &[PathBuf]) -> Result<String, String> {
    let binary = paths::repo_root().join(".venv/bin/kubernetes-validate");
    checked(Command::new(binary).args(["--strict", "--quiet"]).args(files))
}

#[test]
fn the_configmap_is_the_compose_gateways_config() {
    let committed = std::fs::read_to_string(kubernetes_dir().join("config.yaml")).unwrap_or_default();
    assert!(
        committed == kubernetes_config(),
        "deploy/kubernetes/config.yaml is stale: run `cargo run -p integration-tests --bin deploy` and commit it"
    );
}

#[test]
fn every_manifest_passes_the_kubernetes_schemas_and_a_broken_one_does_not() {
    let files = resources();
    let mut on_disk: Vec<PathBuf> = std::fs::read_dir(kubernetes_dir())
        .unwrap()
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml") && !path.ends_with("kustomization.yaml"))
        .collect();
    on_disk.sort();
    let mut listed = files.clone();
    listed.sort();
    assert_eq!(listed, on_disk, "kustomization.yaml must list every manifest");
    if let Err(output) = kubernetes_validate(&files) {
        panic!("deploy/kubernetes does not validate:\n{output}");
    }
    let scratch = ScratchDir::new("k8s-broken");
    let broken = scratch.path().join("gateway.yaml");
    let gateway = std::fs::read_to_string(kubernetes_dir().join("gateway.yaml")).unwrap();
    std::fs::write(&broken, gateway.replace("replicas: 2", "replicas: two")).unwrap();
    assert!(kubernetes_validate(&[broken]).is_err(), "the validator must refuse a string for replicas");
}

#[test]
fn the_gateway_runs_the_pinned_envoy_and_the_images_kustomize_maps() {
    let makefile = std::fs::read_to_string(paths::repo_root().join("Makefile")).unwrap();
    let pinned = makefile.lines().find_map(|line| line.strip_prefix("ENVOY_VERSION := ")).expect("pinned").trim();
    let gateway = std::fs::read_to_string(kubernetes_dir().join("gateway.yaml")).unwrap();
    assert!(gateway.contains(&format!("image: envoyproxy/envoy:v{pinned}\n")));
    let kustomization = std::fs::read_to_string(kubernetes_dir().join("kustomization.yaml")).unwrap();
    for file in resources() {
        let text = std::fs::read_to_string(&file).unwrap();
        for image in text.lines().filter_map(|line| line.trim().strip_prefix("image: envoy-gateway-filters/")) {
            assert!(
                kustomization.contains(&format!("- name: envoy-gateway-filters/{image}\n")),
                "{}: kustomization.yaml does not map image envoy-gateway-filters/{image}",
                file.display()
            );
        }
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// A blob of the layout, checked against its descriptor (digest and size).
fn blob(layout: &Path, descriptor: &Value) -> Vec<u8> {
    let digest = descriptor["digest"].as_str().expect("a digest");
    let bytes =
        std::fs::read(layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))).expect("the blob");
    assert_eq!(format!("sha256:{}", sha256_hex(&bytes)), digest, "the blob's content has its digest");
    assert_eq!(descriptor["size"].as_u64(), Some(bytes.len() as u64), "the descriptor has the blob's size");
    bytes
}

#[test]
fn each_modules_image_layout_and_wasm_plugin_match_the_built_module() {
    let scratch = ScratchDir::new("oci");
    for module in MODULES {
        let wasm = std::fs::read(paths::wasm_module(module)).expect("the built module (make wasm)");
        let image = wasm_image(module, &wasm);
        let layout = scratch.path().join(module);
        write_layout(&image, "test", &layout).unwrap();

        // Read back as a registry tool would: oci-layout, index, manifest, config, layer.
        assert_eq!(read_json(&layout.join("oci-layout"))["imageLayoutVersion"], "1.0.0");
        let index = read_json(&layout.join("index.json"));
        let entry = &index["manifests"][0];
        assert_eq!(entry["mediaType"], MANIFEST_MEDIA_TYPE);
        assert_eq!(entry["annotations"]["org.opencontainers.image.ref.name"], "test");
        let manifest: Value = serde_json::from_slice(&blob(&layout, entry)).unwrap();
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["config"]["mediaType"], CONFIG_MEDIA_TYPE);
        let config: Value = serde_json::from_slice(&blob(&layout, &manifest["config"])).unwrap();
        assert_eq!(config["config"]["rootIds"][0], module);
        let layers = manifest["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 1, "Istio's format: one layer, the module");
        assert_eq!(layers[0]["mediaType"], LAYER_MEDIA_TYPE);
        assert!(blob(&layout, &layers[0]) == wasm, "{module}: the layer is the built module");
        assert_eq!(layers[0]["digest"], format!("sha256:{}", sha256_hex(&wasm)));

        let plugin = wasm_plugin(module, "registry.test/gateway", &image.manifest_digest, &example_config(module));
        let spec = &plugin["spec"];
        let digest = image.manifest_digest.trim_start_matches("sha256:");
        assert_eq!(spec["sha256"], digest, "{module}: the WasmPlugin's sha256 is the image's");
        assert_eq!(spec["url"], format!("oci://registry.test/gateway/{module}@sha256:{digest}"));
        assert!(["AUTHN", "AUTHZ", "STATS", "UNSPECIFIED_PHASE"].contains(&spec["phase"].as_str().unwrap_or_default()));
        assert!(["FAIL_CLOSE", "FAIL_OPEN"].contains(&spec["failStrategy"].as_str().unwrap_or_default()));
        // The plugin's configuration is one the module accepts.
        let schema: Value = read_json(&committed_path(module));
        let validator = jsonschema::validator_for(&schema).expect("a schema");
        let errors: Vec<String> = validator.iter_errors(&spec["pluginConfig"]).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{module}: pluginConfig: {errors:?}");
        // One build of a module gives one digest.
        assert_eq!(wasm_image(module, &wasm).manifest_digest, image.manifest_digest);
    }
}

/// Runs `integration-tests/js/validate-wasmplugin.js` on `manifests` (JSON files).
fn validate_wasm_plugins(manifests: &[PathBuf]) -> Result<String, String> {
    let root = paths::repo_root();
    checked(
        Command::new("node")
            .arg(root.join("integration-tests/js/validate-wasmplugin.js"))
            .args(manifests)
            .env("NODE_PATH", root.join(".node/node_modules")),
    )
}

#[test]
fn every_wasm_plugin_passes_istios_crd_schema_and_a_broken_one_does_not() {
    let scratch = ScratchDir::new("wasmplugins");
    let mut files = Vec::new();
    for module in MODULES {
        let wasm = std::fs::read(paths::wasm_module(module)).expect("the built module (make wasm)");
        let image = wasm_image(module, &wasm);
        let plugin = wasm_plugin(module, "registry.test/gateway", &image.manifest_digest, &example_config(module));
        let file = scratch.path().join(format!("{module}.json"));
        std::fs::write(&file, plugin.to_string()).unwrap();
        files.push(file);
    }
    match validate_wasm_plugins(&files) {
        Ok(output) => assert_eq!(output.matches("valid ").count(), MODULES.len(), "{output}"),
        Err(output) => panic!("a WasmPlugin does not pass Istio's schema:\n{output}"),
    }
    let mut broken: Value = serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    broken["spec"]["phase"] = "BEFORE_EVERYTHING".into();
    let file = scratch.path().join("broken.json");
    std::fs::write(&file, broken.to_string()).unwrap();
    let refused = validate_wasm_plugins(&[file]).expect_err("an unknown phase is refused");
    assert!(refused.contains("phase"), "{refused}");
}
