//! Loading a resolved set of modules: one module (finit_module, the compressed-file flag, or
//! in-process decompression and init_module), and the scheduler that runs them in dependency
//! order, in parallel where the dependencies allow.

use super::decompress::{self, Compression};
use super::index::ModuleEntry;
use super::{FinitFlags, ModuleOps};
use nix::errno::Errno;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Condvar, Mutex};

/// How modules are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallelism {
    /// One after the other in dependency order, on the calling thread (the baseline the
    /// benchmark compares against).
    Sequential,
    /// A module starts as soon as everything it depends on is loaded, on up to `max_threads`
    /// threads.
    Parallel { max_threads: usize },
}

impl Default for Parallelism {
    fn default() -> Self {
        Parallelism::Parallel { max_threads: 8 }
    }
}

impl fmt::Display for Parallelism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Parallelism::Sequential => f.write_str("sequential"),
            Parallelism::Parallel { max_threads } => write!(f, "parallel ({max_threads} threads)"),
        }
    }
}

/// How a module went into the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `finit_module` on the uncompressed file.
    Finit,
    /// `finit_module` with `MODULE_INIT_COMPRESSED_FILE`: the kernel decompressed it.
    FinitCompressed(Compression),
    /// Decompressed in the process, then `init_module`.
    Userspace(Compression),
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Finit => f.write_str("finit_module"),
            Method::FinitCompressed(c) => write!(f, "finit_module ({c} in kernel)"),
            Method::Userspace(c) => write!(f, "init_module ({c} in userspace)"),
        }
    }
}

/// One module's load, with CLOCK_MONOTONIC microseconds (the timeline's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLoad {
    pub name: String,
    pub file: PathBuf,
    pub method: Method,
    /// The kernel said EEXIST: it was loaded already.
    pub already_loaded: bool,
    pub start_us: u64,
    pub end_us: u64,
    /// Time spent decompressing in the process (0 unless [`Method::Userspace`]).
    pub decompress_us: u64,
    /// Which worker loaded it (0 for sequential loading).
    pub worker: usize,
}

impl ModuleLoad {
    pub fn duration_us(&self) -> u64 {
        self.end_us.saturating_sub(self.start_us)
    }
}

/// A module that failed to load: names the module, the file and the cause.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading module {name} from {}: {step}: {errno}", file.display())]
    Syscall {
        name: String,
        file: PathBuf,
        step: String,
        errno: Errno,
    },
    // The causes are in the messages and not `source`s, which `{:#}` would print again.
    #[error("loading module {name}: reading {}: {error}", file.display())]
    Read {
        name: String,
        file: PathBuf,
        error: std::io::Error,
    },
    #[error("loading module {name}: {} does not exist", file.display())]
    Missing { name: String, file: PathBuf },
    #[error("loading module {name} from {}: {error}", file.display())]
    Decompress {
        name: String,
        file: PathBuf,
        error: decompress::DecompressError,
    },
}

/// Which compression formats the kernel refused in `finit_module`, so later modules go
/// straight to userspace decompression. Bit per [`Compression`].
#[derive(Debug, Default)]
pub struct KernelSupport {
    refused: AtomicU8,
}

impl KernelSupport {
    fn bit(c: Compression) -> u8 {
        match c {
            Compression::None => 0,
            Compression::Xz => 1,
            Compression::Zstd => 2,
            Compression::Gzip => 4,
        }
    }
    pub fn refuses(&self, c: Compression) -> bool {
        self.refused.load(Ordering::Relaxed) & Self::bit(c) != 0
    }
    fn refuse(&self, c: Compression) {
        self.refused.fetch_or(Self::bit(c), Ordering::Relaxed);
    }
    fn refuse_all(&self) {
        self.refused.fetch_or(7, Ordering::Relaxed);
    }
}

