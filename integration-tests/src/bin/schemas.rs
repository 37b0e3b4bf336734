//! Writes `schemas/<module>.schema.json` from the configuration types (see
//! `integration_tests::schemas`).

use integration_tests::schemas::{committed_path, generated, reference, reference_path, render, MODULES};

fn main() {
    for module in MODULES {
        let Some(schema) = generated(module) else { continue };
        let path = committed_path(module);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        std::fs::write(&path, render(&schema)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        println!("wrote {}", path.display());
        let docs = reference_path(module);
        if let Some(dir) = docs.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        std::fs::write(&docs, reference(module, &schema)).unwrap_or_else(|e| panic!("{}: {e}", docs.display()));
        println!("wrote {}", docs.display());
    }
}
