//! The machine-readable record of one boot: each phase with its start, end and summary, on
//! CLOCK_MONOTONIC (the clock of the kernel's printk timestamps, near enough to line both up).
//!
//! Written to `/run/netboot-init/timeline.json` (which moves into stage 2 with /run) and logged
//! as one `timeline {json}` line, so a serial capture alone is enough to plot a boot.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where the record lives, relative to the root of /run.
pub const TIMELINE_FILE: &str = "netboot-init/timeline.json";

/// The tag of the log line that carries the record.
pub const LOG_TAG: &str = "timeline ";

/// The longest record that fits one /dev/kmsg write with the tag and prefix.
const LOG_JSON_MAX: usize = 900;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeline {
    pub version: u32,
    pub clock: String,
    #[serde(default)]
    pub kernel_release: String,
    pub init_start_us: u64,
    pub phases: Vec<Phase>,
    #[serde(default)]
    pub handoff_us: Option<u64>,
    #[serde(default)]
    pub stage2_init: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Phase {
    pub name: String,
    pub start_us: u64,
    pub end_us: u64,
    pub ok: bool,
    pub summary: String,
}

impl Phase {
    pub fn duration_us(&self) -> u64 {
        self.end_us.saturating_sub(self.start_us)
    }
}

/// Microseconds on CLOCK_MONOTONIC.
pub fn now_us() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => u64::try_from(ts.tv_sec())
            .unwrap_or(0)
            .saturating_mul(1_000_000)
            .saturating_add(u64::try_from(ts.tv_nsec()).unwrap_or(0) / 1_000),
        Err(_) => 0,
    }
}

/// Formats a duration in microseconds as milliseconds with two decimals.
pub fn ms(us: u64) -> String {
    format!("{}.{:02} ms", us / 1000, (us % 1000) / 10)
}

impl Timeline {
    pub fn new(init_start_us: u64, kernel_release: &str) -> Self {
        Timeline {
            version: 1,
            clock: "monotonic".into(),
            kernel_release: kernel_release.into(),
            init_start_us,
            phases: Vec::new(),
            handoff_us: None,
            stage2_init: None,
        }
    }

    /// Records a finished phase and logs its summary line.
    pub fn record(&mut self, name: &str, start_us: u64, end_us: u64, ok: bool, summary: String) {
        let took = ms(end_us.saturating_sub(start_us));
        if ok {
            log::info!("{name} done in {took}: {summary}");
        } else {
            log::error!("{name} failed after {took}");
        }
        self.phases.push(Phase {
            name: name.into(),
            start_us,
            end_us,
            ok,
            summary,
        });
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// The record as one log line's worth: a /dev/kmsg record holds at most about 1 KiB, so
    /// the summaries (already logged per phase, and kept in the file) are left out, and the
    /// stage-2 path too if it still does not fit.
    pub fn to_log_json(&self) -> String {
        let mut compact = self.clone();
        for phase in &mut compact.phases {
            phase.summary.clear();
        }
        let json = compact.to_json();
        if json.len() <= LOG_JSON_MAX {
            return json;
        }
        compact.stage2_init = None;
        compact.to_json()
    }

    /// Finds the record in a log (a serial console capture or `dmesg` output).
    pub fn from_log(text: &str) -> Option<Timeline> {
        let needle = format!("{}{LOG_TAG}", crate::logging::PREFIX);
        text.lines().rev().find_map(|line| {
            let json = &line[line.find(&needle)? + needle.len()..];
            serde_json::from_str(json.trim()).ok()
        })
    }

    /// Writes the record under `run_dir` (normally `/run`).
    pub fn write(&self, run_dir: &Path) -> std::io::Result<()> {
        let path = run_dir.join(TIMELINE_FILE);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, self.to_json() + "\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Timeline {
        let mut t = Timeline::new(1_000, "6.1.0-56-amd64");
        t.record("frame", 1_000, 1_500, true, "mounted /proc".into());
        t.record("modules", 1_500, 11_530, true, "loaded 3 modules".into());
        t.handoff_us = Some(20_000);
        t.stage2_init = Some("/nix/store/abc-system/init".into());
        t
    }

    #[test]
    fn json_uses_the_documented_names() {
        let json: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(json["clock"], "monotonic");
        assert_eq!(json["initStartUs"], 1000);
        assert_eq!(json["handoffUs"], 20000);
        assert_eq!(json["phases"][1]["name"], "modules");
        assert_eq!(json["phases"][1]["startUs"], 1500);
        assert_eq!(json["phases"][1]["endUs"], 11530);
    }

    #[test]
    fn found_again_in_a_console_capture() {
        let t = sample();
        let capture = format!(
            "[    1.000000] Run /init as init process\n\
             [    1.020000] netboot-init: {LOG_TAG}{}\n\
             [    1.030000] stage2-probe: started\n",
            t.to_json()
        );
        assert_eq!(Timeline::from_log(&capture), Some(t));
        assert_eq!(Timeline::from_log("no record here"), None);
    }

    #[test]
    fn the_logged_record_fits_one_kmsg_record() {
        let mut t = sample();
        for name in ["config", "mounts", "registration", "stage2-check", "extra"] {
            t.record(name, 2_000_000_000, 2_000_500_000, true, "x".repeat(400));
        }
        t.stage2_init = Some(format!("/nix/store/{}/init", "y".repeat(300)));
        let line = format!("{}{LOG_TAG}{}", crate::logging::PREFIX, t.to_log_json());
        assert!(line.len() <= 990, "{} bytes", line.len());
        let records = crate::logging::kmsg_records(log::Level::Info, &line);
        assert_eq!(records.len(), 1);
        let back = Timeline::from_log(&line).unwrap();
        assert_eq!(back.phases.len(), t.phases.len());
        assert_eq!(back.phases[3].end_us, 2_000_500_000);
    }

    #[test]
    fn written_under_run() {
        let dir = tempfile::tempdir().unwrap();
        sample().write(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(TIMELINE_FILE)).unwrap();
        let back: Timeline = serde_json::from_str(&text).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn durations_format_as_milliseconds() {
        assert_eq!(ms(10_030), "10.03 ms");
        assert_eq!(ms(999), "0.99 ms");
        assert_eq!(sample().phases[1].duration_us(), 10_030);
    }
}
