//! Host-side reading of a kernel modules tree's text indices (`modules.dep`, `modules.builtin`,
//! `modules.alias`, `modules.softdep`) and of the config, following the contract of
//! `netboot_init::modules::index` and `netboot_init::config`.

use anyhow::{bail, Context, Result};
use netboot_init::config::Config;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_INDEX_BYTES: u64 = 64 << 20;

pub fn parse_config(text: &str) -> Result<Config> {
    let config: Config = serde_json::from_str(text).context("invalid config")?;
    if config.version != netboot_init::config::CONFIG_VERSION {
        bail!(
            "invalid config: version: {} is not supported (expected {})",
            config.version,
            netboot_init::config::CONFIG_VERSION
        );
    }
    if config.file_systems.is_empty() {
        bail!("invalid config: fileSystems: empty (at least \"/\" is needed)");
    }
    for (i, fs) in config.file_systems.iter().enumerate() {
        if !fs.mount_point.starts_with('/') {
            bail!("invalid config: fileSystems[{i}].mountPoint: {:?} is not absolute", fs.mount_point);
        }
        if fs.fs_type.is_empty() {
            bail!("invalid config: fileSystems[{i}].fsType: empty");
        }
    }
    Ok(config)
}

/// Modules the mounts need: the file system types (minus those never modular) and `loop` for
/// file-backed mounts.
pub fn implied_by_file_systems(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for fs in &config.file_systems {
        let t = fs.fs_type.as_str();
        if !matches!(t, "tmpfs" | "ramfs" | "proc" | "sysfs" | "devtmpfs" | "devpts" | "auto" | "none" | "") {
            out.push(t.to_string());
        }
        if fs.options.iter().any(|o| o == "loop") {
            out.push("loop".to_string());
        }
    }
    let mut seen = BTreeSet::new();
    out.retain(|m| seen.insert(m.clone()));
    out
}

pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base
        .strip_suffix(".xz")
        .or_else(|| base.strip_suffix(".zst"))
        .or_else(|| base.strip_suffix(".gz"))
        .unwrap_or(base);
    base.strip_suffix(".ko").unwrap_or(base).replace('-', "_")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleEntry {
    pub name: String,
    pub path: PathBuf,
    pub deps: Vec<String>,
}

#[derive(Debug, Default)]
pub struct ModulesIndex {
    dir: PathBuf,
    /// name -> (path, dependency paths)
    dep: BTreeMap<String, (String, Vec<String>)>,
    builtin: BTreeSet<String>,
    alias: Vec<(String, String)>,
    /// name -> (pre, post)
    softdep: BTreeMap<String, (Vec<String>, Vec<String>)>,
}

