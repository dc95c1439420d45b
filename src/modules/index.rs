//! The module indices depmod writes into `<modulesDir>/<release>`: pure parsers for
//! `modules.dep`, `modules.alias`, `modules.builtin`, `modules.builtin.modinfo` and
//! `modules.softdep`, and [`ModulesIndex`], which resolves names and aliases to files and
//! computes what to load in which order.
//!
//! Names follow kmod: a module's name is its file name up to the first `.`, and `-` equals `_`
//! in names and (outside `[...]`) in aliases.

use super::glob;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Largest index file read (the real `modules.alias` is about 1.4 MB).
pub const MAX_FILE_BYTES: u64 = 32 << 20;
/// Longest line accepted (real `modules.dep` lines stay under 2 KB).
pub const MAX_LINE_BYTES: usize = 64 << 10;
/// Most lines/entries per file.
pub const MAX_ENTRIES: usize = 1 << 20;
/// Most dependencies of one module, and most words of one softdep line.
pub const MAX_DEPS: usize = 4096;

/// A malformed line, by 1-based line number (entry number for `modules.builtin.modinfo`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

fn perr(line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    // The causes are in the messages and not `source`s, which `{:#}` would print again.
    #[error("reading {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {error}", path.display())]
    Parse { path: PathBuf, error: ParseError },
    #[error(
        "module {name} not found in {} (not in modules.dep, modules.alias or modules.builtin)",
        dir.display()
    )]
    NotFound { name: String, dir: PathBuf },
    #[error("module {module} depends on {dependency}, which is not in {}", dir.display())]
    MissingDependency {
        module: String,
        dependency: String,
        dir: PathBuf,
    },
    #[error("dependency cycle in {}: {}", dir.display(), cycle.join(" -> "))]
    Cycle { cycle: Vec<String>, dir: PathBuf },
}

/// Canonical module name: `-` becomes `_`.
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

/// Canonical alias (kmod's `alias_normalize`): `-` becomes `_` except inside `[...]`.
pub fn normalize_alias(alias: &str) -> String {
    let mut out = String::with_capacity(alias.len());
    let mut in_class = false;
    for c in alias.chars() {
        match c {
            '[' if !in_class => {
                in_class = true;
                out.push(c);
            }
            ']' if in_class => {
                in_class = false;
                out.push(c);
            }
            '-' if !in_class => out.push('_'),
            _ => out.push(c),
        }
    }
    out
}

/// The module name of a file path: the file name up to its first `.`, normalized.
pub fn name_from_path(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split('.').next().unwrap_or(file);
    normalize_name(stem)
}

/// Yields (1-based line number, line) with limits on count and length; skips blank and `#` lines.
fn lines(text: &str) -> impl Iterator<Item = Result<(usize, &str), ParseError>> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let n = i + 1;
        if n > MAX_ENTRIES {
            return Some(Err(perr(n, format!("more than {MAX_ENTRIES} lines"))));
        }
        if line.len() > MAX_LINE_BYTES {
            return Some(Err(perr(
                n,
                format!(
                    "line of {} bytes is longer than {MAX_LINE_BYTES}",
                    line.len()
                ),
            )));
        }
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            None
        } else {
            Some(Ok((n, trimmed)))
        }
    })
}

/// Stops at the first error (the `lines` iterator keeps going past the line limit).
fn collect<T>(
    text: &str,
    mut each: impl FnMut(usize, &str) -> Result<Option<T>, ParseError>,
) -> Result<Vec<T>, ParseError> {
    let mut out = Vec::new();
    for item in lines(text) {
        let (n, line) = item?;
        if let Some(v) = each(n, line)? {
            out.push(v);
        }
    }
    Ok(out)
}

/// One `modules.dep` line: `kernel/fs/overlayfs/overlay.ko.xz: dep.ko.xz ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepLine {
    /// Relative to the modules directory, as written.
    pub path: String,
    /// All dependencies (depmod lists the transitive closure), as paths.
    pub deps: Vec<String>,
}

pub fn parse_dep(text: &str) -> Result<Vec<DepLine>, ParseError> {
    collect(text, |n, line| {
        let (path, deps) = line
            .split_once(':')
            .ok_or_else(|| perr(n, "expected `path: dependencies`"))?;
        let path = path.trim();
        if path.is_empty() || path.contains(char::is_whitespace) {
            return Err(perr(n, format!("bad module path {path:?}")));
        }
        if name_from_path(path).is_empty() {
            return Err(perr(n, format!("no module name in {path:?}")));
        }
        let deps: Vec<String> = deps.split_whitespace().map(str::to_string).collect();
        if deps.len() > MAX_DEPS {
            return Err(perr(n, format!("more than {MAX_DEPS} dependencies")));
        }
        Ok(Some(DepLine {
            path: path.to_string(),
            deps,
        }))
    })
}

