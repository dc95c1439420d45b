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
        // Long summaries may be left out of the record; the phase's own log line has them.
        let logged = format!("netboot-init: {} done in ", p.name);
        let from_log = scenarios::console_lines(console).into_iter().find_map(|l| {
            l.strip_prefix(&logged)
                .and_then(|r| r.split_once(": "))
                .map(|(_, s)| s.to_string())
        });
        let summary = if p.summary.is_empty() {
            from_log.unwrap_or_default()
        } else {
            p.summary.clone()
        };
        s.push_str(&format!(
            "  {:<14} {:>12} {:>12}  {}{}\n",
            p.name,
            ms(p.start_us.saturating_sub(t.init_start_us)),
            ms(p.duration_us()),
            if p.ok { "" } else { "FAILED " },
            summary
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_from_a_console() {
        let console = "[    1.000000] Run /init as init process\n\
             [    1.100000] netboot-init: modules done in 5.00 ms: loaded 3 modules\n\
             [    1.200000] netboot-init: timeline {\"version\":1,\"clock\":\"monotonic\",\"kernelRelease\":\"6.1.0-56-amd64\",\"initStartUs\":1000000,\"phases\":[{\"name\":\"modules\",\"startUs\":1010000,\"endUs\":1015000,\"ok\":true,\"summary\":\"\"}],\"handoffUs\":1190000}\n\
             [    1.250000] stage2-probe: started\n";
        let t = Timeline::from_log(console).unwrap();
        let table = timing_table(&t, console);
        assert!(table.contains("modules"), "{table}");
        assert!(table.contains("10.00 ms"), "{table}");
        assert!(table.contains("5.00 ms  loaded 3 modules"), "{table}");
        assert!(table.contains("190.00 ms"), "{table}");
        assert!(table.contains("250.00 ms"), "{table}");
    }
}
