//! `/init` of a NixOS netboot initrd. Everything lives in the library; this only dispatches.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("analyze") {
        std::process::exit(netboot_init::analyze::main(&args[2..]));
    }
    if std::process::id() != 1 {
        eprintln!(
            "netboot-init runs as /init (PID 1) in a netboot initrd.\n\
             usage: netboot-init analyze [--svg OUT] FILE   (render a boot's timeline)"
        );
        std::process::exit(2);
    }
    netboot_init::boot::pid1_main(&args)
}
