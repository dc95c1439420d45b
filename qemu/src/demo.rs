//! `demo`: boot the 6.12 netboot image, stream the console, print the per-phase timings.

use crate::scenarios::{self, kernel_time};
use crate::vm::{self, Step};
use anyhow::{bail, Result};
use netboot_init::timeline::{ms, Timeline};
use std::io::Write;
use std::path::Path;

pub fn demo(ws: &Path) -> Result<()> {
    crate::setup(ws)?;
    let (vm, fx) = scenarios::demo_image(ws)?;
    eprintln!(
        "demo: booting {} store paths ({} MB) under QEMU ({}), console in {}",
        fx.paths,
        fx.nar_bytes >> 20,
        if vm::kvm_requested() { "KVM" } else { "TCG" },
        vm.log.display()
    );
    let mut shown = 0;
    let stdout = std::io::stdout();
    let out = vm::run(&vm, |text, _| {
        let mut o = stdout.lock();
        // Whole lines only, so the stream reads like a console.
        if let Some(end) = text.rfind('\n') {
            if end + 1 > shown {
                let _ = o.write_all(&text.as_bytes()[shown..end + 1]);
                let _ = o.flush();
                shown = end + 1;
            }
        }
        Step::Continue
    })?;
    print!("{}", &out.console[shown.min(out.console.len())..]);
    println!();
    let Some(t) = Timeline::from_log(&out.console) else {
        bail!("no `netboot-init: timeline` record on the console");
    };
    println!("{}", timing_table(&t, &out.console));
    scenarios::judge_probe_console(&out.console)?;
    println!(
        "demo: stage 2 reached, every probe check passed ({:.1} s wall clock)",
        out.elapsed.as_secs_f64()
    );
    Ok(())
}

/// The per-phase table, with the stage-1 total from the kernel's timestamps.
pub fn timing_table(t: &Timeline, console: &str) -> String {
    let mut s = format!("netboot-init on {}:\n", t.kernel_release);
    s.push_str(&format!(
        "  {:<14} {:>12} {:>12}  {}\n",
        "phase", "start", "duration", "summary"
    ));
    for p in &t.phases {
        s.push_str(&format!(
            "  {:<14} {:>12} {:>12}  {}{}\n",
            p.name,
            ms(p.start_us.saturating_sub(t.init_start_us)),
            ms(p.duration_us()),
            if p.ok { "" } else { "FAILED " },
            p.summary
        ));
    }
    if let Some(h) = t.handoff_us {
        s.push_str(&format!(
            "  {:<14} {:>12}\n",
            "hand-off",
            ms(h.saturating_sub(t.init_start_us))
        ));
    }
    if let (Some(a), Some(b)) = (
        kernel_time(console, "Run /init as init process"),
        kernel_time(console, crate::probe::STARTED),
    ) {
        s.push_str(&format!(
            "  stage 1 (kernel `Run /init` to `{}`): {:.2} ms\n",
            crate::probe::STARTED,
            (b - a) * 1000.0
        ));
    }
    s
}