/// Loads one module file with `params`.
pub fn load_one<S: ModuleOps>(
    sys: &S,
    name: &str,
    file: &Path,
    params: &str,
    support: &KernelSupport,
    worker: usize,
) -> Result<ModuleLoad, LoadError> {
    let start_us = crate::timeline::now_us();
    let file_name = file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let format = Compression::from_file_name(&file_name);
    let syscall_err = |step: String, errno: Errno| LoadError::Syscall {
        name: name.to_string(),
        file: file.to_path_buf(),
        step,
        errno,
    };
    let done = |method, already_loaded, decompress_us| ModuleLoad {
        name: name.to_string(),
        file: file.to_path_buf(),
        method,
        already_loaded,
        start_us,
        end_us: crate::timeline::now_us(),
        decompress_us,
        worker,
    };

    if format == Compression::None {
        return match sys.finit_module(file, params, FinitFlags::NONE) {
            Ok(()) => Ok(done(Method::Finit, false, 0)),
            Err(Errno::EEXIST) => Ok(done(Method::Finit, true, 0)),
            Err(Errno::ENOENT) if !file.exists() => Err(LoadError::Missing {
                name: name.to_string(),
                file: file.to_path_buf(),
            }),
            Err(e) => Err(syscall_err("finit_module".into(), e)),
        };
    }

    let mut refused_with: Option<Errno> = None;
    if !support.refuses(format) {
        match sys.finit_module(file, params, FinitFlags::COMPRESSED_FILE) {
            Ok(()) => return Ok(done(Method::FinitCompressed(format), false, 0)),
            Err(Errno::EEXIST) => return Ok(done(Method::FinitCompressed(format), true, 0)),
            // EOPNOTSUPP: no CONFIG_MODULE_DECOMPRESS (5.17+); EINVAL: the flag is unknown
            // (older kernels) or the file is not in the kernel's one compression format.
            Err(e @ (Errno::EOPNOTSUPP | Errno::EINVAL | Errno::ENOSYS)) => {
                log::debug!("finit_module {file_name} with the compressed-file flag: {e}; decompressing in userspace");
                refused_with = Some(e);
            }
            Err(Errno::ENOENT) if !file.exists() => {
                return Err(LoadError::Missing {
                    name: name.to_string(),
                    file: file.to_path_buf(),
                })
            }
            Err(e) => {
                return Err(syscall_err(
                    "finit_module with MODULE_INIT_COMPRESSED_FILE".into(),
                    e,
                ))
            }
        }
    }

    let data = match crate::sys::read_limited(file, decompress::MAX_MODULE_BYTES as u64) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LoadError::Missing {
                name: name.to_string(),
                file: file.to_path_buf(),
            })
        }
        Err(error) => {
            return Err(LoadError::Read {
                name: name.to_string(),
                file: file.to_path_buf(),
                error,
            })
        }
    };
    let t0 = crate::timeline::now_us();
    let (image, actual) = decompress::decompress(&data).map_err(|error| LoadError::Decompress {
        name: name.to_string(),
        file: file.to_path_buf(),
        error,
    })?;
    drop(data);
    let decompress_us = crate::timeline::now_us().saturating_sub(t0);
    let result = sys.init_module(&image, params);
    drop(image);
    match result {
        Ok(()) | Err(Errno::EEXIST) => {
            // The kernel could not take the file but can take the image: remember, so
            // later modules skip the failing attempt.
            match refused_with {
                Some(Errno::EOPNOTSUPP) => support.refuse_all(),
                Some(_) => support.refuse(format),
                None => {}
            }
            Ok(done(
                Method::Userspace(actual),
                result.is_err(),
                decompress_us,
            ))
        }
        Err(e) => {
            let step = match refused_with {
                Some(first) => format!(
                    "init_module after userspace {actual} decompression (finit_module with the compressed-file flag had failed with {first})"
                ),
                None => format!("init_module after userspace {actual} decompression"),
            };
            Err(syscall_err(step, e))
        }
    }
}

