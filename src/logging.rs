//! The `log` backend of PID 1: records on /dev/kmsg with printk priorities, stderr (the
//! console the kernel gave us) before /dev exists.
//!
//! /dev/kmsg is where the kernel's own boot messages are, so one `dmesg` (or one serial
//! console capture) shows the whole boot with a common clock.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// Every line the init logs starts with this, after the printk priority.
pub const PREFIX: &str = "netboot-init: ";

/// The kernel cuts a /dev/kmsg record at about 1 KiB; longer messages are split into records.
const KMSG_RECORD_MAX: usize = 900;

static LOGGER: KmsgLogger = KmsgLogger {
    sink: Mutex::new(None),
};
static INSTALLED: OnceLock<()> = OnceLock::new();

struct KmsgLogger {
    sink: Mutex<Option<File>>,
}

/// The printk priority for a log level (`<3>` err, `<4>` warning, `<6>` info, `<7>` debug).
pub fn printk_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Formats one message as the records written to /dev/kmsg: one per line of the message,
/// each with its priority and the prefix, long lines split.
pub fn kmsg_records(level: Level, message: &str) -> Vec<String> {
    let priority = printk_priority(level);
    let mut records = Vec::new();
    for line in message.lines() {
        let mut rest = line;
        loop {
            let mut cut = rest.len().min(KMSG_RECORD_MAX);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (head, tail) = rest.split_at(cut);
            records.push(format!("<{priority}>{PREFIX}{head}\n"));
            if tail.is_empty() {
                break;
            }
            rest = tail;
        }
    }
    if records.is_empty() {
        records.push(format!("<{priority}>{PREFIX}\n"));
    }
    records
}

impl Log for KmsgLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // All the work before locking: the panic hook logs through here too, and would wait
        // forever for a lock its own thread held when it panicked.
        let message = record.args().to_string();
        let records = kmsg_records(record.level(), &message);
        match crate::sys::lock(&self.sink).as_mut() {
            Some(kmsg) => {
                for line in records {
                    // A lost log line must never take PID 1 down.
                    let _ = kmsg.write_all(line.as_bytes());
                }
            }
            None => {
                let _ = writeln!(std::io::stderr(), "{PREFIX}{message}");
            }
        }
    }

    fn flush(&self) {}
}

/// Installs the logger (console until [`use_kmsg`] succeeds). Safe to call more than once.
pub fn init(level: LevelFilter) {
    if INSTALLED.set(()).is_ok() {
        let _ = log::set_logger(&LOGGER);
    }
    log::set_max_level(level);
}

/// Switches the logger to /dev/kmsg once devtmpfs is mounted.
pub fn use_kmsg(kmsg: &Path) -> std::io::Result<()> {
    let file = OpenOptions::new().write(true).open(kmsg)?;
    *crate::sys::lock(&LOGGER.sink) = Some(file);
    Ok(())
}

/// Switches the logger back to the console (stderr) before /dev/kmsg goes away.
pub fn use_console() {
    *crate::sys::lock(&LOGGER.sink) = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_match_printk() {
        let table = [
            (Level::Error, "<3>"),
            (Level::Warn, "<4>"),
            (Level::Info, "<6>"),
            (Level::Debug, "<7>"),
            (Level::Trace, "<7>"),
        ];
        for (level, prefix) in table {
            let records = kmsg_records(level, "hello");
            assert_eq!(records, vec![format!("{prefix}netboot-init: hello\n")]);
        }
    }

    #[test]
    fn multi_line_and_long_messages_become_several_records() {
        let records = kmsg_records(Level::Info, "one\ntwo");
        assert_eq!(
            records,
            vec!["<6>netboot-init: one\n", "<6>netboot-init: two\n"]
        );
        let long = "é".repeat(KMSG_RECORD_MAX);
        let records = kmsg_records(Level::Warn, &long);
        assert!(records.len() >= 2);
        let rejoined: String = records
            .iter()
            .map(|r| {
                r.trim_start_matches("<4>netboot-init: ")
                    .trim_end_matches('\n')
            })
            .collect();
        assert_eq!(rejoined, long);
        assert!(records.iter().all(|r| r.len() <= KMSG_RECORD_MAX + 32));
    }
}
