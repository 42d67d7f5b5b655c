//! The dependency rule of docs/ARCHITECTURE.md, checked on the source: a top-level module uses
//! only the layers to its left (`nix ← upstream ← cache ← fs ← config ← control ← daemon ← cli`)
//! and the shared utilities, which use no layer. A cycle, or an import pointing rightwards, fails
//! here instead of in review.

use std::collections::BTreeSet;
use std::path::Path;

/// Layers, left to right; modules in one group may not use each other.
const LAYERS: &[&[&str]] = &[
    &["nix"],
    &["upstream"],
    &["cache", "index"],
    &["fs"],
    &["config"],
    &["control"],
    &["daemon"],
    &["cli"],
];
/// Usable by any module; they use no layer.
const UTILITIES: &[&str] = &["metrics", "logging", "notify", "sync", "failpoint", "wire"];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|group| group.contains(&module))
}

/// The top-level modules named after `crate::` in `text` (also inside `crate::{a, b::c}`).
fn used_modules(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.trim_start().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
    };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: after `{` and after each `,` at depth 0.
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        used.insert(ident(&group[start..j]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        used.insert(ident(&group[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            used.insert(ident(rest));
        }
    }
    used.retain(|m| !m.is_empty());
    used
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn imports_point_only_leftwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy();
        let module = top.trim_end_matches(".rs").to_owned();
        if matches!(module.as_str(), "lib" | "main") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for used in used_modules(&text) {
            if used == module {
                continue;
            }
            checked += 1;
            let allowed = if UTILITIES.contains(&module.as_str()) {
                UTILITIES.contains(&used.as_str())
            } else if UTILITIES.contains(&used.as_str()) {
                true
            } else {
                match (rank(&module), rank(&used)) {
                    (Some(m), Some(u)) => u < m,
                    _ => false,
                }
            };
            if !allowed {
                wrong.push(format!("{} uses crate::{used}", rel.display()));
            }
        }
    }
    assert!(checked > 50, "the scan found only {checked} imports: is it still reading src/?");
    assert!(wrong.is_empty(), "imports against the layering:\n{}", wrong.join("\n"));
}

#[test]
fn the_scanner_sees_grouped_and_nested_imports() {
    let text = "use crate::{cache::{A, B}, fs, nix::x};\nlet y = crate::upstream::z();";
    let got: Vec<_> = used_modules(text).into_iter().collect();
    assert_eq!(got, ["cache", "fs", "nix", "upstream"]);
}
