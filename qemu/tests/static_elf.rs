//! The image's binaries must be static: no PT_INTERP, no DT_NEEDED (checked with our own ELF
//! reader against the binaries `build_static` produces).

use netboot_qemu::elf;
use std::path::Path;

#[test]
fn built_binaries_are_static() {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let bins = netboot_qemu::build_static(ws).expect("build_static");
    for b in [&bins.init, &bins.probe] {
        let data = std::fs::read(b).unwrap();
        let info = elf::inspect(&data).unwrap();
        assert_eq!(info.interpreter, None, "{} has an interpreter", b.display());
        assert!(
            info.needed.is_empty(),
            "{} needs {:?}",
            b.display(),
            info.needed
        );
        let size = data.len();
        assert!(size < 8 << 20, "{} is {size} bytes", b.display());
    }
}

#[test]
fn reader_sees_a_dynamic_binary() {
    let info = elf::inspect(&std::fs::read("/usr/bin/nix-store").unwrap()).unwrap();
    assert!(info.interpreter.is_some());
    assert!(info.needed.len() > 3, "{:?}", info.needed);
    assert!(elf::ensure_static(Path::new("/usr/bin/nix-store")).is_err());
}
