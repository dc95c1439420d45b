//! Loop device ioctls (`include/uapi/linux/loop.h`), declared here with nix's ioctl macros.
//!
//! Why not a crate: `loopdev` (and `loopdev-3`, which `sys-mount`'s loop support uses)
//! generates its bindings with bindgen at build time, which needs libclang on the build
//! machine, for a handful of constants and two plain structs. These are stable kernel ABI, so
//! they are written out here and checked by size in the tests.

use nix::errno::Errno;
use std::fmt;

pub const LOOP_SET_FD: u32 = 0x4C00;
pub const LOOP_CLR_FD: u32 = 0x4C01;
pub const LOOP_SET_STATUS64: u32 = 0x4C04;
pub const LOOP_GET_STATUS64: u32 = 0x4C05;
pub const LOOP_SET_DIRECT_IO: u32 = 0x4C08;
/// Linux 5.8: attach and configure in one call.
pub const LOOP_CONFIGURE: u32 = 0x4C0A;
pub const LOOP_CTL_GET_FREE: u32 = 0x4C82;

pub const LO_FLAGS_READ_ONLY: u32 = 1;
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;
pub const LO_FLAGS_PARTSCAN: u32 = 8;
pub const LO_FLAGS_DIRECT_IO: u32 = 16;

pub const LO_NAME_SIZE: usize = 64;
pub const LO_KEY_SIZE: usize = 32;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LoopInfo64 {
    pub lo_device: u64,
    pub lo_inode: u64,
    pub lo_rdevice: u64,
    pub lo_offset: u64,
    pub lo_sizelimit: u64,
    pub lo_number: u32,
    pub lo_encrypt_type: u32,
    pub lo_encrypt_key_size: u32,
    pub lo_flags: u32,
    pub lo_file_name: [u8; LO_NAME_SIZE],
    pub lo_crypt_name: [u8; LO_NAME_SIZE],
    pub lo_encrypt_key: [u8; LO_KEY_SIZE],
    pub lo_init: [u64; 2],
}

impl Default for LoopInfo64 {
    fn default() -> Self {
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        }
    }
}

impl LoopInfo64 {
    /// Flags plus the backing file's name (shown by `losetup -l`), cut to fit.
    pub fn new(flags: u32, file_name: &[u8]) -> Self {
        let mut info = LoopInfo64 {
            lo_flags: flags,
            ..Default::default()
        };
        let n = file_name.len().min(LO_NAME_SIZE - 1);
        info.lo_file_name[..n].copy_from_slice(&file_name[..n]);
        info
    }
}

/// `struct loop_config`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct LoopConfig {
    pub fd: u32,
    pub block_size: u32,
    pub info: LoopInfo64,
    pub reserved: [u64; 8],
}

nix::ioctl_none_bad!(ctl_get_free, LOOP_CTL_GET_FREE);
nix::ioctl_write_int_bad!(set_fd, LOOP_SET_FD);
nix::ioctl_none_bad!(clr_fd, LOOP_CLR_FD);
nix::ioctl_write_ptr_bad!(set_status64, LOOP_SET_STATUS64, LoopInfo64);
nix::ioctl_read_bad!(get_status64, LOOP_GET_STATUS64, LoopInfo64);
nix::ioctl_write_int_bad!(set_direct_io, LOOP_SET_DIRECT_IO);
nix::ioctl_write_ptr_bad!(configure, LOOP_CONFIGURE, LoopConfig);

/// The loop flags this init asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopFlags {
    pub read_only: bool,
    pub autoclear: bool,
    pub direct_io: bool,
}

impl LoopFlags {
    pub fn bits(self) -> u32 {
        let mut b = 0;
        if self.read_only {
            b |= LO_FLAGS_READ_ONLY;
        }
        if self.autoclear {
            b |= LO_FLAGS_AUTOCLEAR;
        }
        if self.direct_io {
            b |= LO_FLAGS_DIRECT_IO;
        }
        b
    }

    /// The part `LOOP_SET_STATUS64` can change (`LOOP_SET_STATUS_SETTABLE_FLAGS`); read-only
    /// comes from how the backing file is opened, direct I/O from `LOOP_SET_DIRECT_IO`.
    pub fn settable_by_status(self) -> Self {
        LoopFlags {
            read_only: false,
            direct_io: false,
            ..self
        }
    }

    pub fn from_bits(b: u32) -> Self {
        LoopFlags {
            read_only: b & LO_FLAGS_READ_ONLY != 0,
            autoclear: b & LO_FLAGS_AUTOCLEAR != 0,
            direct_io: b & LO_FLAGS_DIRECT_IO != 0,
        }
    }
}

/// `ro,autoclear,direct-io`, or `none`.
impl fmt::Display for LoopFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.read_only, "ro"),
            (self.autoclear, "autoclear"),
            (self.direct_io, "direct-io"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

/// Whether a `LOOP_CONFIGURE` failure means the kernel predates it (Linux < 5.8).
pub fn configure_unsupported(errno: Errno) -> bool {
    matches!(errno, Errno::ENOTTY | Errno::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_sizes() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn flags() {
        let f = LoopFlags {
            read_only: true,
            autoclear: true,
            direct_io: false,
        };
        assert_eq!(f.bits(), 5);
        assert_eq!(f.to_string(), "ro,autoclear");
        assert_eq!(LoopFlags::from_bits(f.bits()), f);
        assert_eq!(LoopFlags::from_bits(0).to_string(), "none");
        assert_eq!(
            LoopFlags::from_bits(21).to_string(),
            "ro,autoclear,direct-io"
        );
    }

    #[test]
    fn file_name_is_cut_and_terminated() {
        let info = LoopInfo64::new(4, &[b'a'; 100]);
        assert_eq!(info.lo_file_name[62], b'a');
        assert_eq!(info.lo_file_name[63], 0);
        assert_eq!(info.lo_flags, 4);
    }
}
