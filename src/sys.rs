//! The two implementations of every phase's syscall trait.
//!
//! Each phase declares a narrow trait for the syscalls it makes (`frame::FrameOps`,
//! `modules::ModuleOps`, `mounts::MountOps`, ...). [`Real`] implements them with the kernel;
//! [`Fake`] records every call as one line of text (`mount tmpfs /mnt-root tmpfs mode=0755`)
//! and fails the calls a test asks it to, so the whole boot sequence is unit-tested without root.

use nix::errno::Errno;
use std::io::Read;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// The errno behind an I/O error; EIO for an error std made up without one.
pub fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

/// Locks `mutex` even when a thread panicked while holding it: PID 1 carries on with the data
/// as it was left rather than dying on a poisoned lock.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads all of `path` unless it holds more than `limit` bytes: then an error that says so,
/// never more than `limit + 1` bytes in memory. Sizes are counted while reading, because
/// /proc and /sys files report a size of 0.
pub fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    std::fs::File::open(path)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut data)?;
    if data.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than the limit of {limit} bytes"),
        ));
    }
    Ok(data)
}

/// [`read_limited`] as text, invalid UTF-8 replaced (a stray byte must not stop a boot).
pub fn read_text_limited(path: &Path, limit: u64) -> std::io::Result<String> {
    read_limited(path, limit).map(|data| String::from_utf8_lossy(&data).into_owned())
}

/// The kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Real;

/// A recorder: every call appends one line; calls matching an injected failure return its errno.
#[derive(Debug, Default)]
pub struct Fake {
    calls: Mutex<Vec<String>>,
    failures: Mutex<Vec<(String, Errno)>>,
    responses: Mutex<Vec<(String, String)>>,
    release: Mutex<String>,
}

impl Fake {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every later call whose line starts with `prefix` fails with `errno`.
    pub fn fail_on(&self, prefix: &str, errno: Errno) -> &Self {
        lock(&self.failures).push((prefix.to_string(), errno));
        self
    }

    /// Sets what `uname -r` answers.
    pub fn set_release(&self, release: &str) -> &Self {
        *lock(&self.release) = release.to_string();
        self
    }

    pub fn release(&self) -> String {
        lock(&self.release).clone()
    }

    /// Records `call`, then returns the injected failure for it, if any.
    pub fn record(&self, call: impl Into<String>) -> Result<(), Errno> {
        let call = call.into();
        let failure = lock(&self.failures)
            .iter()
            .find(|(prefix, _)| call.starts_with(prefix.as_str()))
            .map(|(_, errno)| *errno);
        lock(&self.calls).push(call);
        match failure {
            Some(errno) => Err(errno),
            None => Ok(()),
        }
    }

    /// Calls whose line starts with `prefix` get `response` from [`Fake::response`]; what it
    /// means is up to the trait implementation (e.g. a child's exit status and output).
    pub fn respond_on(&self, prefix: &str, response: &str) -> &Self {
        lock(&self.responses).push((prefix.to_string(), response.to_string()));
        self
    }

    /// The response set for `call`, if any.
    pub fn response(&self, call: &str) -> Option<String> {
        lock(&self.responses)
            .iter()
            .find(|(prefix, _)| call.starts_with(prefix.as_str()))
            .map(|(_, response)| response.clone())
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// The calls so far that start with `prefix`.
    pub fn calls_starting_with(&self, prefix: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.starts_with(prefix))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_order_and_injects_failures() {
        let fake = Fake::new();
        fake.fail_on("mount /dev/loop0", Errno::EINVAL);
        assert_eq!(fake.record("mkdir /mnt-root"), Ok(()));
        assert_eq!(
            fake.record("mount /dev/loop0 /mnt-root/nix/.ro-store squashfs"),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            fake.calls(),
            vec![
                "mkdir /mnt-root".to_string(),
                "mount /dev/loop0 /mnt-root/nix/.ro-store squashfs".to_string()
            ]
        );
    }

    #[test]
    fn reads_are_limited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc\xffdef").unwrap();
        assert_eq!(read_limited(&path, 7).unwrap().len(), 7);
        assert_eq!(read_text_limited(&path, 7).unwrap(), "abc\u{fffd}def");
        let err = read_limited(&path, 6).unwrap_err();
        assert_eq!(err.to_string(), "larger than the limit of 6 bytes");
        assert_eq!(io_errno(&err), Errno::EIO);
        let missing = read_limited(&dir.path().join("missing"), 6).unwrap_err();
        assert_eq!(io_errno(&missing), Errno::ENOENT);
    }

    #[test]
    fn a_poisoned_lock_still_locks() {
        let mutex = Mutex::new(1);
        let _ = std::thread::scope(|s| {
            s.spawn(|| {
                let _guard = mutex.lock().unwrap();
                panic!("poison it");
            })
            .join()
        });
        assert!(mutex.is_poisoned());
        *lock(&mutex) += 1;
        assert_eq!(*lock(&mutex), 2);
    }
}
