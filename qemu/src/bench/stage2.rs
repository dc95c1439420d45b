//! The benchmark's stage 2: the fixture's own busybox shell, given a script on the kernel
//! command line (the words after `--` reach stage 2 as its arguments, through either stage 1).
//! It logs the same first message as the stage-2 probe, then prints what the benchmark needs:
//! PID 1's CPU times, whether the loop device uses direct I/O, `/proc/meminfo` around a full
//! read of the store, the init's timing record, and the kernel log; then it powers off.
//!
//! The script contains no `"` (the kernel's quoting) and no `=` (so it survives any
//! `param=value` splitting of the command line), hence `for b in DIR` to name busybox's bin
//! directory once.

use netboot_init::mounts::memory::{parse_meminfo, MemInfo};

/// Prefix of every line the script prints itself.
pub const TAG: &str = "bench: ";
/// Printed last, just before power-off.
pub const DONE: &str = "bench: done";

/// The stage-2 init for the kernel's `init=`: the fixture busybox's shell.
pub fn init_path(busybox_store_path: &str) -> String {
    format!("{busybox_store_path}/bin/sh")
}

/// The words after `--` on the kernel command line: `-c "<script>"`.
pub fn init_args(busybox_store_path: &str) -> String {
    let script = [
        "echo '<6>stage2-probe: started' > /dev/kmsg",
        "echo bench: stat $($b/cat /proc/1/stat)",
        "echo bench: dio $($b/cat /sys/block/loop*/loop/dio)",
        "$b/sync",
        "echo 3 > /proc/sys/vm/drop_caches",
        "echo bench: meminfo-before",
        "$b/cat /proc/meminfo",
        "echo bench: read-bytes $($b/find /nix/store/ -type f -exec $b/cat {} + | $b/wc -c)",
        "echo bench: meminfo-after",
        "$b/cat /proc/meminfo",
        "echo",
        "echo 3 > /proc/sys/vm/drop_caches",
        "echo bench: meminfo-dropped",
        "$b/cat /proc/meminfo",
        "echo",
        "echo -n 'bench: timeline '",
        "$b/cat /run/netboot-init/timeline.json",
        "echo",
        "echo bench: dmesg-begin",
        "$b/dmesg",
        "echo bench: dmesg-end",
        "echo bench: done",
        "$b/poweroff -f",
    ]
    .join("; ");
    format!("-c \"for b in {busybox_store_path}/bin; do {script}; done\"")
}

/// PID 1's CPU times from `/proc/1/stat`, in clock ticks (USER_HZ, 100 per second).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTicks {
    pub utime: u64,
    pub stime: u64,
    /// Children that PID 1 waited for (the shell stage 1's commands, `nix-store`).
    pub cutime: u64,
    pub cstime: u64,
}

/// Milliseconds per clock tick (USER_HZ is 100 on x86).
pub const MS_PER_TICK: f64 = 10.0;

impl CpuTicks {
    pub fn user_ms(&self) -> f64 {
        self.utime as f64 * MS_PER_TICK
    }
    pub fn system_ms(&self) -> f64 {
        self.stime as f64 * MS_PER_TICK
    }
    pub fn children_ms(&self) -> f64 {
        (self.cutime + self.cstime) as f64 * MS_PER_TICK
    }
}

/// Parses `/proc/PID/stat` (the command name may contain spaces and parentheses).
pub fn parse_proc_stat(text: &str) -> Option<CpuTicks> {
    let after = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the name start at 3 (state); utime is field 14.
    let get = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some(CpuTicks {
        utime: get(14)?,
        stime: get(15)?,
        cutime: get(16)?,
        cstime: get(17)?,
    })
}

