//! The library's modules form layers with one direction: a module may use only the
//! modules below it. The order is the README's code map ("Layers, lowest first"), so
//! the document and the code cannot drift apart; a `crate::` path that points up, or a
//! top-level module missing from the list, fails here.

use std::collections::BTreeMap;
use std::path::Path;

/// The layer order from the README's code map.
fn layers() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README");
    let line = readme
        .lines()
        .find(|l| l.starts_with("Layers, lowest first:"))
        .expect("the README's code map names the layers");
    line.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// (file, top-level module) of every library source file (the binary's `cli` is above
/// everything and may use anything).
fn library_files() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(&src)
                .expect("under src")
                .to_string_lossy()
                .into_owned();
            if !rel.ends_with(".rs")
                || rel == "main.rs"
                || rel == "lib.rs"
                || rel.starts_with("cli/")
            {
                continue;
            }
            let top = rel
                .split('/')
                .next()
                .unwrap_or_default()
                .trim_end_matches(".rs")
                .to_string();
            out.push((rel, top));
        }
    }
    out.sort();
    out
}

/// Top-level modules a source text names as `crate::<module>`, comments left out.
fn uses(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && !found.contains(&name) {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let order = layers();
    let rank: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (file, top) in library_files() {
        let Some(&own) = rank.get(top.as_str()) else {
            wrong.push(format!(
                "{file}: module `{top}` is not in the README's layer list"
            ));
            continue;
        };
        let text = std::fs::read_to_string(src.join(&file)).expect("read");
        for used in uses(&text) {
            if used == top {
                continue;
            }
            match rank.get(used.as_str()) {
                Some(&other) if other < own => {}
                Some(_) => wrong.push(format!("{file}: `{top}` uses `{used}`, which is above it")),
                None => wrong.push(format!(
                    "{file}: uses `crate::{used}`, not in the layer list"
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn an_upward_use_is_caught() {
    // The check itself must fail on what it is there to catch.
    assert_eq!(
        uses("use crate::writer::WriterHandle; // crate::api in a comment"),
        ["writer"]
    );
    assert_eq!(uses("let x = crate::db::queries::max_event_id(c);"), ["db"]);
    let order = layers();
    let pos = |m: &str| order.iter().position(|o| o == m).expect(m);
    assert!(
        pos("db") < pos("writer"),
        "the writer is above the database layer"
    );
    assert!(pos("config") < pos("db"));
}
