//! The way in for a new user: a short README that reaches every guide, links that lead
//! somewhere, and example configurations that Envoy accepts with our modules loaded.

use integration_tests::envoy;
use integration_tests::paths;
use integration_tests::scratch::ScratchDir;
use integration_tests::shipped::with_built_modules;
use std::path::{Path, PathBuf};

const README_MAX_LINES: usize = 200;
const GUIDES: [&str; 9] =
    ["metrics", "auth", "ratelimit", "aggregate", "bundle", "internals", "operations", "testing", "benchmark"];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn files_in(dir: &str, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(paths::repo_root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}/: {e}"))
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == extension))
        .collect();
    files.sort();
    files
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped,
/// spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The lines of a markdown text outside its fenced code blocks.
fn prose_lines(markdown: &str) -> Vec<&str> {
    let mut in_code = false;
    markdown
        .lines()
        .filter(|line| {
            if line.starts_with("```") {
                in_code = !in_code;
                return false;
            }
            !in_code
        })
        .collect()
}

fn anchors(markdown: &str) -> Vec<String> {
    prose_lines(markdown)
        .into_iter()
        .filter(|line| line.starts_with('#'))
        .map(|line| anchor(line.trim_start_matches('#')))
        .collect()
}

/// The targets of `[text](target)` links outside code blocks.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose_lines(markdown) {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            targets.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    targets
}

#[test]
fn the_readme_is_short_and_reaches_every_guide() {
    let readme = read(&paths::repo_root().join("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines; keep it to {README_MAX_LINES} and move detail to docs/"
    );
    let targets = link_targets(&readme);
    for guide in GUIDES {
        let link = format!("docs/{guide}.md");
        assert!(targets.contains(&link), "README.md does not link {link}");
        assert!(paths::repo_root().join(&link).is_file(), "{link} is missing");
    }
    assert!(targets.iter().any(|target| target == "examples/"), "README.md does not link examples/");
}

#[test]
fn every_relative_link_in_the_docs_leads_somewhere() {
    let root = paths::repo_root();
    let mut documents = vec![root.join("README.md")];
    documents.extend(files_in("docs", "md"));
    documents.extend(files_in("docs/reference", "md"));
    let mut broken = Vec::new();
    for document in &documents {
        let text = read(document);
        let base = document.parent().unwrap_or(&root);
        for target in link_targets(&text) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let path = if file.is_empty() { document.clone() } else { base.join(file) };
            if !path.exists() {
                broken.push(format!("{}: {target} (no such file)", document.display()));
                continue;
            }
            if !fragment.is_empty() && !anchors(&read(&path)).iter().any(|known| known == fragment) {
                broken.push(format!("{}: {target} (no such heading)", document.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_example_passes_envoy_validate_with_the_built_modules() {
    let examples = files_in("examples", "yaml");
    let names: Vec<String> =
        examples.iter().filter_map(|path| path.file_stem().map(|stem| stem.to_string_lossy().into_owned())).collect();
    assert_eq!(names, ["aggregate", "auth", "gateway", "metrics", "ratelimit"], "one example per module");
    let scratch = ScratchDir::new("examples");
    for example in examples {
        // Envoy's validate mode loads each module and configures it, so a configuration
        // the filter refuses fails here too.
        let rendered = scratch.path().join(example.file_name().unwrap_or_default());
        std::fs::write(&rendered, with_built_modules(&read(&example))).unwrap();
        if let Err(output) = envoy::validate(&rendered) {
            panic!("{} does not validate:\n{output}", example.display());
        }
    }
}

#[test]
fn validate_mode_refuses_a_configuration_the_filter_refuses() {
    let scratch = ScratchDir::new("examples-broken");
    let example = read(&paths::repo_root().join("examples/metrics.yaml"));
    let broken = example.replace(r#"{"consumer": 1000}"#, r#"{"consumer": 0}"#);
    assert_ne!(broken, example);
    let rendered = scratch.path().join("metrics.yaml");
    std::fs::write(&rendered, with_built_modules(&broken)).unwrap();
    let output = envoy::validate(&rendered).expect_err("a cap of 0 is refused");
    assert!(output.contains("max_values.consumer"), "the error names the field:\n{output}");
}

#[test]
fn the_anchor_of_a_heading_is_githubs() {
    assert_eq!(anchor(" Against Envoy's jwt_authn"), "against-envoys-jwt_authn");
    assert_eq!(anchor("The bundle: `gateway.wasm`"), "the-bundle-gatewaywasm");
}