/// What the stage-2 script printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stage2Output {
    pub cpu: Option<CpuTicks>,
    /// `/sys/block/loopN/loop/dio` of every bound loop device.
    pub dio: Vec<bool>,
    pub mem_before: Option<MemInfo>,
    pub mem_after: Option<MemInfo>,
    /// After dropping the clean caches again: what the read left that cannot be reclaimed.
    pub mem_dropped: Option<MemInfo>,
    pub read_bytes: Option<u64>,
    /// `/run/netboot-init/timeline.json` as stage 2 found it.
    pub timeline_json: Option<String>,
    /// The kernel log as `dmesg` printed it (timestamps on every line).
    pub dmesg: String,
    pub done: bool,
}

impl Stage2Output {
    /// Page-cache growth over the full read, in KiB.
    pub fn cache_growth_kib(&self) -> Option<i64> {
        Some(self.mem_after?.cache() as i64 - self.mem_before?.cache() as i64)
    }

    /// RAM the read left in the page cache beyond the file contents themselves, in KiB:
    /// what a second copy of compressed blocks (loop or block-device cache) costs.
    pub fn overhead_kib(&self) -> Option<i64> {
        Some(self.cache_growth_kib()? - (self.read_bytes? / 1024) as i64)
    }

    /// Page cache still held after the read once clean caches are dropped, in KiB.
    pub fn held_after_drop_kib(&self) -> Option<i64> {
        Some(self.mem_dropped?.cache() as i64 - self.mem_before?.cache() as i64)
    }

    pub fn direct_io(&self) -> Option<bool> {
        if self.dio.is_empty() {
            None
        } else {
            Some(self.dio.iter().all(|d| *d))
        }
    }
}

