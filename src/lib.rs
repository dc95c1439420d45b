//! netboot-init: a static PID 1 for NixOS netboot initrds.
//!
//! One module per boot phase; every syscall a phase makes goes through a narrow trait
//! implemented by [`sys::Real`] (the kernel) and [`sys::Fake`] (a recorder for unit tests).

pub mod analyze;
pub mod boot;
pub mod cmdline;
pub mod config;
pub mod failure;
pub mod frame;
pub mod logging;
pub mod modules;
pub mod mounts;
pub mod registration;
pub mod switch_root;
pub mod sys;
pub mod timeline;
