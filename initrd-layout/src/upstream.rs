//! The pieces of `netboot_init` the layout relies on: config validation, the modules the
//! config implies, and the module closure. The builder uses exactly the rules the init
//! applies at boot.

use anyhow::{Context, Result};
use netboot_init::config::Config;
use netboot_init::modules::index::ModulesIndex;
use std::path::{Path, PathBuf};

/// One module of the closure: its name and its path relative to the modules tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosureModule {
    pub name: String,
    pub path: PathBuf,
}

/// Parses and validates the config text the way the init does at boot.
pub fn parse_config(text: &str) -> Result<Config> {
    Ok(Config::parse(text)?)
}

/// The module names the config needs: its `kernelModules` plus those its file systems imply.
pub fn needed_modules(config: &Config) -> Vec<String> {
    let mut names = config.kernel_modules.clone();
    for m in netboot_init::modules::implied_by_file_systems(config) {
        if !names.contains(&m) {
            names.push(m);
        }
    }
    names
}

/// The modules (with dependencies and softdeps, builtins excluded) to ship for `names`.
pub fn module_closure(modules_tree: &Path, names: &[String]) -> Result<Vec<ClosureModule>> {
    if !modules_tree.join("modules.dep").is_file() {
        anyhow::bail!(
            "{} has no modules.dep: run `depmod -b <root> <release>` on the unpacked kernel package first",
            modules_tree.display()
        );
    }
    let index = ModulesIndex::load(modules_tree)
        .with_context(|| format!("reading the module index of {}", modules_tree.display()))?;
    let entries = index.closure(names)?;
    Ok(entries
        .into_iter()
        .map(|e| ClosureModule {
            name: e.name,
            path: e.path,
        })
        .collect())
}