/// What the scheduler produced: the loads in completion order, or the first failure (with any
/// loads that completed before it).
pub struct Outcome {
    pub loads: Vec<ModuleLoad>,
    pub errors: Vec<LoadError>,
}

/// Loads `entries` (in [`super::index::ModulesIndex::closure`] order) from `dir`.
pub fn load_all<S: ModuleOps>(
    sys: &S,
    dir: &Path,
    entries: &[ModuleEntry],
    params: &(dyn Fn(&str) -> String + Sync),
    parallelism: Parallelism,
) -> Outcome {
    let support = KernelSupport::default();
    match parallelism {
        Parallelism::Sequential => {
            let mut out = Outcome {
                loads: Vec::new(),
                errors: Vec::new(),
            };
            for e in entries {
                match load_one(
                    sys,
                    &e.name,
                    &dir.join(&e.path),
                    &params(&e.name),
                    &support,
                    0,
                ) {
                    Ok(l) => out.loads.push(l),
                    Err(err) => {
                        out.errors.push(err);
                        break;
                    }
                }
            }
            out
        }
        Parallelism::Parallel { max_threads } => {
            let threads = max_threads.max(1).min(entries.len());
            Dag::new(entries).run(threads, |i, worker| {
                let e = &entries[i];
                load_one(
                    sys,
                    &e.name,
                    &dir.join(&e.path),
                    &params(&e.name),
                    &support,
                    worker,
                )
            })
        }
    }
}

/// Stops the scheduling when dropped, which only happens while a worker unwinds from a
/// panicking load (the worker forgets it otherwise): the other workers then finish what they
/// run and return, and the scope passes the panic on instead of waiting forever.
struct StopOnUnwind<'a> {
    state: &'a Mutex<State>,
    wake: &'a Condvar,
}

impl Drop for StopOnUnwind<'_> {
    fn drop(&mut self) {
        let mut s = crate::sys::lock(self.state);
        s.running = s.running.saturating_sub(1);
        s.failed = true;
        drop(s);
        self.wake.notify_all();
    }
}

/// A dependency graph over the entries: a module becomes ready when all its dependencies
/// inside the set have loaded.
struct Dag {
    waiting_on: Vec<usize>,
    dependants: Vec<Vec<usize>>,
    names: Vec<String>,
}

struct State {
    ready: VecDeque<usize>,
    waiting_on: Vec<usize>,
    running: usize,
    finished: usize,
    failed: bool,
    loads: Vec<ModuleLoad>,
    errors: Vec<LoadError>,
}