/// One `modules.alias` line: `alias fs-squashfs squashfs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasLine {
    /// Normalized ([`normalize_alias`]); may be a glob.
    pub pattern: String,
    /// Normalized module name.
    pub module: String,
}

pub fn parse_alias(text: &str) -> Result<Vec<AliasLine>, ParseError> {
    collect(text, |n, line| {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("alias"), Some(pattern), Some(module), None) => Ok(Some(AliasLine {
                pattern: normalize_alias(pattern),
                module: normalize_name(module),
            })),
            _ => Err(perr(n, "expected `alias PATTERN MODULE`")),
        }
    })
}

/// `modules.builtin`: one path per line (`kernel/fs/ext4/ext4.ko`); returns normalized names.
pub fn parse_builtin(text: &str) -> Result<Vec<String>, ParseError> {
    collect(text, |n, line| {
        if line.contains(char::is_whitespace) {
            return Err(perr(n, format!("bad module path {line:?}")));
        }
        let name = name_from_path(line);
        if name.is_empty() {
            return Err(perr(n, format!("no module name in {line:?}")));
        }
        Ok(Some(name))
    })
}

/// One `modules.builtin.modinfo` entry: `name.key=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModinfoEntry {
    /// Normalized module name.
    pub module: String,
    pub key: String,
    pub value: String,
}

/// `modules.builtin.modinfo`: NUL-separated `name.key=value` entries (values may hold newlines).
/// Errors carry the 1-based entry number.
pub fn parse_builtin_modinfo(data: &[u8]) -> Result<Vec<ModinfoEntry>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in data.split(|&b| b == 0).enumerate() {
        let n = i + 1;
        if raw.is_empty() {
            continue;
        }
        if n > MAX_ENTRIES {
            return Err(perr(n, format!("more than {MAX_ENTRIES} entries")));
        }
        if raw.len() > MAX_LINE_BYTES {
            return Err(perr(n, format!("entry of {} bytes is too long", raw.len())));
        }
        let entry = String::from_utf8_lossy(raw);
        let (name_key, value) = entry
            .split_once('=')
            .ok_or_else(|| perr(n, format!("expected `name.key=value` in {entry:?}")))?;
        let (module, key) = name_key
            .split_once('.')
            .ok_or_else(|| perr(n, format!("expected `name.key=value` in {entry:?}")))?;
        if module.is_empty() || key.is_empty() || module.contains(char::is_whitespace) {
            return Err(perr(n, format!("expected `name.key=value` in {entry:?}")));
        }
        out.push(ModinfoEntry {
            module: normalize_name(module),
            key: key.to_string(),
            value: value.to_string(),
        });
    }
    Ok(out)
}

/// One `modules.softdep` line: `softdep MODULE pre: A B post: C`. Words before any
/// `pre:`/`post:` are ignored, as kmod does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SoftDep {
    pub module: String,
    /// Names or aliases to load before the module (normalized as aliases).
    pub pre: Vec<String>,
    /// Names or aliases to load after it.
    pub post: Vec<String>,
}

pub fn parse_softdep(text: &str) -> Result<Vec<SoftDep>, ParseError> {
    collect(text, |n, line| {
        let mut words = line.split_whitespace();
        if words.next() != Some("softdep") {
            return Err(perr(n, "expected `softdep MODULE pre: ... post: ...`"));
        }
        let module = match words.next() {
            Some(m) if !m.ends_with(':') => normalize_name(m),
            _ => return Err(perr(n, "softdep without a module name")),
        };
        let mut dep = SoftDep {
            module,
            ..SoftDep::default()
        };
        #[derive(PartialEq)]
        enum Mode {
            None,
            Pre,
            Post,
        }
        let mut mode = Mode::None;
        for (count, word) in words.enumerate() {
            if count >= MAX_DEPS {
                return Err(perr(n, format!("more than {MAX_DEPS} words")));
            }
            match word {
                "pre:" => mode = Mode::Pre,
                "post:" => mode = Mode::Post,
                w => match mode {
                    Mode::Pre => dep.pre.push(normalize_alias(w)),
                    Mode::Post => dep.post.push(normalize_alias(w)),
                    Mode::None => {}
                },
            }
        }
        Ok(Some(dep))
    })
}

/// What a name or alias stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Loadable modules, by name: one for a module name; an alias may match several.
    Modules(Vec<String>),
    /// Built into the kernel: nothing to load.
    Builtin(String),
}

/// A module to load, as [`ModulesIndex::closure`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleEntry {
    pub name: String,
    /// Relative to the modules directory, as in `modules.dep`.
    pub path: PathBuf,
    /// Modules that must be loaded first: those `modules.dep` lists plus the module's softdep
    /// `pre:` modules (builtins and softdeps that resolve to nothing are left out).
    pub deps: Vec<String>,
}