/// Reads the script's output from a console log. Lines may end in `\r`; kernel messages may be
/// interleaved with it.
pub fn parse(console: &str) -> Stage2Output {
    #[derive(PartialEq)]
    enum Section {
        None,
        Before,
        After,
        Dropped,
        Dmesg,
    }
    let mut out = Stage2Output::default();
    let mut section = Section::None;
    let (mut before, mut after, mut dropped) = (String::new(), String::new(), String::new());
    for raw in console.lines() {
        let line = raw.trim_end_matches('\r');
        // Only lines the script printed: the kernel log quotes the script itself.
        if let Some(rest) = line.strip_prefix(TAG) {
            let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
            match key {
                "stat" => out.cpu = parse_proc_stat(value),
                "dio" => {
                    out.dio = value
                        .split_whitespace()
                        .filter_map(|v| match v {
                            "1" => Some(true),
                            "0" => Some(false),
                            _ => None,
                        })
                        .collect()
                }
                "meminfo-before" => section = Section::Before,
                "meminfo-after" => section = Section::After,
                "meminfo-dropped" => section = Section::Dropped,
                "read-bytes" => {
                    out.read_bytes = value.trim().parse().ok();
                    section = Section::None;
                }
                "dmesg-begin" => section = Section::Dmesg,
                "dmesg-end" => section = Section::None,
                "done" => out.done = true,
                "timeline" => {
                    let json = value.trim();
                    out.timeline_json = (!json.is_empty()).then(|| json.to_string());
                }
                _ => {}
            }
            continue;
        }
        // The script prints an empty line after the second meminfo.
        if line.trim().is_empty() && section != Section::Dmesg {
            section = Section::None;
            continue;
        }
        let target = match section {
            Section::None => continue,
            Section::Before => &mut before,
            Section::After => &mut after,
            Section::Dropped => &mut dropped,
            Section::Dmesg => &mut out.dmesg,
        };
        target.push_str(line);
        target.push('\n');
    }
    if !before.is_empty() {
        out.mem_before = Some(parse_meminfo(&before));
    }
    if !after.is_empty() {
        out.mem_after = Some(parse_meminfo(&after));
    }
    if !dropped.is_empty() {
        out.mem_dropped = Some(parse_meminfo(&dropped));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_is_kernel_safe() {
        let args = init_args("/nix/store/abc-busybox");
        let script = args
            .strip_prefix("-c \"")
            .unwrap()
            .strip_suffix('"')
            .unwrap();
        assert!(!script.contains('"') && !script.contains('='), "{script}");
        assert!(script.starts_with(
            "for b in /nix/store/abc-busybox/bin; do echo '<6>stage2-probe: started'"
        ));
        assert!(script.ends_with("$b/poweroff -f; done"));
        // The kernel splits its command line with these rules too: one word after `-c`.
        let cmdline = format!(
            "console=ttyS0 init={} -- {args}",
            init_path("/nix/store/abc-busybox")
        );
        let words = netboot_init::cmdline::split(&cmdline);
        let dashes = words.iter().position(|w| w == "--").unwrap();
        assert_eq!(words[dashes + 1..], ["-c".to_string(), script.to_string()]);
        assert!(cmdline.len() < 2048);
    }

    #[test]
    fn proc_stat() {
        let text =
            "1 (sh (x) y) S 0 1 1 0 -1 4194560 713 4242 0 3 17 25 31 44 20 0 1 0 12 2195456 85";
        assert_eq!(
            parse_proc_stat(text),
            Some(CpuTicks {
                utime: 17,
                stime: 25,
                cutime: 31,
                cstime: 44
            })
        );
        assert_eq!(parse_proc_stat("1 (sh) S 0"), None);
        assert_eq!(parse_proc_stat(""), None);
        let t = parse_proc_stat(text).unwrap();
        assert_eq!(
            (t.user_ms(), t.system_ms(), t.children_ms()),
            (170.0, 250.0, 750.0)
        );
    }

    #[test]
    fn parses_console() {
        let console = "[    3.2] Run /init as init process\r\n\
            bench: stat 1 (sh) S 0 1 1 0 -1 4194560 713 4242 0 3 7 9 0 0 20 0 1 0 12 2195456 85\r\n\
            bench: dio 1\r\n\
            bench: meminfo-before\r\n\
            MemTotal: 1000 kB\r\nMemAvailable: 900 kB\r\nBuffers: 10 kB\r\nCached: 100 kB\r\n\
            [    9.9] some kernel warning\r\n\
            bench: read-bytes 51200\r\n\
            bench: meminfo-after\r\n\
            MemAvailable: 800 kB\r\nBuffers: 20 kB\r\nCached: 160 kB\r\n\r\n\
            bench: meminfo-dropped\r\nBuffers: 0 kB\r\nCached: 104 kB\r\n\r\n\
            bench: timeline {\"version\":1}\r\n\
            bench: dmesg-begin\r\n\
            [    3.200000] Run /init as init process\r\n\
            [    3.200100]     for b in /x; do echo bench: dmesg-end; echo bench: stat 1; done\r\n\
            [    3.300000] stage2-probe: started\r\n\
            bench: dmesg-end\r\n\
            bench: done\r\n";
        let out = parse(console);
        assert_eq!(out.cpu.unwrap().utime, 7);
        assert_eq!(out.direct_io(), Some(true));
        assert_eq!(out.read_bytes, Some(51200));
        assert_eq!(out.mem_before.unwrap().cached, 100);
        assert_eq!(out.mem_after.unwrap().buffers, 20);
        assert_eq!(out.cache_growth_kib(), Some(70));
        assert_eq!(out.overhead_kib(), Some(20));
        assert_eq!(out.held_after_drop_kib(), Some(-6));
        assert_eq!(out.dmesg.lines().count(), 3);
        assert_eq!(out.timeline_json.as_deref(), Some("{\"version\":1}"));
        assert!(out.done);
        let ev = netboot_init::analyze::kernel_events(&out.dmesg);
        assert_eq!(ev.stage1_us(), Some(100_000));

        let empty = parse("");
        assert_eq!(empty.direct_io(), None);
        assert_eq!(empty.overhead_kib(), None);
        assert!(!empty.done);
        assert_eq!(parse("bench: dio 0 1\n").direct_io(), Some(false));
    }
}
