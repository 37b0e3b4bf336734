//! Writes what Kubernetes and Istio users deploy (see `integration_tests::deploy`):
//! `deploy/kubernetes/config.yaml`, and under `target/deploy/` an OCI image layout per module
//! (`oci/<module>/`, tagged with the crate version) and its Istio `WasmPlugin`
//! (`istio/<module>.yaml`, pulled by digest from `WASM_REGISTRY`, default
//! `registry.example.com/envoy-gateway-filters`). Run `make wasm` first.

use integration_tests::deploy::{example_config, kubernetes_config, output_dir, wasm_image, wasm_plugin, write_layout};
use integration_tests::paths;
use integration_tests::schemas::MODULES;

fn main() {
    let config = paths::repo_root().join("deploy/kubernetes/config.yaml");
    std::fs::write(&config, kubernetes_config()).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    println!("wrote {}", config.display());
    let registry =
        std::env::var("WASM_REGISTRY").unwrap_or_else(|_| "registry.example.com/envoy-gateway-filters".into());
    let out = output_dir();
    for module in MODULES {
        let path = paths::wasm_module(module);
        let wasm = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run `make wasm` first)", path.display()));
        let image = wasm_image(module, &wasm);
        let layout = out.join("oci").join(module);
        write_layout(&image, env!("CARGO_PKG_VERSION"), &layout)
            .unwrap_or_else(|e| panic!("{}: {e}", layout.display()));
        let plugin = wasm_plugin(module, &registry, &image.manifest_digest, &example_config(module));
        let manifest = out.join("istio").join(format!("{module}.yaml"));
        std::fs::create_dir_all(out.join("istio")).unwrap_or_else(|e| panic!("{e}"));
        let yaml = serde_norway::to_string(&plugin).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&manifest, yaml).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        println!("{module}: {} and {} ({})", layout.display(), manifest.display(), image.manifest_digest);
    }
}
