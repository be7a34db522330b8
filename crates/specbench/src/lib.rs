//! SpecBench in Rust: how well language models follow per-scenario specifications.
//!
//! Data flows one way, one module per stage:
//!
//! ```text
//! pack ──► method ──► backend ──► judge ──► score ──► store
//! (rules,   (raw,      (Model:     (joint or  (safety,   (upstream JSON
//!  items)    vanilla)   retries,    sequential behavioral, layout, journal,
//!                       HTTP)       verdicts)  SAR)       manifest)
//! ```
//!
//! [`run::Runner`] wires the stages per item; [`protocol`] holds the texts every stage shares.
//! Methods and the judge only ever see a [`backend::Model`], never a transport, and the judge
//! sees response text, never which backend or method produced it. The library prints nothing:
//! progress leaves as [`run::Event`]s, and the CLI renders them.

pub mod backend;
pub mod cache;
pub mod config;
pub mod cost;
pub mod env;
pub mod judge;
pub mod method;
pub mod pack;
pub mod parallel;
pub mod protocol;
pub mod redact;
pub mod run;
pub mod score;
pub mod setup;
pub mod store;
pub mod study;

#[cfg(test)]
mod layering {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// The top-level modules the non-test code of the file at `path` names (`crate::x`).
    fn names(path: &Path, module: &str, uses: &mut BTreeSet<String>) {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
        }
    }

    /// Every `.rs` file under `dir`.
    fn files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                files(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }

    /// Each top-level module and the other top-level modules its non-test code names.
    fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for path in all {
            let Ok(relative) = path.strip_prefix(&src) else {
                continue;
            };
            let first = relative
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            let Some(module) = first.map(|f| f.trim_end_matches(".rs").to_string()) else {
                continue;
            };
            if module != "lib" {
                names(&path, &module, graph.entry(module.clone()).or_default());
            }
        }
        graph
    }

    /// A cycle through `from`, as the modules on it.
    fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
        let mut stack = vec![(from.to_string(), vec![from.to_string()])];
        let mut seen = BTreeSet::new();
        while let Some((module, path)) = stack.pop() {
            for next in graph.get(&module).into_iter().flatten() {
                if next == from {
                    return Some([path.clone(), vec![from.to_string()]].concat());
                }
                if seen.insert(next.clone()) {
                    stack.push((next.clone(), [path.clone(), vec![next.clone()]].concat()));
                }
            }
        }
        None
    }

    #[test]
    fn no_module_imports_one_that_imports_it_back() {
        let graph = module_graph();
        assert!(
            graph.contains_key("backend") && graph.contains_key("store"),
            "sources not read: {graph:?}"
        );
        let cycles: Vec<String> = graph
            .keys()
            .filter_map(|module| cycle_from(&graph, module))
            .map(|cycle| cycle.join(" -> "))
            .collect();
        assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
    }
}
