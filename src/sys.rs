//! The two implementations of every phase's syscall trait.
//!
//! Each phase declares a narrow trait for the syscalls it makes (`frame::FrameOps`,
//! `modules::ModuleOps`, `mounts::MountOps`, ...). [`Real`] implements them with the kernel;
//! [`Fake`] records every call as one line of text (`mount tmpfs /mnt-root tmpfs mode=0755`)
//! and fails the calls a test asks it to, so the whole boot sequence is unit-tested without root.

use nix::errno::Errno;
use std::sync::Mutex;

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
        self.failures
            .lock()
            .unwrap()
            .push((prefix.to_string(), errno));
        self
    }

    /// Sets what `uname -r` answers.
    pub fn set_release(&self, release: &str) -> &Self {
        *self.release.lock().unwrap() = release.to_string();
        self
    }

    pub fn release(&self) -> String {
        self.release.lock().unwrap().clone()
    }

    /// Records `call`, then returns the injected failure for it, if any.
    pub fn record(&self, call: impl Into<String>) -> Result<(), Errno> {
        let call = call.into();
        let failure = self
            .failures
            .lock()
            .unwrap()
            .iter()
            .find(|(prefix, _)| call.starts_with(prefix.as_str()))
            .map(|(_, errno)| *errno);
        self.calls.lock().unwrap().push(call);
        match failure {
            Some(errno) => Err(errno),
            None => Ok(()),
        }
    }

    /// Calls whose line starts with `prefix` get `response` from [`Fake::response`]; what it
    /// means is up to the trait implementation (e.g. a child's exit status and output).
    pub fn respond_on(&self, prefix: &str, response: &str) -> &Self {
        self.responses
            .lock()
            .unwrap()
            .push((prefix.to_string(), response.to_string()));
        self
    }

    /// The response set for `call`, if any.
    pub fn response(&self, call: &str) -> Option<String> {
        self.responses
            .lock()
            .unwrap()
            .iter()
            .find(|(prefix, _)| call.starts_with(prefix.as_str()))
            .map(|(_, response)| response.clone())
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
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
}
