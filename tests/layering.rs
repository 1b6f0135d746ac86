//! The relay's layering, checked on its source: each top-level module of `src/` imports
//! only the modules below it, so there are no cycles and a newcomer knows which layer owns
//! what. `unsafe` is denied crate-wide and allowed only in `ring`.
//!
//! Layers, bottom up:
//! - leaves: `wire` (pure protocol), `ring` (io_uring), `config`, `error`, `metrics`,
//!   `oplog`, `health`, `keys`, `subscribers` — they import only leaves;
//! - `channel` — the leaves;
//! - `http`, `control` — `channel` and the leaves (never each other, never `serve`);
//! - `serve` (dispatch, process) — everything below it; `cli` on top.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const LEAVES: &[&str] = &[
    "wire",
    "ring",
    "config",
    "error",
    "metrics",
    "oplog",
    "health",
    "keys",
    "subscribers",
];

/// What each top-level module may import besides itself.
fn allowed(module: &str) -> BTreeSet<&'static str> {
    let mut set: BTreeSet<&'static str> = LEAVES.iter().copied().collect();
    match module {
        // Leaves import leaves only, and `wire` nothing at all (it is pure).
        "wire" => set.clear(),
        m if LEAVES.contains(&m) => {}
        "channel" => {}
        "http" | "control" => {
            set.insert("channel");
        }
        "serve" => {
            set.extend(["channel", "http", "control"]);
        }
        "cli" => {
            set.extend(["channel", "http", "control", "serve", "mint_ref"]);
        }
        other => panic!("src/{other}: a new top-level module; give it a layer in this test"),
    }
    set
}

/// The crate modules a source text refers to: `crate::name` and `use crate::{a, b::c}`.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            for item in split_top_level(&group[..end]) {
                if let Some(name) = leading_ident(item.trim()) {
                    refs.insert(name);
                }
            }
        } else if let Some(name) = leading_ident(rest) {
            refs.insert(name);
        }
    }
    refs
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

fn split_top_level(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn leading_ident(s: &str) -> Option<String> {
    let id: String = s
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!id.is_empty()).then_some(id)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file of `src/` belongs to (`None` for the crate roots).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).expect("under src");
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.as_str() {
        "lib.rs" | "main.rs" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

#[test]
fn every_module_imports_only_layers_below_it() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut violations = Vec::new();
    for path in &files {
        let Some(module) = module_of(path) else {
            continue;
        };
        let text = std::fs::read_to_string(path).expect("read source");
        if text.contains("super::super::") {
            violations.push(format!(
                "{}: reaches the crate root through super::super (use crate::)",
                path.display()
            ));
        }
        let ok = allowed(&module);
        for r in crate_refs(&text) {
            if r != module && !ok.contains(r.as_str()) {
                violations.push(format!("{}: imports crate::{r}", path.display()));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering broken:\n{}",
        violations.join("\n")
    );
}

#[test]
fn unsafe_is_denied_outside_ring() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    assert!(
        lib.contains("#![deny(unsafe_code)]"),
        "lib.rs must deny unsafe_code"
    );
    let main = std::fs::read_to_string(src().join("main.rs")).expect("main.rs");
    assert!(
        main.contains("#![deny(unsafe_code)]"),
        "main.rs must deny unsafe_code"
    );
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read source");
        let in_ring = module_of(path).as_deref() == Some("ring");
        let allows = text.matches("allow(unsafe_code)").count();
        if path.ends_with("lib.rs") {
            assert_eq!(allows, 1, "lib.rs: allow(unsafe_code) only on `mod ring`");
            assert!(lib.contains("#[allow(unsafe_code)]\npub mod ring;"));
        } else {
            assert_eq!(allows, 0, "{}: allows unsafe_code", path.display());
        }
        if !in_ring {
            assert!(
                !text.contains("unsafe {") && !text.contains("unsafe impl"),
                "{}: unsafe outside ring/",
                path.display()
            );
        }
    }
}

#[test]
fn the_import_scanner_sees_plain_and_grouped_paths() {
    let text = "use crate::wire::frame;\nuse crate::{channel::Shard, http::{reader, writer}};\n\
                fn f() { crate::serve::start(); }";
    let refs: Vec<_> = crate_refs(text).into_iter().collect();
    assert_eq!(refs, ["channel", "http", "serve", "wire"]);
    assert!(!allowed("channel").contains("http"));
    assert!(allowed("serve").contains("http"));
    assert!(!allowed("http").contains("control"));
}
