//! The crate's top-level modules import each other without cycles (issue 11: a leaf domain
//! model, layers that depend one way).
//!
//! Walks the library's module tree from `src/lib.rs` as rustc does (`mod x;` → `x.rs` or
//! `x/mod.rs`, `#[path]`), parses every file with `syn`, and records an edge `a → b` whenever
//! code in top-level module `a` names `crate::b…` or reaches `b` through `super::` — in `use`
//! trees, paths, and the tokens of macro calls. Items under `#[cfg(test)]` are left out (as
//! `cargo modules dependencies` does without `--cfg-test`): a test may use any module. Doc
//! links are not imports and are ignored. On failure the test prints every cycle with the
//! files that create each of its edges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::{self, Visit};
use syn::{Attribute, ImplItem, Item, UseTree};

/// Top-level module → modules it imports → files where it does.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut walk = Walk {
        src: src.clone(),
        graph: Graph::new(),
        tops: BTreeSet::new(),
    };
    walk.file(&src.join("lib.rs"), &[], true);
    let graph = walk.edges_between_tops();
    assert!(
        graph.len() > 5,
        "the walk found too few modules: {:?}",
        graph.keys()
    );
    let cycles = cycles(&graph);
    if !cycles.is_empty() {
        let mut report = String::new();
        for cycle in &cycles {
            report.push_str(&format!("cycle: {}\n", cycle.join(" → ")));
            for pair in cycle.windows(2) {
                let files = &graph[&pair[0]][&pair[1]];
                let files: Vec<&str> = files.iter().map(String::as_str).collect();
                report.push_str(&format!(
                    "  {} → {}: {}\n",
                    pair[0],
                    pair[1],
                    files.join(", ")
                ));
            }
        }
        panic!("import cycles between top-level modules of src/:\n{report}");
    }
}

/// The module tree walk, collecting edges.
struct Walk {
    src: PathBuf,
    graph: Graph,
    tops: BTreeSet<String>,
}

impl Walk {
    /// Parses the file of module `module` (path from the crate root); `owns_dir` when it is a
    /// `lib.rs`/`mod.rs`, whose children sit beside it.
    fn file(&mut self, path: &Path, module: &[String], owns_dir: bool) {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let file = syn::parse_file(&text)
            .unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()));
        let dir = match owns_dir {
            true => path.parent().map(Path::to_path_buf).unwrap_or_default(),
            false => path.with_extension(""),
        };
        let shown = path
            .strip_prefix(self.src.parent().unwrap_or(&self.src))
            .unwrap_or(path)
            .display()
            .to_string();
        self.items(&file.items, module, &dir, path, &shown);
    }

    fn items(&mut self, items: &[Item], module: &[String], dir: &Path, file: &Path, shown: &str) {
        for item in items {
            if is_test_only(item_attrs(item)) {
                continue;
            }
            let Item::Mod(m) = item else {
                let mut refs = Refs {
                    module,
                    found: Vec::new(),
                };
                refs.visit_item(item);
                for target in refs.found {
                    self.edge(module, target, shown);
                }
                continue;
            };
            let name = m.ident.to_string();
            let child: Vec<String> = module.iter().cloned().chain([name.clone()]).collect();
            if module.is_empty() {
                self.tops.insert(name.clone());
            }
            match (&m.content, path_attr(&m.attrs)) {
                (Some((_, inner)), _) => {
                    self.items(inner, &child, &dir.join(&name), file, shown);
                }
                (None, Some(rel)) => {
                    let base = file.parent().unwrap_or(dir);
                    self.file(&base.join(rel), &child, false);
                }
                (None, None) => {
                    let flat = dir.join(format!("{name}.rs"));
                    match flat.exists() {
                        true => self.file(&flat, &child, false),
                        false => self.file(&dir.join(&name).join("mod.rs"), &child, true),
                    }
                }
            }
        }
    }

    fn edge(&mut self, module: &[String], target: String, shown: &str) {
        let Some(from) = module.first() else { return };
        if *from != target {
            self.graph
                .entry(from.clone())
                .or_default()
                .entry(target)
                .or_default()
                .insert(shown.to_owned());
        }
    }

    /// The edges whose target is a top-level module (not a root item or an external crate).
    fn edges_between_tops(&self) -> Graph {
        let mut graph: Graph = self
            .tops
            .iter()
            .map(|t| (t.clone(), BTreeMap::new()))
            .collect();
        for (from, targets) in &self.graph {
            for (to, files) in targets {
                if self.tops.contains(to) {
                    graph
                        .entry(from.clone())
                        .or_default()
                        .insert(to.clone(), files.clone());
                }
            }
        }
        graph
    }
}

/// Collects the top-level modules one item refers to.
struct Refs<'m> {
    module: &'m [String],
    found: Vec<String>,
}

