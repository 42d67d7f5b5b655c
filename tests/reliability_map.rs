//! docs/RELIABILITY.md is the map from reliability case ID to test: every row has a known status
//! and what that status needs, every test it names exists (`fn name` in the file it names, or a
//! `name:` case of a test-generating macro), every case ID cited in a code comment under src/ or
//! tests/ has a row, and the totals it states are its rows.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const MAP: &str = "docs/RELIABILITY.md";
const STATUSES: &[&str] = &["tested", "partly tested", "not tested", "does not apply"];

/// One row of a case table.
struct Row {
    id: String,
    status: String,
    /// `(file, function)` for each `file::function` of the tests column.
    tests: Vec<(String, String)>,
    note: String,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The ID at the start of `s` if it is a whole case ID: 2 to 4 capitals, `-`, digits.
fn case_id_at(s: &str) -> Option<&str> {
    let letters = s.bytes().take_while(u8::is_ascii_uppercase).count();
    if !(2..=4).contains(&letters) || s.as_bytes().get(letters) != Some(&b'-') {
        return None;
    }
    let digits = s[letters + 1..].bytes().take_while(u8::is_ascii_digit).count();
    let end = letters + 1 + digits;
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    (digits > 0 && !s.as_bytes().get(end).is_some_and(|&b| word(b))).then(|| &s[..end])
}

/// Every case ID in `text` that starts a word.
fn case_ids(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    (0..text.len())
        .filter(|&i| text.is_char_boundary(i))
        .filter(|&i| i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        .filter_map(|i| case_id_at(&text[i..]))
        .collect()
}

/// The `file::function` names between backquotes in `cell`.
fn test_refs(cell: &str) -> Vec<(String, String)> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(|r| {
            let (file, name) = r.split_once("::").unwrap_or_else(|| panic!("not file::name: {r}"));
            (file.to_owned(), name.to_owned())
        })
        .collect()
}

fn rows() -> Vec<Row> {
    let text = fs::read_to_string(root().join(MAP)).unwrap();
    let mut rows = Vec::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | ID | Case | Status | Tests | Note |
        if cells.len() != 7 || case_id_at(cells[1]) != Some(cells[1]) {
            continue;
        }
        rows.push(Row {
            id: cells[1].to_owned(),
            status: cells[3].to_owned(),
            tests: test_refs(cells[4]),
            note: cells[5].to_owned(),
        });
    }
    rows
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// True if `source` defines test `name`: `fn name`, or a `name: …` case of a test-generating
/// macro such as `reject_cases!` in src/nix/nar/tests.rs.
fn defines(source: &str, name: &str) -> bool {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let fn_named = source.match_indices(name).any(|(i, _)| {
        let after = source.as_bytes().get(i + name.len()).copied();
        source[..i].ends_with("fn ") && !after.is_some_and(is_word)
    });
    fn_named
        || source
            .lines()
            .any(|l| l.trim_start().strip_prefix(name).is_some_and(|r| r.starts_with(':')))
}

/// The comment part of a line of Rust: from the first `//` that is not part of a URL (`://`).
fn comment_of(line: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(i) = line[from..].find("//") {
        let at = from + i;
        if at == 0 || line.as_bytes()[at - 1] != b':' {
            return Some(&line[at..]);
        }
        from = at + 2;
    }
    None
}

#[test]
fn every_row_has_a_known_status_and_what_it_needs() {
    let rows = rows();
    assert!(rows.len() >= 90, "only {} case rows in {MAP}", rows.len());
    let mut seen = BTreeSet::new();
    for row in &rows {
        assert!(seen.insert(&row.id), "{}: two rows", row.id);
        assert!(STATUSES.contains(&row.status.as_str()), "{}: status {:?}", row.id, row.status);
        match row.status.as_str() {
            "tested" | "partly tested" => {
                assert!(!row.tests.is_empty(), "{}: {} but names no test", row.id, row.status)
            }
            _ => assert!(!row.note.is_empty(), "{}: {} but says nothing", row.id, row.status),
        }
        if row.status == "partly tested" {
            assert!(!row.note.is_empty(), "{}: partly tested but says not what is missing", row.id);
        }
    }
}

#[test]
fn every_test_the_map_names_exists() {
    let mut missing = Vec::new();
    for row in rows() {
        for (file, name) in &row.tests {
            let in_tree = file.starts_with("src/") || file.starts_with("tests/");
            let source = fs::read_to_string(root().join(file)).unwrap_or_default();
            if !in_tree || !defines(&source, name) {
                missing.push(format!("{}: {file}::{name}", row.id));
            }
        }
    }
    assert!(missing.is_empty(), "{MAP} names tests that do not exist:\n{}", missing.join("\n"));
}

#[test]
fn every_case_id_cited_in_a_comment_is_in_the_map() {
    let rows = rows();
    let ids: BTreeSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    // Only the map's prefixes are case IDs: `UTF-8` or `SHA-256` in a comment are not.
    let prefixes: BTreeSet<&str> = ids.iter().map(|id| id.split('-').next().unwrap()).collect();
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    rust_files(&root().join("tests"), &mut files);
    let mut unknown = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let Some(comment) = comment_of(line) else { continue };
            for id in case_ids(comment) {
                if prefixes.contains(id.split('-').next().unwrap()) && !ids.contains(id) {
                    let rel = file.strip_prefix(root()).unwrap().display().to_string();
                    unknown.push(format!("{rel}:{}: {id}", n + 1));
                }
            }
        }
    }
    assert!(unknown.is_empty(), "case IDs with no row in {MAP}:\n{}", unknown.join("\n"));
}

#[test]
fn the_totals_are_the_rows() {
    let text = fs::read_to_string(root().join(MAP)).unwrap();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let rows = rows();
    for row in &rows {
        *counts.entry(STATUSES.iter().find(|s| **s == row.status).unwrap()).or_default() += 1;
    }
    let get = |s: &str| counts.get(s).copied().unwrap_or(0);
    let want = format!(
        "**Totals ({} cases): {} tested, {} partly tested, {} not tested, {} do not apply.**",
        rows.len(),
        get("tested"),
        get("partly tested"),
        get("not tested"),
        get("does not apply"),
    );
    assert!(text.contains(&want), "{MAP} should say {want}");
}

#[test]
fn case_ids_are_whole_words() {
    assert_eq!(case_ids("see NI-3, SG-10 and (DSK-1)."), ["NI-3", "SG-10", "DSK-1"]);
    assert_eq!(case_ids("xNI-3 NI-3a NI- ni-3 ABCDE-1 UTF-8"), ["UTF-8"]);
    assert_eq!(comment_of("let u = \"http://x\"; // NI-11"), Some("// NI-11"));
    assert!(defines("fn foo() {}\nfn foo_bar() {}", "foo"));
    assert!(!defines("fn foo_bar() {}", "foo"));
    assert!(defines("    wrong_magic: stream(&[]) => E,", "wrong_magic"));
}