#[derive(Debug, Clone)]
struct Module {
    path: String,
    deps: Vec<String>,
}

#[derive(Debug, Clone)]
struct Alias {
    pattern: String,
    module: String,
}

/// A set of alias patterns: exact ones hashed, globs scanned. Matches come back in file order.
#[derive(Debug, Clone, Default)]
struct Aliases {
    all: Vec<Alias>,
    exact: HashMap<String, Vec<usize>>,
    globs: Vec<usize>,
}

impl Aliases {
    fn push(&mut self, pattern: String, module: String) {
        let i = self.all.len();
        if glob::is_glob(&pattern) {
            self.globs.push(i);
        } else {
            self.exact.entry(pattern.clone()).or_default().push(i);
        }
        self.all.push(Alias { pattern, module });
    }

    fn lookup(&self, alias: &str) -> Vec<String> {
        let mut hits: Vec<usize> = self.exact.get(alias).cloned().unwrap_or_default();
        hits.extend(
            self.globs
                .iter()
                .copied()
                .filter(|&i| glob::matches(&self.all[i].pattern, alias)),
        );
        hits.sort_unstable();
        let mut seen = HashSet::new();
        hits.into_iter()
            .map(|i| self.all[i].module.clone())
            .filter(|m| seen.insert(m.clone()))
            .collect()
    }
}

/// The indices of one modules directory (`<modulesDir>/<release>`).
#[derive(Debug, Clone)]
pub struct ModulesIndex {
    dir: PathBuf,
    modules: BTreeMap<String, Module>,
    builtin: BTreeSet<String>,
    aliases: Aliases,
    builtin_aliases: Aliases,
    softdeps: HashMap<String, SoftDep>,
}

/// Reads a whole index file with the size limit; `Ok(None)` when it does not exist.
fn read_index(path: &Path) -> Result<Option<Vec<u8>>, IndexError> {
    match crate::sys::read_limited(path, MAX_FILE_BYTES) {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(IndexError::Io {
            path: path.to_path_buf(),
            error,
        }),
    }
}

impl ModulesIndex {
    /// Reads the indices in `dir`. `modules.dep` is required; the others count as empty when
    /// absent (a trimmed initrd tree may ship only what it needs).
    pub fn load(dir: &Path) -> Result<Self, IndexError> {
        let read = |name: &str| -> Result<Option<(PathBuf, Vec<u8>)>, IndexError> {
            let path = dir.join(name);
            Ok(read_index(&path)?.map(|data| (path, data)))
        };
        let text = |data: &[u8]| String::from_utf8_lossy(data).into_owned();
        let parse_err = |path: &Path| {
            let path = path.to_path_buf();
            move |error| IndexError::Parse { path, error }
        };

        let dep_path = dir.join("modules.dep");
        let (dep_path, dep) = read("modules.dep")?.ok_or_else(|| IndexError::Io {
            path: dep_path,
            error: std::io::Error::from_raw_os_error(libc::ENOENT),
        })?;
        let dep = parse_dep(&text(&dep)).map_err(parse_err(&dep_path))?;

        let mut parts = Parts {
            dep,
            ..Parts::default()
        };
        if let Some((path, data)) = read("modules.alias")? {
            parts.alias = parse_alias(&text(&data)).map_err(parse_err(&path))?;
        }
        if let Some((path, data)) = read("modules.builtin")? {
            parts.builtin = parse_builtin(&text(&data)).map_err(parse_err(&path))?;
        }
        if let Some((path, data)) = read("modules.builtin.modinfo")? {
            parts.builtin_modinfo = parse_builtin_modinfo(&data).map_err(parse_err(&path))?;
        }
        if let Some((path, data)) = read("modules.softdep")? {
            parts.softdep = parse_softdep(&text(&data)).map_err(parse_err(&path))?;
        }
        Ok(Self::from_parts(dir, parts))
    }

