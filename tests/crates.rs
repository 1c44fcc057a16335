//! The crate graph: siblings over a small core. A worker links no coordinator, state
//! store or CLI progress bars; the coordinator links no libtorch; the core links neither.

use std::process::Command;

/// The packages `package` depends on (normal and build dependencies), one name each.
fn dependencies(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-e",
            "normal,build",
            "--prefix",
            "none",
        ])
        .args(["-p", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn assert_absent(package: &str, forbidden: &[&str]) {
    let found = dependencies(package);
    assert!(
        found.iter().any(|n| n == package),
        "cargo tree listed nothing for {package}"
    );
    for name in forbidden {
        assert!(
            !found.iter().any(|n| n == name),
            "{package} depends on {name}: {found:?}"
        );
    }
}

#[test]
fn the_worker_stands_on_the_core_not_on_the_coordinator() {
    assert_absent(
        "outloud-worker",
        &["outloud-coordinator", "redb", "indicatif"],
    );
    assert!(
        dependencies("outloud-worker")
            .iter()
            .any(|n| n == "outloud-core")
    );
}

#[test]
fn the_coordinator_links_no_libtorch() {
    assert_absent("outloud-coordinator", &["tch", "torch-sys"]);
}

#[test]
fn the_core_links_neither_side() {
    assert_absent(
        "outloud-core",
        &[
            "outloud-coordinator",
            "outloud-worker",
            "tch",
            "torch-sys",
            "redb",
        ],
    );
}

/// Each top-level module of `crate_dir/src` and the sibling modules its code (not its
/// comments or unit tests) names through `crate::`.
fn module_graph(crate_dir: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(crate_dir)
        .join("src");
    let mut graph = std::collections::BTreeMap::<String, Vec<String>>::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let top = relative.components().next().unwrap().as_os_str();
            let top = top.to_str().unwrap().trim_end_matches(".rs").to_string();
            if ["lib", "main", "bin"].contains(&top.as_str()) || path.ends_with("tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            let names = graph.entry(top.clone()).or_default();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    let rest = &line[i + "crate::".len()..];
                    let rest = rest.trim_start_matches('{');
                    let end = rest
                        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    let name = &rest[..end];
                    if name != top && !name.is_empty() {
                        names.push(name.to_string());
                    }
                    // `use crate::{a, b::c}` names several.
                    if line[i..].starts_with("crate::{") {
                        let group = rest.split('}').next().unwrap_or_default();
                        for item in group.split(',') {
                            let name = item.trim().split("::").next().unwrap_or_default();
                            if name != top && !name.is_empty() {
                                names.push(name.to_string());
                            }
                        }
                    }
                }
            }
        }
    }
    graph
}

/// A loop of modules that import each other, if there is one.
fn import_loop(graph: &std::collections::BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &std::collections::BTreeMap<String, Vec<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if !done.insert(node.to_string()) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = std::collections::BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    for krate in ["core", "coordinator", "worker"] {
        let graph = module_graph(krate);
        assert!(
            graph.contains_key("spec")
                || graph.contains_key("scheduler")
                || graph.contains_key("fit")
        );
        if let Some(cycle) = import_loop(&graph) {
            panic!("{krate}: modules import each other: {}", cycle.join(" -> "));
        }
    }
}
