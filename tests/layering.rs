//! The crate's layering, as lib.rs and docs/ARCHITECTURE.md describe it, checked on the source: each top-level
//! module names (`crate::…`) only modules of the layers beneath it, and `agent` and `server` never each other.
//! A use that breaks the order fails here, naming the file and the module it reached for.

use std::path::{Path, PathBuf};

/// The layers from the bottom up. A module may use modules of its own layer's earlier entries and of lower layers.
const LAYERS: &[&[&str]] = &[
    &["tunnel", "rules"],
    &["config", "invite", "certs", "tls"],
    &["error", "metrics", "shutdown"],
    &["expiry", "reload", "admin", "shard"],
    &["agent", "server"],
    &["up", "cli", "fuzzing"],
];

/// Modules that must never use each other, whatever the layers say.
const APART: &[(&str, &str)] = &[("agent", "server"), ("server", "agent")];

fn rank(module: &str) -> Option<(usize, usize)> {
    LAYERS.iter().enumerate().find_map(|(layer, modules)| {
        modules
            .iter()
            .position(|m| *m == module)
            .map(|index| (layer, index))
    })
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`src/agent/keeper.rs` → `agent`).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative
        .components()
        .next()
        .expect("a path")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// Every `crate::NAME` in `text`, outside line comments.
fn crate_uses(text: &str) -> Vec<String> {
    let mut uses = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                uses.push(name);
            }
            rest = after;
        }
    }
    uses
}

#[test]
fn every_module_uses_only_the_layers_beneath_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut broken = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(own) = rank(&module) else {
            broken.push(format!(
                "{}: module `{module}` is not in LAYERS",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("a readable source file");
        for used in crate_uses(&text) {
            if used == module {
                continue;
            }
            let Some(theirs) = rank(&used) else {
                // Items of lib.rs itself (re-exports) are not modules.
                continue;
            };
            let allowed = theirs.0 < own.0 || (theirs.0 == own.0 && theirs.1 < own.1);
            let apart = APART.contains(&(module.as_str(), used.as_str()));
            if !allowed || apart {
                broken.push(format!(
                    "{}: `{module}` uses `crate::{used}`",
                    file.display()
                ));
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn the_check_sees_a_use_that_breaks_the_order() {
    let uses = crate_uses(
        "use crate::server::x; // crate::agent in a comment\nlet y = crate::metrics::z;",
    );
    assert_eq!(uses, ["server", "metrics"]);
    let (tunnel, metrics) = (rank("tunnel").unwrap(), rank("metrics").unwrap());
    assert!(tunnel.0 < metrics.0, "tunnel sits beneath metrics");
}