    /// Builds an index from already parsed files (for tests and generated trees).
    pub fn from_parts(dir: &Path, parts: Parts) -> Self {
        let mut modules = BTreeMap::new();
        for line in parts.dep {
            let name = name_from_path(&line.path);
            let deps = line.deps.iter().map(|d| name_from_path(d)).collect();
            // The first line for a name wins, as in kmod's index.
            modules.entry(name).or_insert(Module {
                path: line.path,
                deps,
            });
        }
        let mut aliases = Aliases::default();
        for a in parts.alias {
            aliases.push(a.pattern, a.module);
        }
        let mut builtin: BTreeSet<String> = parts.builtin.into_iter().collect();
        let mut builtin_aliases = Aliases::default();
        for e in parts.builtin_modinfo {
            if e.key == "alias" {
                builtin_aliases.push(normalize_alias(&e.value), e.module.clone());
            }
            builtin.insert(e.module);
        }
        let mut softdeps: HashMap<String, SoftDep> = HashMap::new();
        for s in parts.softdep {
            let entry = softdeps.entry(s.module.clone()).or_insert_with(|| SoftDep {
                module: s.module.clone(),
                ..SoftDep::default()
            });
            entry.pre.extend(s.pre);
            entry.post.extend(s.post);
        }
        ModulesIndex {
            dir: dir.to_path_buf(),
            modules,
            builtin,
            aliases,
            builtin_aliases,
            softdeps,
        }
    }

    /// The directory the index was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `name` is a loadable module (in `modules.dep`).
    pub fn contains(&self, name: &str) -> bool {
        self.modules.contains_key(&normalize_name(name))
    }