impl Refs<'_> {
    /// Resolves a path's leading segments (`crate`, `super`, `self`) to a top-level module;
    /// other paths (external crates, local names) are not edges.
    fn resolve<'a>(&mut self, segments: impl Iterator<Item = &'a str>) {
        let segments: Vec<&str> = segments.collect();
        let mut here: Vec<&str> = self.module.iter().map(String::as_str).collect();
        let mut next = 1;
        match segments.first() {
            Some(&"crate") => here.clear(),
            Some(&"self") => {}
            Some(&"super") => {
                next = 0;
                while segments.get(next) == Some(&"super") {
                    here.pop();
                    next += 1;
                }
            }
            _ => return,
        }
        if let Some(top) = here.first().or(segments.get(next)) {
            self.found.push((*top).to_owned());
        }
    }

    fn use_tree(&mut self, tree: &UseTree, prefix: &mut Vec<String>) {
        match tree {
            UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(&p.tree, prefix);
                prefix.pop();
            }
            UseTree::Group(g) => {
                for item in &g.items {
                    self.use_tree(item, prefix);
                }
            }
            UseTree::Name(n) => self.use_path(prefix, &n.ident.to_string()),
            UseTree::Rename(r) => self.use_path(prefix, &r.ident.to_string()),
            UseTree::Glob(_) => self.use_path(prefix, "*"),
        }
    }

    fn use_path(&mut self, prefix: &[String], last: &str) {
        let path: Vec<&str> = prefix.iter().map(String::as_str).chain([last]).collect();
        self.resolve(path.into_iter());
    }

    /// `crate :: x` and `super :: x` inside macro arguments (`counter!(crate::metrics::…)`).
    fn tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        for (i, tree) in trees.iter().enumerate() {
            match tree {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id) if id == "crate" || id == "super" => {
                    let mut path = vec![id.to_string()];
                    let mut rest = trees[i + 1..].iter();
                    while let (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) =
                        (rest.next(), rest.next())
                    {
                        match (a.as_char(), b.as_char(), rest.next()) {
                            (':', ':', Some(TokenTree::Ident(next))) => path.push(next.to_string()),
                            _ => break,
                        }
                    }
                    if path.len() > 1 {
                        self.resolve(path.iter().map(String::as_str));
                    }
                }
                _ => {}
            }
        }
    }
}

impl<'ast> Visit<'ast> for Refs<'_> {
    fn visit_item(&mut self, item: &'ast Item) {
        if !is_test_only(item_attrs(item)) {
            visit::visit_item(self, item);
        }
    }

    fn visit_impl_item(&mut self, item: &'ast ImplItem) {
        let attrs = match item {
            ImplItem::Const(c) => &c.attrs,
            ImplItem::Fn(f) => &f.attrs,
            ImplItem::Type(t) => &t.attrs,
            ImplItem::Macro(m) => &m.attrs,
            _ => return visit::visit_impl_item(self, item),
        };
        if !is_test_only(attrs) {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&item.tree, &mut Vec::new());
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.resolve(segments.iter().map(String::as_str));
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
        visit::visit_macro(self, mac);
    }

    fn visit_attribute(&mut self, _: &'ast Attribute) {
        // Doc comments and other attributes are not imports.
    }
}

fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// `#[cfg(test)]` (also inside `all(…)`), but not `not(test)`.
fn is_test_only(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && {
            let text = a
                .meta
                .require_list()
                .map(|l| l.tokens.to_string())
                .unwrap_or_default();
            let text = text.replace(' ', "");
            (text == "test" || text.contains("(test") || text.contains(",test"))
                && !text.contains("not(test")
        }
    })
}

/// The value of `#[path = "…"]`, if any.
fn path_attr(attrs: &[Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| match &a.meta {
        syn::Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

/// Every elementary cycle's representative: for each strongly connected component with more
/// than one module, one shortest cycle through its first module (enough to name the problem).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for start in graph.keys() {
        if seen.contains(start) {
            continue;
        }
        if let Some(cycle) = shortest_cycle(graph, start) {
            seen.extend(cycle.iter().cloned());
            out.push(cycle);
        }
    }
    out
}

/// Breadth-first search from `start` back to itself.
fn shortest_cycle(graph: &Graph, start: &str) -> Option<Vec<String>> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for next in graph.get(node).into_iter().flat_map(|t| t.keys()) {
            if next == start {
                let mut cycle = vec![start.to_owned(), node.to_owned()];
                let mut at = node;
                while at != start {
                    at = parent[at];
                    cycle.push(at.to_owned());
                }
                cycle.reverse();
                return Some(cycle);
            }
            if next != start && !parent.contains_key(next.as_str()) {
                parent.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    None
}

#[test]
fn the_checker_sees_a_cycle_and_reports_it() {
    let edge = |to: &str| BTreeMap::from([(to.to_owned(), BTreeSet::from(["f.rs".to_owned()]))]);
    let mut graph: Graph = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(from, to)| (from.to_owned(), edge(to)))
        .collect();
    graph.insert("d".into(), edge("a"));
    assert_eq!(cycles(&graph), [["a", "b", "c", "a"]]);
    assert!(cycles(&Graph::from([("x".to_owned(), edge("y"))])).is_empty());
}