impl Dag {
    fn new(entries: &[ModuleEntry]) -> Self {
        let position: HashMap<&str, usize> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.as_str(), i))
            .collect();
        let mut waiting_on = vec![0; entries.len()];
        let mut dependants = vec![Vec::new(); entries.len()];
        for (i, e) in entries.iter().enumerate() {
            let mut seen = Vec::new();
            for d in &e.deps {
                if let Some(&j) = position.get(d.as_str()) {
                    if j != i && !seen.contains(&j) {
                        seen.push(j);
                        waiting_on[i] += 1;
                        dependants[j].push(i);
                    }
                }
            }
        }
        Dag {
            waiting_on,
            dependants,
            names: entries.iter().map(|e| e.name.clone()).collect(),
        }
    }

    fn run<F>(self, threads: usize, load: F) -> Outcome
    where
        F: Fn(usize, usize) -> Result<ModuleLoad, LoadError> + Sync,
    {
        let total = self.names.len();
        let state = Mutex::new(State {
            ready: (0..total).filter(|&i| self.waiting_on[i] == 0).collect(),
            waiting_on: self.waiting_on.clone(),
            running: 0,
            finished: 0,
            failed: false,
            loads: Vec::new(),
            errors: Vec::new(),
        });
        let wake = Condvar::new();
        let lock = || crate::sys::lock(&state);
        std::thread::scope(|scope| {
            for worker in 0..threads {
                let (state, wake, load, dag) = (&state, &wake, &load, &self);
                let lock = move || crate::sys::lock(state);
                let spawned = std::thread::Builder::new()
                    .name(format!("modules-{worker}"))
                    .spawn_scoped(scope, move || loop {
                        let next = {
                            let mut s = lock();
                            loop {
                                if s.failed || s.finished == total {
                                    break None;
                                }
                                if let Some(i) = s.ready.pop_front() {
                                    s.running += 1;
                                    break Some(i);
                                }
                                if s.running == 0 {
                                    // Nothing runs and nothing is ready: the rest can never
                                    // become ready (cannot happen for a closure's order).
                                    break None;
                                }
                                s = wake.wait(s).unwrap_or_else(|p| p.into_inner());
                            }
                        };
                        let Some(i) = next else {
                            wake.notify_all();
                            return;
                        };
                        // Should `load` panic (a bug; the release build aborts into the
                        // panic hook), the others must not wait for it forever.
                        let unwinding = StopOnUnwind { state, wake };
                        let result = load(i, worker);
                        std::mem::forget(unwinding);
                        let mut s = lock();
                        s.running -= 1;
                        s.finished += 1;
                        match result {
                            Ok(l) => {
                                s.loads.push(l);
                                for &d in &dag.dependants[i] {
                                    s.waiting_on[d] -= 1;
                                    if s.waiting_on[d] == 0 {
                                        s.ready.push_back(d);
                                    }
                                }
                            }
                            Err(e) => {
                                s.failed = true;
                                s.errors.push(e);
                            }
                        }
                        drop(s);
                        wake.notify_all();
                    });
                if let Err(e) = spawned {
                    // Fewer workers is still correct; the calling thread is not a worker,
                    // so make sure at least one exists below.
                    log::warn!("cannot start module loader thread {worker}: {e}");
                }
            }
        });
        let mut s = lock();
        let mut out = Outcome {
            loads: std::mem::take(&mut s.loads),
            errors: std::mem::take(&mut s.errors),
        };
        let loaded = out.loads.len();
        if out.errors.is_empty() && loaded < total {
            // No worker could start, or the graph was stuck: load the rest here, in order,
            // with what is already loaded counted.
            let done: Vec<bool> = {
                let mut d = vec![false; total];
                for l in &out.loads {
                    if let Some(i) = self.names.iter().position(|n| *n == l.name) {
                        d[i] = true;
                    }
                }
                d
            };
            for (i, is_done) in done.into_iter().enumerate() {
                if is_done {
                    continue;
                }
                match load(i, 0) {
                    Ok(l) => out.loads.push(l),
                    Err(e) => {
                        out.errors.push(e);
                        break;
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    fn entry(name: &str, deps: &[&str]) -> ModuleEntry {
        ModuleEntry {
            name: name.into(),
            path: PathBuf::from(format!("{name}.ko")),
            deps: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn fake_load(name: &str, worker: usize) -> ModuleLoad {
        let start_us = crate::timeline::now_us();
        std::thread::sleep(Duration::from_millis(20));
        ModuleLoad {
            name: name.into(),
            file: PathBuf::from(name),
            method: Method::Finit,
            already_loaded: false,
            start_us,
            end_us: crate::timeline::now_us(),
            decompress_us: 0,
            worker,
        }
    }

    #[test]
    fn dag_respects_dependencies_and_overlaps_independent_modules() {
        // a, b, c independent; d needs a and b; e needs d; f needs c.
        let entries = vec![
            entry("a", &[]),
            entry("b", &[]),
            entry("c", &[]),
            entry("d", &["a", "b"]),
            entry("e", &["d", "a"]),
            entry("f", &["c"]),
        ];
        let concurrent = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let trio_started = AtomicUsize::new(0);
        let out = Dag::new(&entries).run(4, |i, w| {
            let now = concurrent.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            if i < 3 {
                // a, b and c wait for each other (bounded, so a sequential scheduler fails
                // the peak check below instead of hanging): no timing luck involved.
                trio_started.fetch_add(1, Ordering::SeqCst);
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while trio_started.load(Ordering::SeqCst) < 3
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let l = fake_load(&entries[i].name, w);
            concurrent.fetch_sub(1, Ordering::SeqCst);
            Ok(l)
        });
        assert!(out.errors.is_empty());
        assert_eq!(out.loads.len(), 6);
        let by_name: HashMap<&str, &ModuleLoad> =
            out.loads.iter().map(|l| (l.name.as_str(), l)).collect();
        for e in &entries {
            for d in &e.deps {
                assert!(
                    by_name[d.as_str()].end_us <= by_name[e.name.as_str()].start_us,
                    "{} started before {d} finished",
                    e.name
                );
            }
        }
        assert!(peak.load(Ordering::SeqCst) >= 3, "a, b, c should overlap");
    }

    #[test]
    fn dag_stops_scheduling_after_a_failure() {
        let entries = vec![entry("a", &[]), entry("b", &["a"]), entry("c", &["b"])];
        let out = Dag::new(&entries).run(2, |i, w| {
            if entries[i].name == "a" {
                Err(LoadError::Missing {
                    name: "a".into(),
                    file: PathBuf::from("a.ko"),
                })
            } else {
                Ok(fake_load(&entries[i].name, w))
            }
        });
        assert!(out.loads.is_empty());
        assert_eq!(out.errors.len(), 1);
    }

    #[test]
    fn read_and_decompress_failures_name_module_file_and_cause_once() {
        let dir = tempfile::tempdir().unwrap();
        let fake = crate::sys::Fake::new();
        fake.fail_on("finit_module", Errno::EOPNOTSUPP);
        let support = KernelSupport::default();
        let load = |file: &Path| {
            let e = load_one(&fake, "m", file, "", &support, 0).unwrap_err();
            format!("{:#}", anyhow::Error::new(e))
        };
        let unreadable = dir.path().join("dir.ko.xz");
        std::fs::create_dir(&unreadable).unwrap();
        assert_eq!(
            load(&unreadable),
            format!(
                "loading module m: reading {}: Is a directory (os error 21)",
                unreadable.display()
            )
        );
        let garbage = dir.path().join("garbage.ko.zst");
        std::fs::write(&garbage, b"\x28\xb5\x2f\xfd").unwrap();
        let message = load(&garbage);
        let prefix = format!(
            "loading module m from {}: zstd data is corrupt: ",
            garbage.display()
        );
        assert!(message.starts_with(&prefix), "{message}");
        assert_eq!(message.matches("corrupt").count(), 1, "{message}");
    }

    #[test]
    fn a_panicking_load_is_passed_on_not_waited_for() {
        // b waits for a's dependants to get going; a panics while b still runs.
        let entries = vec![entry("a", &[]), entry("b", &[]), entry("c", &["a"])];
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let result = std::panic::catch_unwind(|| {
                Dag::new(&entries).run(2, |i, w| {
                    if entries[i].name == "a" {
                        panic!("a bug while loading a");
                    }
                    Ok(fake_load(&entries[i].name, w))
                })
            });
            let _ = tx.send(result.is_err());
        });
        let panicked = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the scheduler hung after a worker panicked");
        assert!(panicked, "the panic was swallowed");
        handle.join().unwrap();
    }

    #[test]
    fn dag_with_deps_outside_the_set_and_empty_set() {
        let out = Dag::new(&[]).run(3, |_, _| unreachable!());
        assert!(out.loads.is_empty() && out.errors.is_empty());
        let entries = vec![entry("a", &["builtin_thing"]), entry("b", &["a"])];
        let out = Dag::new(&entries).run(1, |i, w| Ok(fake_load(&entries[i].name, w)));
        let order: Vec<&str> = out.loads.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(order, vec!["a", "b"]);
    }
}
