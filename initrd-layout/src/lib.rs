//! initrd-layout: builds the NixOS netboot initrd that carries netboot-init, the squashfs store
//! image, and the netboot directory (kernel, initrd, iPXE script, kexec tree).

pub mod build;
pub mod compress;
pub mod cpio;
pub mod modindex;
pub mod upstream;

pub use build::{build, BuildOptions, BuildReport, ExtraFile};
pub use compress::Compression;
