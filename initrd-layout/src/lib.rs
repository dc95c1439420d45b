//! initrd-layout: builds the NixOS netboot initrd that carries netboot-init, the squashfs store
//! image, and the netboot directory (kernel, initrd, iPXE script, kexec tree).

pub mod build;
pub mod compress;
pub mod cpio;
pub mod netboot_dir;
pub mod store_image;
pub mod upstream;

pub use build::{build, BuildOptions, BuildReport, ExtraFile};
pub use compress::Compression;
pub use netboot_dir::{make_netboot_dir, NetbootDirOptions};
pub use store_image::{make_store_image, StoreImageOptions};
