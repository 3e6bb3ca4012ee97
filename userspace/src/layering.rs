//! Keeps the four layers honest: every `crate::` path in a layer's
//! non-test code names its own layer or one below it (domain <- engine <-
//! adapters <- interfaces), and the modules of the crate import each other
//! without a cycle. Test code may reach anything (a registry test opens a
//! real store), so `mod tests` blocks and `*tests.rs` files are skipped.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Bottom first: a layer may import from itself and the layers before it.
const LAYERS: [&str; 4] = ["domain", "engine", "adapters", "interfaces"];

/// One source file: its module (`engine::registry` for
/// `src/engine/registry/sweeper.rs`) and its non-test text.
struct Source {
    path: PathBuf,
    layer: usize,
    module: String,
    text: String,
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<Source> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    for (layer, name) in LAYERS.iter().enumerate() {
        let mut files = Vec::new();
        rs_files(&src.join(name), &mut files);
        assert!(!files.is_empty(), "no sources under src/{name}");
        for path in files {
            let rel = path.strip_prefix(src.join(name)).unwrap();
            let file = rel.file_stem().unwrap().to_str().unwrap();
            if file.ends_with("tests") || rel.components().any(|c| c.as_os_str() == "tests") {
                continue;
            }
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_str()
                .unwrap();
            let first = first.trim_end_matches(".rs");
            let module = if first == "mod" {
                (*name).to_owned()
            } else {
                format!("{name}::{first}")
            };
            let text = production_part(&fs::read_to_string(&path).unwrap());
            out.push(Source {
                path,
                layer,
                module,
                text,
            });
        }
    }
    out
}

/// The text before the unit tests, without `//` comments.
fn production_part(text: &str) -> String {
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end]
        .lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::` path, cut to its first two segments
/// (`crate::{a::b::C, d::{e, f::G}}` gives `a::b`, `d::e` and `d::f`).
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find("crate::") {
        let start = from + i;
        from = start + "crate::".len();
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue;
        }
        let rest = &text[from..];
        if rest.starts_with('{') {
            flatten("", &rest[..group_end(rest)], &mut out);
        } else {
            out.push(head(rest));
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

/// The length of the `{...}` group `s` starts with, braces included.
fn group_end(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    s.len()
}

/// Expands one use tree under `prefix` into its paths' heads.
fn flatten(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        out.push(head(&format!("{prefix}{tree}")));
        return;
    };
    let prefix = format!("{prefix}{}", &tree[..open]);
    let inner = &tree[open + 1..open + group_end(&tree[open..]) - 1];
    let mut depth = 0;
    let mut item = String::new();
    for c in inner.chars().chain([',']) {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                if !item.trim().is_empty() {
                    flatten(&prefix, &item, out);
                }
                item.clear();
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
}

/// `a::b::{C, D}` -> `a::b`; `a::{b, c}` or `a` -> `a`.
fn head(path: &str) -> String {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let first = ident(path);
    match path[first.len()..].strip_prefix("::") {
        Some(rest) if !rest.starts_with('{') => match ident(rest) {
            second if second.is_empty() || second == "self" => first,
            second => format!("{first}::{second}"),
        },
        _ => first,
    }
}

#[test]
fn every_layer_imports_only_from_itself_and_below() {
    let mut wrong = Vec::new();
    for s in sources() {
        for path in crate_paths(&s.text) {
            let layer = path.split("::").next().unwrap();
            match LAYERS.iter().position(|l| *l == layer) {
                Some(l) if l <= s.layer => {}
                Some(_) => wrong.push(format!(
                    "{}: crate::{path} is in a higher layer",
                    s.path.display()
                )),
                None => wrong.push(format!(
                    "{}: crate::{path} is no layer; name the layer (crate::domain::..., ...)",
                    s.path.display()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports pointing up:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn modules_import_each_other_without_a_cycle() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in sources() {
        let from = edges.entry(s.module.clone()).or_default();
        for path in crate_paths(&s.text) {
            if path != s.module && path.contains("::") {
                from.insert(path);
            }
        }
    }
    // Depth-first search; a node met again while on the stack closes a cycle.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if !done.insert(node.to_owned()) {
            return None;
        }
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, &edges, &mut Vec::new(), &mut done) {
            panic!("modules import each other: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_checker_sees_grouped_and_inline_paths() {
    let text = "use crate::{domain::model::Binding, engine::{datapath::X, host}};\n\
                let x = crate::adapters::store::Store::open(p);\n\
                pub(crate) fn f() {}";
    assert_eq!(
        crate_paths(text),
        [
            "domain::model",
            "engine::datapath",
            "engine::host",
            "adapters::store"
        ]
    );
    assert_eq!(
        head("interfaces::api::sg::CreateSgRequest"),
        "interfaces::api"
    );
    assert_eq!(
        head("engine::sg_book::{self as sg, RuleSpec}"),
        "engine::sg_book"
    );
}