    /// Whether `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize_name(name))
    }

    /// The file of a loadable module, relative to [`Self::dir`].
    pub fn path_of(&self, name: &str) -> Option<&Path> {
        self.modules
            .get(&normalize_name(name))
            .map(|m| Path::new(m.path.as_str()))
    }

    /// Resolves a module name or alias, in kmod's order: `modules.dep` names, then
    /// `modules.alias`, then builtins (`modules.builtin` names and
    /// `modules.builtin.modinfo` aliases).
    pub fn resolve(&self, name_or_alias: &str) -> Result<Resolved, IndexError> {
        let name = normalize_name(name_or_alias);
        if self.modules.contains_key(&name) {
            return Ok(Resolved::Modules(vec![name]));
        }
        let alias = normalize_alias(name_or_alias);
        let hits = self.aliases.lookup(&alias);
        if !hits.is_empty() {
            // An alias may name a builtin module too; only loadable ones are returned.
            let loadable: Vec<String> = hits
                .iter()
                .filter(|m| self.modules.contains_key(*m))
                .cloned()
                .collect();
            if !loadable.is_empty() {
                return Ok(Resolved::Modules(loadable));
            }
            if let Some(b) = hits.iter().find(|m| self.builtin.contains(*m)) {
                return Ok(Resolved::Builtin(b.clone()));
            }
        }
        if self.builtin.contains(&name) {
            return Ok(Resolved::Builtin(name));
        }
        if let Some(b) = self.builtin_aliases.lookup(&alias).into_iter().next() {
            return Ok(Resolved::Builtin(b));
        }
        Err(IndexError::NotFound {
            name: name_or_alias.to_string(),
            dir: self.dir.clone(),
        })
    }

    /// The modules that must load before `name`: its `modules.dep` dependencies, then its
    /// softdep `pre:` modules (those that resolve; builtins left out).
    fn prerequisites(&self, name: &str) -> Result<Vec<String>, IndexError> {
        let module = self.modules.get(name).ok_or_else(|| IndexError::NotFound {
            name: name.to_string(),
            dir: self.dir.clone(),
        })?;
        let mut out: Vec<String> = Vec::new();
        for dep in &module.deps {
            if self.builtin.contains(dep) && !self.modules.contains_key(dep) {
                continue;
            }
            if !self.modules.contains_key(dep) {
                return Err(IndexError::MissingDependency {
                    module: name.to_string(),
                    dependency: dep.clone(),
                    dir: self.dir.clone(),
                });
            }
            if dep != name && !out.contains(dep) {
                out.push(dep.clone());
            }
        }
        for soft in self
            .softdeps
            .get(name)
            .map(|s| s.pre.as_slice())
            .unwrap_or(&[])
        {
            for m in self.resolve_soft(name, soft) {
                if m != name && !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        Ok(out)
    }

    /// A softdep that resolves to nothing is skipped, as modprobe does.
    fn resolve_soft(&self, module: &str, soft: &str) -> Vec<String> {
        match self.resolve(soft) {
            Ok(Resolved::Modules(ms)) => ms,
            Ok(Resolved::Builtin(_)) => Vec::new(),
            Err(_) => {
                log::debug!("softdep {soft} of {module} not found; skipped");
                Vec::new()
            }
        }
    }

    /// Everything to load for `names` (names or aliases), dependencies first: the
    /// `modules.dep` closure plus softdep `pre:` modules before and softdep `post:` modules
    /// after; builtins excluded, duplicates removed. Deterministic: request order, then
    /// dependency order.
    pub fn closure(&self, names: &[String]) -> Result<Vec<ModuleEntry>, IndexError> {
        let mut roots: Vec<String> = Vec::new();
        for n in names {
            if let Resolved::Modules(ms) = self.resolve(n)? {
                roots.extend(ms);
            }
        }
        let mut order: Vec<ModuleEntry> = Vec::new();
        let mut done: HashSet<String> = HashSet::new();
        let mut queue: std::collections::VecDeque<String> = roots.into();
        while let Some(root) = queue.pop_front() {
            if done.contains(&root) {
                continue;
            }
            self.visit(&root, &mut done, &mut order)?;
            let posts = self
                .softdeps
                .get(&root)
                .map(|s| s.post.clone())
                .unwrap_or_default();
            for soft in posts {
                queue.extend(self.resolve_soft(&root, &soft));
            }
        }
        Ok(order)
    }

    /// Iterative depth-first post-order from `root` (no recursion: the depth is input-driven).
    fn visit(
        &self,
        root: &str,
        done: &mut HashSet<String>,
        order: &mut Vec<ModuleEntry>,
    ) -> Result<(), IndexError> {
        // Frames: (module, its prerequisites, next prerequisite to visit).
        let mut stack: Vec<(String, Vec<String>, usize)> =
            vec![(root.to_string(), self.prerequisites(root)?, 0)];
        let mut on_stack: HashSet<String> = HashSet::from([root.to_string()]);
        while let Some((name, deps, next)) = stack.last_mut() {
            if let Some(dep) = deps.get(*next).cloned() {
                *next += 1;
                if done.contains(&dep) {
                    continue;
                }
                if on_stack.contains(&dep) {
                    let mut cycle: Vec<String> = stack.iter().map(|f| f.0.clone()).collect();
                    let start = cycle.iter().position(|n| *n == dep).unwrap_or(0);
                    cycle.drain(..start);
                    cycle.push(dep);
                    return Err(IndexError::Cycle {
                        cycle,
                        dir: self.dir.clone(),
                    });
                }
                let prereq = self.prerequisites(&dep)?;
                on_stack.insert(dep.clone());
                stack.push((dep, prereq, 0));
            } else {
                let name = name.clone();
                let deps = std::mem::take(deps);
                stack.pop();
                on_stack.remove(&name);
                let path = self
                    .modules
                    .get(&name)
                    .map(|m| PathBuf::from(&m.path))
                    .unwrap_or_default();
                done.insert(name.clone());
                order.push(ModuleEntry { name, path, deps });
            }
        }
        Ok(())
    }
}

/// Parsed index files, for [`ModulesIndex::from_parts`].
#[derive(Debug, Clone, Default)]
pub struct Parts {
    pub dep: Vec<DepLine>,
    pub alias: Vec<AliasLine>,
    pub builtin: Vec<String>,
    pub builtin_modinfo: Vec<ModinfoEntry>,
    pub softdep: Vec<SoftDep>,
}

impl fmt::Display for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resolved::Modules(ms) => write!(f, "{}", ms.join(", ")),
            Resolved::Builtin(b) => write!(f, "{b} (builtin)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_table() {
        type Want = Result<Vec<(&'static str, Vec<&'static str>)>, usize>;
        let cases: Vec<(&str, Want)> = vec![
            ("", Ok(vec![])),
            ("# comment\n\n", Ok(vec![])),
            (
                "kernel/fs/squashfs/squashfs.ko:\n",
                Ok(vec![("kernel/fs/squashfs/squashfs.ko", vec![])]),
            ),
            (
                "a/x.ko.xz: b/y.ko.xz c/z.ko.xz\r\nb/y.ko.xz:\n",
                Ok(vec![
                    ("a/x.ko.xz", vec!["b/y.ko.xz", "c/z.ko.xz"]),
                    ("b/y.ko.xz", vec![]),
                ]),
            ),
            ("  a.ko :\tb.ko  \n", Ok(vec![("a.ko", vec!["b.ko"])])),
            ("a.ko b.ko\n", Err(1)),
            ("a.ko:\n: b.ko\n", Err(2)),
            ("a.ko:\nx y.ko: z\n", Err(2)),
            ("ok.ko:\n\n.ko:\n", Err(3)),
        ];
        for (text, want) in cases {
            let got = parse_dep(text);
            match (got, want) {
                (Ok(got), Ok(want)) => {
                    let got: Vec<(String, Vec<String>)> =
                        got.into_iter().map(|d| (d.path, d.deps)).collect();
                    let want: Vec<(String, Vec<String>)> = want
                        .into_iter()
                        .map(|(p, d)| (p.to_string(), d.into_iter().map(String::from).collect()))
                        .collect();
                    assert_eq!(got, want, "{text:?}");
                }
                (Err(e), Err(line)) => assert_eq!(e.line, line, "{text:?}: {e}"),
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn dep_limits() {
        let long = format!("a.ko: {}\n", "b".repeat(MAX_LINE_BYTES));
        let e = parse_dep(&long).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.message.contains("longer"), "{e}");
        let many = format!("a.ko:{}\n", " b.ko".repeat(MAX_DEPS + 1));
        assert!(parse_dep(&many)
            .unwrap_err()
            .message
            .contains("dependencies"));
    }

    #[test]
    fn alias_table() {
        type Want = Result<Vec<(&'static str, &'static str)>, usize>;
        let cases: Vec<(&str, Want)> = vec![
            ("# Aliases extracted from modules themselves.\n", Ok(vec![])),
            (
                "alias fs-squashfs squashfs\n",
                Ok(vec![("fs_squashfs", "squashfs")]),
            ),
            (
                "alias pci:v00008086d*sv*sd*bc*sc*i* e1000-e\n",
                Ok(vec![("pci:v00008086d*sv*sd*bc*sc*i*", "e1000_e")]),
            ),
            (
                "alias of:N*T*Cfoo-[a-b]x bar\n",
                Ok(vec![("of:N*T*Cfoo_[a-b]x", "bar")]),
            ),
            ("alias only-two\n", Err(1)),
            ("alias a b\nalias a b c\n", Err(2)),
            ("options x y=1\n", Err(1)),
        ];
        for (text, want) in cases {
            match (parse_alias(text), want) {
                (Ok(got), Ok(want)) => {
                    let got: Vec<(&str, &str)> = got
                        .iter()
                        .map(|a| (a.pattern.as_str(), a.module.as_str()))
                        .collect();
                    assert_eq!(got, want, "{text:?}");
                }
                (Err(e), Err(line)) => assert_eq!(e.line, line, "{text:?}"),
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn builtin_table() {
        let cases: Vec<(&str, Result<Vec<&str>, usize>)> = vec![
            ("", Ok(vec![])),
            (
                "kernel/fs/ext4/ext4.ko\nkernel/drivers/hid/hid-generic.ko\n",
                Ok(vec!["ext4", "hid_generic"]),
            ),
            ("kernel/a.ko\nkernel/b c.ko\n", Err(2)),
            ("kernel/dir/\n", Err(1)),
        ];
        for (text, want) in cases {
            match (parse_builtin(text), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text:?}"),
                (Err(e), Err(line)) => assert_eq!(e.line, line, "{text:?}"),
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn builtin_modinfo_table() {
        type Want = Result<Vec<(&'static str, &'static str, &'static str)>, usize>;
        let cases: Vec<(&[u8], Want)> = vec![
            (b"", Ok(vec![])),
            (
                b"ext4.alias=fs-ext4\0ext4.license=GPL\0",
                Ok(vec![
                    ("ext4", "alias", "fs-ext4"),
                    ("ext4", "license", "GPL"),
                ]),
            ),
            (
                b"zswap.parm=x:line one\nline two\0hid-generic.file=drivers/hid/hid-generic\0",
                Ok(vec![
                    ("zswap", "parm", "x:line one\nline two"),
                    ("hid_generic", "file", "drivers/hid/hid-generic"),
                ]),
            ),
            (b"a.b=c=d\0", Ok(vec![("a", "b", "c=d")])),
            (b"a.b=1\0\0noequals\0", Err(3)),
            (b"nodot=1\0", Err(1)),
            (b".key=1\0", Err(1)),
            (b"\xff\xfe.k=v\0", Ok(vec![("\u{fffd}\u{fffd}", "k", "v")])),
        ];
        for (data, want) in cases {
            match (parse_builtin_modinfo(data), want) {
                (Ok(got), Ok(want)) => {
                    let got: Vec<(&str, &str, &str)> = got
                        .iter()
                        .map(|e| (e.module.as_str(), e.key.as_str(), e.value.as_str()))
                        .collect();
                    assert_eq!(got, want, "{data:?}");
                }
                (Err(e), Err(n)) => assert_eq!(e.line, n, "{data:?}"),
                (got, want) => panic!("{data:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn softdep_table() {
        type Want = Result<Vec<(&'static str, Vec<&'static str>, Vec<&'static str>)>, usize>;
        let cases: Vec<(&str, Want)> = vec![
            (
                "# Soft dependencies extracted from modules themselves.\n",
                Ok(vec![]),
            ),
            (
                "softdep ext4 pre: crypto-crc32c\n",
                Ok(vec![("ext4", vec!["crypto_crc32c"], vec![])]),
            ),
            (
                "softdep m pre: a b post: c\n",
                Ok(vec![("m", vec!["a", "b"], vec!["c"])]),
            ),
            (
                "softdep m post: c pre: a\n",
                Ok(vec![("m", vec!["a"], vec!["c"])]),
            ),
            ("softdep cifs gcm\n", Ok(vec![("cifs", vec![], vec![])])),
            ("softdep a-b pre:\n", Ok(vec![("a_b", vec![], vec![])])),
            ("softdep\n", Err(1)),
            ("softdep pre: x\n", Err(1)),
            ("softdep m pre: a\nalias x y\n", Err(2)),
        ];
        for (text, want) in cases {
            match (parse_softdep(text), want) {
                (Ok(got), Ok(want)) => {
                    let got: Vec<(String, Vec<String>, Vec<String>)> =
                        got.into_iter().map(|s| (s.module, s.pre, s.post)).collect();
                    let want: Vec<(String, Vec<String>, Vec<String>)> = want
                        .into_iter()
                        .map(|(m, a, b)| {
                            (
                                m.to_string(),
                                a.into_iter().map(String::from).collect(),
                                b.into_iter().map(String::from).collect(),
                            )
                        })
                        .collect();
                    assert_eq!(got, want, "{text:?}");
                }
                (Err(e), Err(line)) => assert_eq!(e.line, line, "{text:?}"),
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn normalize_table() {
        assert_eq!(normalize_name("hid-generic"), "hid_generic");
        assert_eq!(normalize_alias("fs-squashfs"), "fs_squashfs");
        assert_eq!(normalize_alias("of:N*T*Cx-[a-z]-y"), "of:N*T*Cx_[a-z]_y");
        assert_eq!(
            name_from_path("kernel/fs/squashfs/squashfs.ko.xz"),
            "squashfs"
        );
        assert_eq!(
            name_from_path("kernel/drivers/hid/hid-generic.ko"),
            "hid_generic"
        );
        assert_eq!(name_from_path("plain"), "plain");
    }

    pub(crate) fn sample() -> ModulesIndex {
        let dep = "\
kernel/fs/squashfs/squashfs.ko.xz:
kernel/fs/overlayfs/overlay.ko.xz:
kernel/drivers/block/loop.ko.xz:
kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.xz kernel/lib/crc16.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
kernel/drivers/hid/hid-generic.ko.xz: kernel/drivers/hid/hid.ko.xz
kernel/drivers/hid/hid.ko.xz:
kernel/c/cyc-a.ko: kernel/c/cyc-b.ko
kernel/c/cyc-b.ko: kernel/c/cyc-a.ko
kernel/x/broken.ko: kernel/x/absent.ko
kernel/p/posted.ko:
";
        let alias = "\
# Aliases extracted from modules themselves.
alias fs-squashfs squashfs
alias fs-overlay overlay
alias devname:loop-control loop
alias fs-ext4 ext4
alias fs-ext3 ext4
alias crypto-crc32c crc32c_generic
alias hid:b*g0001v*p* hid_generic
alias hid:b0003g*v*p* hid_generic
alias fs-vfat vfat
";
        let builtin = "kernel/fs/fat/vfat.ko\nkernel/fs/nls/nls-base.ko\n";
        let modinfo = b"vfat.alias=fs-vfat\0tmpfs.alias=fs-tmpfs-x\0nls_base.license=GPL\0";
        let softdep = "softdep ext4 pre: crypto-crc32c\nsoftdep jbd2 pre: no-such-module fs-vfat\nsoftdep overlay post: posted\n";
        ModulesIndex::from_parts(
            Path::new("/lib/modules/test"),
            Parts {
                dep: parse_dep(dep).unwrap(),
                alias: parse_alias(alias).unwrap(),
                builtin: parse_builtin(builtin).unwrap(),
                builtin_modinfo: parse_builtin_modinfo(modinfo).unwrap(),
                softdep: parse_softdep(softdep).unwrap(),
            },
        )
    }

    #[test]
    fn resolve_table() {
        let index = sample();
        let m = |v: &[&str]| Ok(Resolved::Modules(v.iter().map(|s| s.to_string()).collect()));
        let b = |s: &str| Ok(Resolved::Builtin(s.to_string()));
        let cases: Vec<(&str, Result<Resolved, ()>)> = vec![
            ("squashfs", m(&["squashfs"])),
            ("fs-squashfs", m(&["squashfs"])),
            ("fs_squashfs", m(&["squashfs"])),
            ("hid-generic", m(&["hid_generic"])),
            ("hid_generic", m(&["hid_generic"])),
            ("hid:b0003g0001v0000046Dp0000C52B", m(&["hid_generic"])),
            ("devname:loop-control", m(&["loop"])),
            ("vfat", b("vfat")),
            ("fs-vfat", b("vfat")),
            ("nls-base", b("nls_base")),
            ("fs-tmpfs-x", b("tmpfs")),
            ("nonexistent", Err(())),
            ("", Err(())),
        ];
        for (query, want) in cases {
            let got = index.resolve(query).map_err(|_| ());
            assert_eq!(got, want, "{query}");
        }
    }

    #[test]
    fn not_found_names_the_directory() {
        let e = sample().resolve("nosuch").unwrap_err().to_string();
        assert!(
            e.contains("nosuch") && e.contains("/lib/modules/test"),
            "{e}"
        );
    }

    fn names(entries: &[ModuleEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn closure_table() {
        let index = sample();
        let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
            (vec!["squashfs"], vec!["squashfs"]),
            (
                vec!["loop", "squashfs", "overlay"],
                vec!["loop", "squashfs", "overlay", "posted"],
            ),
            // ext4: its modules.dep deps, jbd2's softdep resolved (vfat is builtin, the
            // other absent), ext4's softdep pre crc32c.
            (
                vec!["fs-ext4"],
                vec!["jbd2", "mbcache", "crc16", "crc32c_generic", "ext4"],
            ),
            (
                vec!["ext4", "jbd2", "fs-ext3"],
                vec!["jbd2", "mbcache", "crc16", "crc32c_generic", "ext4"],
            ),
            (vec!["hid-generic"], vec!["hid", "hid_generic"]),
            (vec!["vfat", "fs-vfat"], vec![]),
            (vec![], vec![]),
        ];
        for (req, want) in cases {
            let req: Vec<String> = req.iter().map(|s| s.to_string()).collect();
            let got = index.closure(&req).unwrap();
            assert_eq!(names(&got), want, "{req:?}");
            // Every module comes after all of its deps.
            for (i, e) in got.iter().enumerate() {
                for d in &e.deps {
                    let j = got.iter().position(|x| &x.name == d).unwrap();
                    assert!(j < i, "{d} after {}", e.name);
                }
            }
        }
        let ext4 = index.closure(&["ext4".to_string()]).unwrap();
        let ext4 = ext4.iter().find(|e| e.name == "ext4").unwrap();
        assert_eq!(ext4.path, PathBuf::from("kernel/fs/ext4/ext4.ko.xz"));
        assert_eq!(
            ext4.deps,
            vec!["jbd2", "mbcache", "crc16", "crc32c_generic"]
        );
    }

    #[test]
    fn closure_errors() {
        let index = sample();
        let e = index.closure(&["cyc-a".to_string()]).unwrap_err();
        assert!(matches!(e, IndexError::Cycle { .. }), "{e}");
        assert!(e.to_string().contains("cyc_a -> cyc_b -> cyc_a"), "{e}");
        let e = index.closure(&["broken".to_string()]).unwrap_err();
        assert!(e.to_string().contains("absent"), "{e}");
        let e = index
            .closure(&["squashfs".into(), "nope".into()])
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("module nope not found in /lib/modules/test"),
            "{e}"
        );
    }

    #[test]
    fn deep_chain_does_not_overflow_the_stack() {
        let n = 100_000;
        let mut dep = String::new();
        for i in 0..n {
            dep.push_str(&format!("m{i}.ko: m{}.ko\n", i + 1));
        }
        dep.push_str(&format!("m{n}.ko:\n"));
        let index = ModulesIndex::from_parts(
            Path::new("/x"),
            Parts {
                dep: parse_dep(&dep).unwrap(),
                ..Parts::default()
            },
        );
        let order = index.closure(&["m0".to_string()]).unwrap();
        assert_eq!(order.len(), n + 1);
        assert_eq!(order[0].name, format!("m{n}"));
    }

    #[test]
    fn load_reads_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("modules.dep"),
            "kernel/a.ko: kernel/b.ko\nkernel/b.ko:\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("modules.alias"), "alias fs-a a\n").unwrap();
        let index = ModulesIndex::load(dir.path()).unwrap();
        assert_eq!(
            names(&index.closure(&["fs-a".into()]).unwrap()),
            vec!["b", "a"]
        );

        std::fs::write(
            dir.path().join("modules.softdep"),
            "softdep a pre: b\nbogus\n",
        )
        .unwrap();
        let e = ModulesIndex::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("modules.softdep") && e.contains("line 2"), "{e}");

        let e = anyhow::Error::new(ModulesIndex::load(&dir.path().join("nope")).unwrap_err());
        assert_eq!(
            format!("{e:#}"),
            format!(
                "reading {}/nope/modules.dep: No such file or directory (os error 2)",
                dir.path().display()
            )
        );

        std::fs::write(
            dir.path().join("modules.alias"),
            "x".repeat(MAX_FILE_BYTES as usize + 1),
        )
        .unwrap();
        let e = anyhow::Error::new(ModulesIndex::load(dir.path()).unwrap_err());
        assert_eq!(
            format!("{e:#}"),
            format!(
                "reading {}/modules.alias: larger than the limit of {MAX_FILE_BYTES} bytes",
                dir.path().display()
            )
        );
    }
}