fn read_index(path: &Path, required: bool) -> Result<Option<String>> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_INDEX_BYTES => bail!("{} is {} bytes, over the {MAX_INDEX_BYTES}-byte limit", path.display(), m.len()),
        Ok(_) => Ok(Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

impl ModulesIndex {
    pub fn load(dir: &Path) -> Result<Self> {
        let dep_path = dir.join("modules.dep");
        if !dep_path.is_file() {
            bail!(
                "{} has no modules.dep: run `depmod -b <root> <version>` on the unpacked kernel package first",
                dir.display()
            );
        }
        let mut idx = ModulesIndex {
            dir: dir.to_path_buf(),
            ..Default::default()
        };
        let dep = read_index(&dep_path, true)?.unwrap_or_default();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else { continue };
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            let deps = deps.split_whitespace().map(str::to_string).collect();
            idx.dep.insert(module_name(path), (path.to_string(), deps));
        }
        if let Some(text) = read_index(&dir.join("modules.builtin"), false)? {
            idx.builtin = text.lines().filter(|l| !l.trim().is_empty()).map(module_name).collect();
        }
        if let Some(text) = read_index(&dir.join("modules.alias"), false)? {
            for line in text.lines() {
                let mut w = line.split_whitespace();
                if let (Some("alias"), Some(pat), Some(m)) = (w.next(), w.next(), w.next()) {
                    idx.alias.push((pat.to_string(), m.replace('-', "_")));
                }
            }
        }
        if let Some(text) = read_index(&dir.join("modules.softdep"), false)? {
            for line in text.lines() {
                let mut w = line.split_whitespace();
                if w.next() != Some("softdep") {
                    continue;
                }
                let Some(m) = w.next() else { continue };
                let (mut pre, mut post) = (Vec::new(), Vec::new());
                let mut into_post = false;
                for word in w {
                    match word {
                        "pre:" => into_post = false,
                        "post:" => into_post = true,
                        x if into_post => post.push(x.to_string()),
                        x => pre.push(x.to_string()),
                    }
                }
                let e = idx.softdep.entry(m.replace('-', "_")).or_default();
                e.0.extend(pre);
                e.1.extend(post);
            }
        }
        Ok(idx)
    }

    /// Module names for a name or alias; empty when it is built in.
    fn resolve(&self, name: &str) -> Result<Vec<String>> {
        let n = name.replace('-', "_");
        if self.dep.contains_key(&n) {
            return Ok(vec![n]);
        }
        if self.builtin.contains(&n) {
            return Ok(vec![]);
        }
        let mut out: Vec<String> = self
            .alias
            .iter()
            .filter(|(pat, _)| glob_match(pat.as_bytes(), name.as_bytes()))
            .map(|(_, m)| m.clone())
            .filter(|m| self.dep.contains_key(m) || self.builtin.contains(m))
            .collect();
        out.dedup();
        if out.is_empty() {
            bail!(
                "module {name:?} is not in {}: not in modules.dep, modules.builtin or modules.alias",
                self.dir.display()
            );
        }
        Ok(out.into_iter().filter(|m| !self.builtin.contains(m)).collect())
    }

    pub fn closure(&self, names: &[String]) -> Result<Vec<ModuleEntry>> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for n in names {
            for m in self.resolve(n)? {
                self.visit(&m, &mut seen, &mut out, 0);
            }
        }
        Ok(out)
    }

    fn visit(&self, name: &str, seen: &mut BTreeSet<String>, out: &mut Vec<ModuleEntry>, depth: usize) {
        if depth > 64 || !seen.insert(name.to_string()) {
            return;
        }
        let Some((path, deps)) = self.dep.get(name) else { return };
        let (pre, post) = self.softdep.get(name).cloned().unwrap_or_default();
        // Soft dependencies are best effort, as with modprobe.
        for s in &pre {
            for m in self.resolve(s).unwrap_or_default() {
                self.visit(&m, seen, out, depth + 1);
            }
        }
        // modules.dep lists the full transitive set, deepest last: load in reverse.
        for d in deps.iter().rev() {
            self.visit(&module_name(d), seen, out, depth + 1);
        }
        out.push(ModuleEntry {
            name: name.to_string(),
            path: PathBuf::from(path),
            deps: deps.iter().map(|d| module_name(d)).collect(),
        });
        for s in &post {
            for m in self.resolve(s).unwrap_or_default() {
                self.visit(&m, seen, out, depth + 1);
            }
        }
    }
}

/// fnmatch(3) without flags: `*`, `?`, `[...]` (with `!`/`^` negation and ranges).
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let (mut star_p, mut star_i) = (None::<usize>, 0usize);
    while i < s.len() {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    star_p = Some(p);
                    star_i = i;
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(pat, p, s[i]) {
                        if matched {
                            p = next;
                            i += 1;
                            continue;
                        }
                    } else if s[i] == b'[' {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
                c if c == s[i] => {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star_p {
            Some(sp) => {
                p = sp + 1;
                star_i += 1;
                i = star_i;
            }
            None => return false,
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

fn class_match(pat: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut j = start + 1;
    let negate = matches!(pat.get(j), Some(b'!') | Some(b'^'));
    if negate {
        j += 1;
    }
    let mut matched = false;
    let mut first = true;
    while j < pat.len() && (first || pat[j] != b']') {
        first = false;
        if j + 2 < pat.len() && pat[j + 1] == b'-' && pat[j + 2] != b']' {
            if pat[j] <= c && c <= pat[j + 2] {
                matched = true;
            }
            j += 3;
        } else {
            if pat[j] == c {
                matched = true;
            }
            j += 1;
        }
    }
    if j >= pat.len() {
        return None;
    }
    Some((matched != negate, j + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"crypto-crc32c", b"crypto-crc32c"));
        assert!(glob_match(b"pci:v00008086d*sv*", b"pci:v00008086d1234sv5"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(glob_match(b"fs-[a-c]x", b"fs-bx"));
        assert!(!glob_match(b"fs-[!a-c]x", b"fs-bx"));
        assert!(!glob_match(b"abc", b"abcd"));
        assert!(glob_match(b"*", b""));
    }

    #[test]
    fn names() {
        assert_eq!(module_name("kernel/fs/squashfs/squashfs.ko.xz"), "squashfs");
        assert_eq!(module_name("kernel/drivers/virtio-foo.ko"), "virtio_foo");
    }
}
