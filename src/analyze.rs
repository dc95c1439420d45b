//! `netboot-init analyze`: renders the init's timing record as a text table and an SVG timeline.
//!
//! Input is either the record itself (`/run/netboot-init/timeline.json`) or a captured boot log
//! (serial console text): the log adds the kernel's view — its printk timestamps of
//! `Run /init as init process`, `stage2-probe: started` and the initramfs unpack — to the
//! `netboot-init: timeline {...}` line the init writes just before it execs stage 2.
//!
//! Everything here is pure (`parse_*` take text, `render_*` return text), so the same code
//! serves the subcommand and the benchmark harness.

use serde::Deserialize;
use std::fmt::Write as _;
use std::path::Path;

/// The record format version this tool reads.
pub const TIMELINE_VERSION: u32 = 1;
/// Inputs larger than this are refused (a boot log is a few hundred KiB).
pub const MAX_INPUT_BYTES: usize = 64 << 20;
/// Records with more phases than this are refused.
pub const MAX_PHASES: usize = 256;
/// Longer phase names and summaries are cut when rendered.
const MAX_TEXT_CHARS: usize = 160;

/// What went wrong reading a record or a log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnalyzeError {
    #[error("input is {0} bytes, more than the {MAX_INPUT_BYTES} this tool reads")]
    TooLarge(usize),
    #[error("timeline record: {0}")]
    Json(String),
    #[error("timeline record: version {0} is not supported (this tool reads version {TIMELINE_VERSION})")]
    Version(u32),
    #[error("timeline record: {0} phases, more than the {MAX_PHASES} this tool reads")]
    TooManyPhases(usize),
    #[error("timeline record: phase {index} ({name}): ends at {end_us} us, before it starts at {start_us} us")]
    PhaseOrder {
        index: usize,
        name: String,
        start_us: u64,
        end_us: u64,
    },
    #[error("boot log: no `netboot-init: timeline {{...}}` line (was the log captured from a netboot-init boot, with kernel messages on the console?)")]
    NoTimelineLine,
}

/// One phase of stage 1 as the init recorded it (CLOCK_MONOTONIC microseconds).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Phase {
    pub name: String,
    pub start_us: u64,
    pub end_us: u64,
    #[serde(default = "default_true")]
    pub ok: bool,
    #[serde(default)]
    pub summary: String,
}

fn default_true() -> bool {
    true
}

impl Phase {
    pub fn duration_us(&self) -> u64 {
        self.end_us.saturating_sub(self.start_us)
    }
}

/// Moments the kernel logged, from printk timestamps in a boot log (microseconds since boot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelEvents {
    /// `Run /init as init process` (any init path): the kernel execs stage 1.
    pub run_init_us: Option<u64>,
    /// `stage2-probe: started`: the first thing stage 2 logs.
    pub stage2_us: Option<u64>,
    /// `Trying to unpack rootfs image as initramfs...`.
    pub unpack_start_us: Option<u64>,
    /// `Freeing initrd memory:` — the initrd has been unpacked (or given up on).
    pub unpack_end_us: Option<u64>,
    /// The last timestamp in the log.
    pub last_us: Option<u64>,
}

impl KernelEvents {
    /// Stage-1 time as the kernel saw it: `/init` exec to stage 2's first message.
    pub fn stage1_us(&self) -> Option<u64> {
        self.stage2_us?.checked_sub(self.run_init_us?)
    }

    /// Time the kernel spent unpacking the initrd.
    pub fn unpack_us(&self) -> Option<u64> {
        self.unpack_end_us?.checked_sub(self.unpack_start_us?)
    }
}

/// The init's record plus, when read from a boot log, the kernel's timestamps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    pub kernel_release: Option<String>,
    pub init_start_us: u64,
    pub phases: Vec<Phase>,
    pub handoff_us: Option<u64>,
    pub stage2_init: Option<String>,
    pub kernel: KernelEvents,
    /// What was added to the record's times to put them on the kernel's printk clock
    /// (CLOCK_MONOTONIC and printk's local_clock drift apart, by tens of ms under emulation).
    pub clock_offset_us: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    version: u32,
    #[serde(default)]
    kernel_release: Option<String>,
    init_start_us: u64,
    #[serde(default)]
    phases: Vec<Phase>,
    #[serde(default)]
    handoff_us: Option<u64>,
    #[serde(default)]
    stage2_init: Option<String>,
}

impl Timeline {
    /// Where stage 1 begins: the kernel's exec of `/init` if known, else the init's first clock read.
    pub fn stage1_start_us(&self) -> u64 {
        match self.kernel.run_init_us {
            Some(run) if run <= self.init_start_us => run,
            _ => self.init_start_us,
        }
    }

    /// Where stage 1 ends: stage 2's first message if known, else the hand-off, else the last phase.
    pub fn stage1_end_us(&self) -> u64 {
        let last_phase = self.phases.iter().map(|p| p.end_us).max().unwrap_or(0);
        let end = self
            .kernel
            .stage2_us
            .or(self.handoff_us)
            .unwrap_or(last_phase);
        end.max(last_phase).max(self.init_start_us)
    }

    pub fn stage1_us(&self) -> u64 {
        self.stage1_end_us() - self.stage1_start_us()
    }

    /// The phase called `name`, if recorded.
    pub fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }
}

fn check_size(text: &str) -> Result<(), AnalyzeError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(AnalyzeError::TooLarge(text.len()));
    }
    Ok(())
}

/// Parses the JSON timing record (the contents of `/run/netboot-init/timeline.json`).
pub fn parse_timeline_json(text: &str) -> Result<Timeline, AnalyzeError> {
    check_size(text)?;
    let record: Record =
        serde_json::from_str(text.trim()).map_err(|e| AnalyzeError::Json(e.to_string()))?;
    if record.version != TIMELINE_VERSION {
        return Err(AnalyzeError::Version(record.version));
    }
    if record.phases.len() > MAX_PHASES {
        return Err(AnalyzeError::TooManyPhases(record.phases.len()));
    }
    for (index, p) in record.phases.iter().enumerate() {
        if p.end_us < p.start_us {
            return Err(AnalyzeError::PhaseOrder {
                index,
                name: p.name.clone(),
                start_us: p.start_us,
                end_us: p.end_us,
            });
        }
    }
    Ok(Timeline {
        kernel_release: record.kernel_release.filter(|r| !r.is_empty()),
        init_start_us: record.init_start_us,
        phases: record.phases,
        handoff_us: record.handoff_us,
        stage2_init: record.stage2_init,
        kernel: KernelEvents::default(),
        clock_offset_us: 0,
    })
}

/// Splits a console line into its printk timestamp (microseconds) and the message after it.
///
/// Accepts `[    1.234567] message`, with anything before the bracket (a serial console
/// interleaves user-space output) and a `\r` at the end.
pub fn split_timestamp(line: &str) -> Option<(u64, &str)> {
    let mut rest = line;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        if let Some(close) = after.find(']') {
            if let Some(us) = parse_seconds(after[..close].trim()) {
                let message = after[close + 1..].trim_start().trim_end_matches('\r');
                return Some((us, message));
            }
        }
        rest = after;
    }
    None
}

/// `1.234567` (seconds, up to 9 decimals) to microseconds.
fn parse_seconds(text: &str) -> Option<u64> {
    let (whole, frac) = text.split_once('.')?;
    if whole.is_empty()
        || whole.len() > 10
        || frac.is_empty()
        || frac.len() > 9
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: u64 = whole.parse().ok()?;
    let mut micros: u64 = 0;
    for (i, b) in frac.bytes().take(6).enumerate() {
        micros += u64::from(b - b'0') * 10u64.pow(5 - i as u32);
    }
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

/// Reads the kernel's timestamps of the boot milestones from a console log. Works on any
/// boot log, including one from the shell stage 1 (no timing record needed).
pub fn kernel_events(log: &str) -> KernelEvents {
    let mut ev = KernelEvents::default();
    for line in log.lines() {
        let Some((us, msg)) = split_timestamp(line) else {
            continue;
        };
        ev.last_us = Some(ev.last_us.map_or(us, |l| l.max(us)));
        if ev.run_init_us.is_none() && msg.starts_with("Run ") && msg.ends_with(" as init process")
        {
            ev.run_init_us = Some(us);
        } else if ev.stage2_us.is_none() && msg.starts_with("stage2-probe: started") {
            ev.stage2_us = Some(us);
        } else if ev.unpack_start_us.is_none()
            && msg.starts_with("Trying to unpack rootfs image as initramfs")
        {
            ev.unpack_start_us = Some(us);
        } else if ev.unpack_end_us.is_none() && msg.starts_with("Freeing initrd memory") {
            ev.unpack_end_us = Some(us);
        }
    }
    ev
}

const TIMELINE_MARKER: &str = "netboot-init: timeline ";
const INIT_PREFIX: &str = "netboot-init: ";
/// The init splits long kmsg records; a timeline spans at most this many.
const MAX_CONTINUATIONS: usize = 64;

/// Parses a captured boot log: the init's `netboot-init: timeline {...}` line (the last
/// complete one, should the log hold several boots; records the init split at the kmsg size
/// limit are joined again) plus the kernel's timestamps, with the record's times moved onto
/// the kernel's clock ([`align_to_kernel_log`]).
pub fn parse_log(log: &str) -> Result<Timeline, AnalyzeError> {
    check_size(log)?;
    let lines: Vec<&str> = log.lines().map(|l| l.trim_end_matches('\r')).collect();
    let mut last_err = AnalyzeError::NoTimelineLine;
    for (i, line) in lines.iter().enumerate().rev() {
        let Some(at) = line.find(TIMELINE_MARKER) else {
            continue;
        };
        let mut json = line[at + TIMELINE_MARKER.len()..].to_string();
        let mut parsed = parse_timeline_json(&json);
        // Continuation records carry the same prefix and the next piece of the text.
        let continuations = lines[i + 1..]
            .iter()
            .filter_map(|l| l.find(INIT_PREFIX).map(|p| &l[p + INIT_PREFIX.len()..]))
            .take(MAX_CONTINUATIONS);
        for piece in continuations {
            if parsed.is_ok() {
                break;
            }
            json.push_str(piece);
            parsed = parse_timeline_json(&json);
        }
        match parsed {
            Ok(mut timeline) => {
                timeline.kernel = kernel_events(log);
                align_to_kernel_log(&mut timeline, log);
                return Ok(timeline);
            }
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

/// The printk time of each `netboot-init: <phase> done in` line against the phase's recorded
/// end gives the offset between the two clocks; the smallest difference is the one with the
/// least logging delay. Shifts every time in `t` by it and returns it (0 when the log has no
/// such lines).
pub fn align_to_kernel_log(t: &mut Timeline, log: &str) -> i64 {
    let mut best: Option<i64> = None;
    for line in log.lines() {
        let Some((ts, msg)) = split_timestamp(line) else {
            continue;
        };
        let Some(rest) = msg.strip_prefix(INIT_PREFIX) else {
            continue;
        };
        let Some((name, _)) = rest.split_once(" done in ") else {
            continue;
        };
        if let Some(p) = t.phases.iter().find(|p| p.name == name) {
            let d = ts as i64 - p.end_us as i64;
            best = Some(best.map_or(d, |b| b.min(d)));
        }
    }
    let offset = best.unwrap_or(0);
    let shift = |us: u64| (us as i64).saturating_add(offset).max(0) as u64;
    t.init_start_us = shift(t.init_start_us);
    for p in &mut t.phases {
        p.start_us = shift(p.start_us);
        p.end_us = shift(p.end_us);
    }
    t.handoff_us = t.handoff_us.map(shift);
    t.clock_offset_us += offset;
    offset
}

/// Reads either form: JSON if the text starts with `{`, else a boot log.
pub fn parse_any(text: &str) -> Result<Timeline, AnalyzeError> {
    if text.trim_start().starts_with('{') {
        parse_timeline_json(text)
    } else {
        parse_log(text)
    }
}

/// One row of the table and one bar of the picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub label: String,
    pub start_us: u64,
    pub end_us: u64,
    pub ok: bool,
    pub summary: String,
    pub kind: RowKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    /// Kernel work before stage 1 (boot, initramfs unpack).
    Kernel,
    /// Between the kernel's exec and the init's first clock read, or after the hand-off.
    Gap,
    /// A phase the init recorded.
    Phase,
}

impl Row {
    pub fn duration_us(&self) -> u64 {
        self.end_us.saturating_sub(self.start_us)
    }
}

fn cut(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= MAX_TEXT_CHARS {
        one_line
    } else {
        let mut s: String = one_line.chars().take(MAX_TEXT_CHARS - 1).collect();
        s.push('…');
        s
    }
}

/// The stage-1 rows: exec gap, each phase, hand-off gap.
pub fn stage1_rows(t: &Timeline) -> Vec<Row> {
    let mut rows = Vec::new();
    if let Some(run) = t.kernel.run_init_us {
        if run <= t.init_start_us {
            rows.push(Row {
                label: "exec /init".into(),
                start_us: run,
                end_us: t.init_start_us,
                ok: true,
                summary: "kernel exec of /init to the init's first clock read".into(),
                kind: RowKind::Gap,
            });
        }
    }
    for p in &t.phases {
        rows.push(Row {
            label: cut(&p.name),
            start_us: p.start_us,
            end_us: p.end_us,
            ok: p.ok,
            summary: cut(&p.summary),
            kind: RowKind::Phase,
        });
    }
    if let (Some(handoff), Some(stage2)) = (t.handoff_us, t.kernel.stage2_us) {
        if stage2 >= handoff {
            let init = t.stage2_init.as_deref().unwrap_or("the stage-2 init");
            rows.push(Row {
                label: "exec stage 2".into(),
                start_us: handoff,
                end_us: stage2,
                ok: true,
                summary: cut(&format!("hand-off to {init}, until its first message")),
                kind: RowKind::Gap,
            });
        }
    }
    rows
}

/// The whole-boot rows: the kernel until `/init`, the initramfs unpack, stage 1.
pub fn boot_rows(t: &Timeline) -> Vec<Row> {
    let mut rows = Vec::new();
    let s1 = t.stage1_start_us();
    rows.push(Row {
        label: "kernel".into(),
        start_us: 0,
        end_us: s1,
        ok: true,
        summary: "boot until Run /init as init process".into(),
        kind: RowKind::Kernel,
    });
    if let (Some(a), Some(b)) = (t.kernel.unpack_start_us, t.kernel.unpack_end_us) {
        if b >= a {
            rows.push(Row {
                label: "initramfs unpack".into(),
                start_us: a,
                end_us: b,
                ok: true,
                summary: "Trying to unpack rootfs image … Freeing initrd memory".into(),
                kind: RowKind::Kernel,
            });
        }
    }
    rows.push(Row {
        label: "stage 1".into(),
        start_us: s1,
        end_us: t.stage1_end_us(),
        ok: t.phases.iter().all(|p| p.ok),
        summary: format!("{} phases", t.phases.len()),
        kind: RowKind::Phase,
    });
    rows
}

fn ms(us: u64) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

/// The text table: phase, start (ms since boot), duration, share of stage 1, summary.
pub fn render_table(t: &Timeline) -> String {
    let total = t.stage1_us();
    let mut rows: Vec<(String, String, String, String, String)> = Vec::new();
    if t.kernel.run_init_us.is_some() {
        for r in boot_rows(t).iter().filter(|r| r.kind == RowKind::Kernel) {
            rows.push((
                r.label.clone(),
                ms(r.start_us),
                ms(r.duration_us()),
                "-".into(),
                r.summary.clone(),
            ));
        }
    }
    for r in stage1_rows(t) {
        let mut summary = r.summary.clone();
        if !r.ok {
            summary = format!("FAILED: {summary}");
        }
        rows.push((
            r.label.clone(),
            ms(r.start_us),
            ms(r.duration_us()),
            share(r.duration_us(), total),
            summary,
        ));
    }
    let phases_us: u64 = t.phases.iter().map(Phase::duration_us).sum();
    let other = total.saturating_sub(phases_us);
    let mut footer = vec![(
        "stage 1 total".to_string(),
        ms(t.stage1_start_us()),
        ms(total),
        share(total, total),
        stage1_basis(t),
    )];
    if other > 0 {
        footer.push((
            "outside phases".into(),
            "-".into(),
            ms(other),
            share(other, total),
            "exec, process start-up, hand-off, gaps between phases".into(),
        ));
    }

    let header = (
        "phase".to_string(),
        "start ms".to_string(),
        "duration ms".to_string(),
        "share".to_string(),
        "summary".to_string(),
    );
    let all: Vec<_> = std::iter::once(&header)
        .chain(rows.iter())
        .chain(footer.iter())
        .collect();
    let w0 = all.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let w1 = all.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let w2 = all.iter().map(|r| r.2.len()).max().unwrap_or(0);
    let w3 = all.iter().map(|r| r.3.len()).max().unwrap_or(0);
    let line = |r: &(String, String, String, String, String)| {
        let pad = w0 - r.0.chars().count().min(w0);
        format!(
            "{}{}  {:>w1$}  {:>w2$}  {:>w3$}  {}",
            r.0,
            " ".repeat(pad),
            r.1,
            r.2,
            r.3,
            r.4
        )
        .trim_end()
        .to_string()
    };
    let mut out = String::new();
    if let Some(release) = &t.kernel_release {
        let _ = writeln!(out, "kernel {release}");
    }
    let _ = writeln!(out, "{}", line(&header));
    for r in &rows {
        let _ = writeln!(out, "{}", line(r));
    }
    let _ = writeln!(out, "{}", "-".repeat(w0 + w1 + w2 + w3 + 8));
    for r in &footer {
        let _ = writeln!(out, "{}", line(r));
    }
    out
}

fn stage1_basis(t: &Timeline) -> String {
    let from = if t.kernel.run_init_us.is_some() {
        "Run /init"
    } else {
        "init start"
    };
    let to = if t.kernel.stage2_us.is_some() {
        "stage 2 started"
    } else if t.handoff_us.is_some() {
        "hand-off"
    } else {
        "last phase"
    };
    format!("{from} to {to}")
}

/// XML text/attribute escaping.
pub fn escape_xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A 1-2-5 step giving at most about `max_ticks` ticks over `range_us`.
pub fn tick_step_us(range_us: u64, max_ticks: u64) -> u64 {
    let max_ticks = max_ticks.max(1);
    let mut step = 1u64;
    loop {
        for m in [1u64, 2, 5] {
            let s = step.saturating_mul(m);
            if range_us / s <= max_ticks {
                return s;
            }
        }
        if step > u64::MAX / 10 {
            return u64::MAX;
        }
        step *= 10;
    }
}

const LABEL_W: f64 = 150.0;
const SVG_NOTE_CHARS: usize = 100;
const CHART_W: f64 = 720.0;
const ROW_H: f64 = 22.0;
const BAR_H: f64 = 16.0;
const AXIS_H: f64 = 28.0;
const TITLE_H: f64 = 26.0;

struct Panel<'a> {
    title: String,
    from_us: u64,
    to_us: u64,
    rows: &'a [Row],
    /// Vertical markers (label, time).
    markers: Vec<(String, u64)>,
}

fn fmt_ms_short(us: u64) -> String {
    if us / 1000 * 1000 == us {
        format!("{}", us / 1000)
    } else if us / 100 * 100 == us {
        format!("{:.1}", us as f64 / 1000.0)
    } else {
        format!("{:.3}", us as f64 / 1000.0)
    }
}

/// Writes one panel at `top`; returns its height and the right edge of its widest text.
fn render_panel(svg: &mut String, panel: &Panel, top: f64, id: &str) -> (f64, f64) {
    let mut right = LABEL_W + CHART_W + 40.0;
    let range = panel.to_us.saturating_sub(panel.from_us).max(1);
    let scale = CHART_W / range as f64;
    let x_of = |us: u64| LABEL_W + (us.saturating_sub(panel.from_us)) as f64 * scale;
    let chart_top = top + TITLE_H + AXIS_H;
    let chart_h = panel.rows.len() as f64 * ROW_H + 6.0;

    let _ = writeln!(
        svg,
        r#"<g id="{id}"><text class="title" x="10" y="{:.1}">{}</text>"#,
        top + 18.0,
        escape_xml(&panel.title)
    );
    // Axis: ticks and grid lines in ms from boot.
    let step = tick_step_us(range, 10);
    let first = panel.from_us.div_ceil(step) * step;
    let mut tick = first;
    while tick <= panel.to_us {
        let x = x_of(tick);
        let _ = writeln!(
            svg,
            r#"<line class="grid" x1="{x:.2}" y1="{:.1}" x2="{x:.2}" y2="{:.1}"/><text class="tick" x="{x:.2}" y="{:.1}" text-anchor="middle">{}</text>"#,
            chart_top - 4.0,
            chart_top + chart_h,
            chart_top - 8.0,
            fmt_ms_short(tick)
        );
        match tick.checked_add(step) {
            Some(next) => tick = next,
            None => break,
        }
    }
    let _ = writeln!(
        svg,
        r#"<text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">ms since boot</text>"#,
        LABEL_W - 26.0,
        chart_top - 8.0
    );
    for (i, row) in panel.rows.iter().enumerate() {
        let y = chart_top + 3.0 + i as f64 * ROW_H;
        let x = x_of(row.start_us.max(panel.from_us));
        let w = (row
            .end_us
            .min(panel.to_us)
            .saturating_sub(row.start_us.max(panel.from_us))) as f64
            * scale;
        let class = match (row.kind, row.ok) {
            (_, false) => "bar failed",
            (RowKind::Kernel, _) => "bar kernel",
            (RowKind::Gap, _) => "bar gap",
            (RowKind::Phase, _) => "bar phase",
        };
        let label = escape_xml(&row.label);
        let _ = writeln!(
            svg,
            r#"<text class="label" x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
            LABEL_W - 8.0,
            y + BAR_H - 4.0
        );
        // Zero-length bars still show as a hairline.
        let _ = writeln!(
            svg,
            r#"<rect class="{class}" data-row="{label}" data-duration-us="{}" x="{x:.3}" y="{y:.1}" width="{:.3}" height="{BAR_H}"><title>{label}: {} ms</title></rect>"#,
            row.duration_us(),
            w.max(0.0),
            ms(row.duration_us())
        );
        let mut note = format!("{} ms", ms(row.duration_us()));
        if !row.summary.is_empty() {
            note.push_str(" — ");
            // Long summaries stay readable in the table; the picture keeps their start.
            let summary: String = row.summary.chars().take(SVG_NOTE_CHARS).collect();
            note.push_str(&summary);
            if row.summary.chars().count() > SVG_NOTE_CHARS {
                note.push('…');
            }
        }
        if !row.ok {
            note = format!("FAILED {note}");
        }
        let note_x = (x + w + 4.0).min(LABEL_W + CHART_W + 4.0);
        // About 6.5 px per character at the note's font size.
        right = right.max(note_x + note.chars().count() as f64 * 6.5 + 10.0);
        let _ = writeln!(
            svg,
            r#"<text class="note" x="{note_x:.1}" y="{:.1}">{}</text>"#,
            y + BAR_H - 4.0,
            escape_xml(&note)
        );
    }
    for (label, at) in &panel.markers {
        if *at < panel.from_us || *at > panel.to_us {
            continue;
        }
        let x = x_of(*at);
        let _ = writeln!(
            svg,
            r#"<line class="marker" x1="{x:.2}" y1="{:.1}" x2="{x:.2}" y2="{:.1}"/><text class="marker" x="{:.2}" y="{:.1}">{}</text>"#,
            chart_top - 2.0,
            chart_top + chart_h,
            x + 3.0,
            chart_top + chart_h + 12.0,
            escape_xml(label)
        );
    }
    let _ = writeln!(svg, "</g>");
    (TITLE_H + AXIS_H + chart_h + 20.0, right)
}

/// An SVG picture in the manner of `systemd-analyze plot`: the whole boot (kernel until
/// `/init`, stage 1, stage 2's start) and, below it, stage 1 enlarged with one bar per phase.
/// Bar widths are proportional to durations within each panel; the axis is in ms since boot.
pub fn render_svg(t: &Timeline) -> String {
    let boot = boot_rows(t);
    let stage1 = stage1_rows(t);
    let s1_start = t.stage1_start_us();
    let s1_end = t.stage1_end_us();
    let mut stage2_marker = Vec::new();
    if let Some(s2) = t.kernel.stage2_us {
        stage2_marker.push(("stage 2".to_string(), s2));
    } else if let Some(h) = t.handoff_us {
        stage2_marker.push(("hand-off".to_string(), h));
    }
    let mut boot_markers = vec![("/init".to_string(), s1_start)];
    boot_markers.extend(stage2_marker.iter().cloned());
    let release = t
        .kernel_release
        .as_deref()
        .map(|r| format!(" — kernel {r}"))
        .unwrap_or_default();
    let panels = [
        Panel {
            title: format!("Boot: {} ms to stage 2{release}", ms(s1_end)),
            from_us: 0,
            to_us: s1_end,
            rows: &boot,
            markers: boot_markers,
        },
        Panel {
            title: format!("Stage 1 (netboot-init): {} ms", ms(s1_end - s1_start)),
            from_us: s1_start,
            to_us: s1_end,
            rows: &stage1,
            markers: stage2_marker,
        },
    ];

    let mut body = String::new();
    let mut y = 0.0;
    let mut width: f64 = 0.0;
    for (i, panel) in panels.iter().enumerate() {
        let (h, right) = render_panel(&mut body, panel, y, &format!("panel{}", i + 1));
        y += h;
        width = width.max(right);
    }
    let width = width.ceil();
    let height = y + 10.0;
    let mut svg = String::new();
    let _ = writeln!(svg, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0}" viewBox="0 0 {width} {height:.0}">"#
    );
    let _ = writeln!(
        svg,
        "<style>\n\
         text {{ font-family: Verdana, Helvetica, sans-serif; font-size: 12px; fill: #222; }}\n\
         text.title {{ font-size: 15px; font-weight: bold; }}\n\
         text.tick {{ font-size: 10px; fill: #555; }}\n\
         text.note {{ font-size: 11px; fill: #333; }}\n\
         text.marker {{ font-size: 10px; fill: #a33; }}\n\
         line.grid {{ stroke: #ddd; stroke-width: 1; }}\n\
         line.marker {{ stroke: #c33; stroke-width: 1.5; stroke-dasharray: 4 3; }}\n\
         rect.bar {{ stroke: none; }}\n\
         rect.kernel {{ fill: #9db4d6; }}\n\
         rect.gap {{ fill: #d9d9d9; }}\n\
         rect.phase {{ fill: #e0a040; }}\n\
         rect.failed {{ fill: #d04040; }}\n\
         </style>"
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{width}" height="{height:.0}" fill="white"/>"#
    );
    svg.push_str(&body);
    svg.push_str("</svg>\n");
    svg
}

const USAGE: &str = "usage: netboot-init analyze [--svg OUT] FILE\n\
\n\
FILE is /run/netboot-init/timeline.json (the init's timing record) or a captured boot log\n\
(serial console text with kernel timestamps and the `netboot-init: timeline {...}` line);\n\
`-` reads standard input. Prints a table of the stage-1 phases; --svg also writes an SVG\n\
timeline like `systemd-analyze plot`.";

/// `netboot-init analyze ARGS...` (the arguments after `analyze`). Returns the exit status.
pub fn main(args: &[String]) -> i32 {
    let mut svg_out: Option<String> = None;
    let mut file: Option<String> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return 0;
            }
            "--svg" => match it.next() {
                Some(out) => svg_out = Some(out.clone()),
                None => {
                    eprintln!("netboot-init analyze: --svg needs a file name\n{USAGE}");
                    return 2;
                }
            },
            s if s.starts_with("--svg=") => svg_out = Some(s["--svg=".len()..].to_string()),
            s if s.starts_with('-') && s != "-" => {
                eprintln!("netboot-init analyze: unknown option {s}\n{USAGE}");
                return 2;
            }
            s => {
                if file.replace(s.to_string()).is_some() {
                    eprintln!("netboot-init analyze: more than one input file\n{USAGE}");
                    return 2;
                }
            }
        }
    }
    let Some(file) = file else {
        eprintln!("netboot-init analyze: no input file\n{USAGE}");
        return 2;
    };
    match run(&file, svg_out.as_deref()) {
        Ok(table) => {
            print!("{table}");
            0
        }
        Err(e) => {
            eprintln!("netboot-init analyze: {e:#}");
            1
        }
    }
}

fn read_input(file: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use std::io::Read as _;
    let mut bytes = Vec::new();
    let limit = MAX_INPUT_BYTES as u64 + 1;
    if file == "-" {
        std::io::stdin()
            .take(limit)
            .read_to_end(&mut bytes)
            .context("reading standard input")?;
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(limit).read_to_end(&mut bytes))
            .with_context(|| format!("reading {file}"))?;
    }
    // Serial captures may carry stray non-UTF-8 bytes (firmware output); keep the rest.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn run(file: &str, svg_out: Option<&str>) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let text = read_input(file)?;
    let timeline = parse_any(&text).with_context(|| format!("reading {file}"))?;
    if let Some(out) = svg_out {
        std::fs::write(Path::new(out), render_svg(&timeline))
            .with_context(|| format!("writing {out}"))?;
    }
    Ok(render_table(&timeline))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = r#"{"version":1,"clock":"monotonic","kernelRelease":"6.12.95+deb12-amd64",
        "initStartUs":1000800,
        "phases":[
          {"name":"frame","startUs":1000800,"endUs":1002800,"ok":true,"summary":"proc sys dev run"},
          {"name":"modules","startUs":1002800,"endUs":1012800,"ok":true,"summary":"5 loaded"},
          {"name":"mounts","startUs":1012800,"endUs":1042800,"ok":true,"summary":"4 mounts"},
          {"name":"registration","startUs":1042800,"endUs":1047800,"ok":true,"summary":"prebuilt <db> & \"x\""},
          {"name":"switch_root","startUs":1047800,"endUs":1048800,"ok":true,"summary":"exec"}],
        "handoffUs":1048800,"stage2Init":"/nix/store/abc-system/init"}"#;

    fn log_with(record: &str) -> String {
        format!(
            "SeaBIOS (version 1.16)\r\n\
             [    0.000000] Linux version 6.12.95+deb12-amd64\r\n\
             [    0.412000] Trying to unpack rootfs image as initramfs...\r\n\
             [    0.512345] Freeing initrd memory: 20480K\r\n\
             [    1.000000] Run /init as init process\r\n\
             [    1.002800] netboot-init: frame done in 2.00 ms: proc sys dev run\r\n\
             [    1.048900] netboot-init: timeline {}\r\n\
             [    1.050000] stage2-probe: started\r\n\
             [    1.200000] reboot: Power down\r\n",
            record.replace('\n', " ")
        )
    }

    #[test]
    fn timestamps() {
        let cases: &[(&str, Option<(u64, &str)>)] = &[
            ("[    1.234567] Run /init", Some((1_234_567, "Run /init"))),
            ("[12345.000001] x\r", Some((12_345_000_001, "x"))),
            ("junk[    0.5] y", Some((500_000, "y"))),
            ("[ 1.2345678901] z", None), // more than 9 decimals
            ("[abc] [  2.000000] w", Some((2_000_000, "w"))),
            ("[    1234567] no dot", None),
            ("no bracket", None),
            ("[", None),
            ("[.5] x", None),
            ("[5.] x", None),
            ("[99999999999999.1] overflow", None),
        ];
        for (line, want) in cases {
            assert_eq!(split_timestamp(line), *want, "{line:?}");
        }
    }

    #[test]
    fn kernel_events_from_log() {
        // The kernel echoes its command line and init's arguments, which may quote the marker.
        let echoed = format!(
            "[    0.000000] Kernel command line: init=/x -- -c \"echo stage2-probe: started\"\n\
             [    0.900000]     echo stage2-probe: started\n{}",
            log_with(RECORD)
        );
        assert_eq!(kernel_events(&echoed).stage2_us, Some(1_050_000));
        let ev = kernel_events(&log_with(RECORD));
        assert_eq!(ev.run_init_us, Some(1_000_000));
        assert_eq!(ev.stage2_us, Some(1_050_000));
        assert_eq!(ev.unpack_us(), Some(100_345));
        assert_eq!(ev.stage1_us(), Some(50_000));
        assert_eq!(ev.last_us, Some(1_200_000));
        // Other init paths count too (the shell stage 1 is also /init; a custom rdinit= is not).
        let ev = kernel_events(
            "[ 2.000000] Run /sbin/init as init process\n[ 2.5] stage2-probe: started\n",
        );
        assert_eq!(ev.stage1_us(), Some(500_000));
        assert_eq!(kernel_events("").stage1_us(), None);
    }

    #[test]
    fn parses_record_and_log() {
        let t = parse_timeline_json(RECORD).unwrap();
        assert_eq!(t.phases.len(), 5);
        assert_eq!(t.phase("mounts").unwrap().duration_us(), 30_000);
        assert_eq!(t.stage1_us(), 48_000);
        let t = parse_log(&log_with(RECORD)).unwrap();
        assert_eq!(t.kernel.run_init_us, Some(1_000_000));
        assert_eq!(t.stage1_us(), 50_000);
        assert_eq!(parse_any(RECORD).unwrap().phases.len(), 5);
        assert_eq!(parse_any(&log_with(RECORD)).unwrap().stage1_us(), 50_000);
    }

    #[test]
    fn split_records_and_clock_offset() {
        // The record cut into kmsg-sized pieces, and its clock 50 ms ahead of printk's.
        let json = RECORD
            .replace('\n', " ")
            .replace("\"initStartUs\":1000800", "\"initStartUs\":1050800");
        let mut shifted = json.clone();
        for (from, to) in [
            (1002800, 1052800),
            (1012800, 1062800),
            (1042800, 1092800),
            (1047800, 1097800),
            (1048800, 1098800),
        ] {
            shifted = shifted.replace(&from.to_string(), &to.to_string());
        }
        shifted = shifted.replacen("\"startUs\":1000800", "\"startUs\":1050800", 1);
        let (a, b) = shifted.split_at(100);
        let (b, c) = b.split_at(150);
        let log = format!(
            "[    1.000000] Run /init as init process\n\
             [    1.003000] netboot-init: frame done in 2.00 ms: x\n\
             [    1.042900] netboot-init: mounts done in 30.00 ms: y\n\
             [    1.048900] netboot-init: timeline {a}\n\
             [    1.048901] netboot-init: {b}\n\
             [    1.048901] some other kernel line\n\
             [    1.048902] netboot-init: {c}\n\
             [    1.050000] stage2-probe: started\n"
        );
        let t = parse_log(&log).unwrap();
        // Mounts logged 100 us after its end, frame 200 us: the smaller delay wins.
        assert_eq!(t.clock_offset_us, -49_900);
        assert_eq!(t.init_start_us, 1_000_900);
        assert_eq!(t.phase("mounts").unwrap().end_us, 1_042_900);
        assert_eq!(t.handoff_us, Some(1_048_900));
        assert_eq!(t.phase("mounts").unwrap().duration_us(), 30_000);
        // Without the last piece the record is incomplete.
        let cut = log.replace(&format!("netboot-init: {c}"), "x");
        assert!(matches!(parse_log(&cut), Err(AnalyzeError::Json(_))));
    }

    #[test]
    fn bad_inputs() {
        type Check = fn(&AnalyzeError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, AnalyzeError::NoTimelineLine)),
            ("{", |e| matches!(e, AnalyzeError::Json(_))),
            (r#"{"version":2,"initStartUs":1}"#, |e| {
                matches!(e, AnalyzeError::Version(2))
            }),
            (r#"{"version":1}"#, |e| matches!(e, AnalyzeError::Json(_))),
            (
                r#"{"version":1,"initStartUs":1,"phases":[{"name":"x","startUs":5,"endUs":4}]}"#,
                |e| matches!(e, AnalyzeError::PhaseOrder { index: 0, .. }),
            ),
            (
                "[ 1.0] netboot-init: timeline {\"version\":1,\"initStartUs\":1,\"phases\":[{\"na",
                |e| matches!(e, AnalyzeError::Json(_)),
            ),
        ];
        for (text, check) in cases {
            let err = parse_any(text).unwrap_err();
            assert!(check(&err), "{text:?}: {err}");
        }
        let many: Vec<String> = (0..=MAX_PHASES)
            .map(|i| format!(r#"{{"name":"p{i}","startUs":{i},"endUs":{i}}}"#))
            .collect();
        let text = format!(
            r#"{{"version":1,"initStartUs":0,"phases":[{}]}}"#,
            many.join(",")
        );
        assert_eq!(
            parse_timeline_json(&text).unwrap_err(),
            AnalyzeError::TooManyPhases(MAX_PHASES + 1)
        );
    }

    #[test]
    fn never_panics_on_junk() {
        let seeds = [RECORD.to_string(), log_with(RECORD)];
        for seed in &seeds {
            let bytes = seed.as_bytes();
            for cut_at in (0..bytes.len()).step_by(7) {
                let text = String::from_utf8_lossy(&bytes[..cut_at]);
                if let Ok(t) = parse_any(&text) {
                    let _ = render_table(&t);
                    let _ = render_svg(&t);
                }
            }
        }
        // Times out of order with the kernel's view still render.
        let mut t = parse_timeline_json(RECORD).unwrap();
        t.kernel.run_init_us = Some(5_000_000);
        t.kernel.stage2_us = Some(10);
        check_well_formed(&render_svg(&t)).unwrap();
        let _ = render_table(&t);
        let _ = render_svg(&Timeline::default());
    }

    #[test]
    fn table() {
        let t = parse_log(&log_with(RECORD)).unwrap();
        let table = render_table(&t);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "kernel 6.12.95+deb12-amd64");
        assert!(lines[1].starts_with("phase"), "{table}");
        let row = |name: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(&format!("{name}  ")))
                .unwrap_or_else(|| panic!("no row {name} in\n{table}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(row("kernel")[1..3], ["0.000", "1000.000"]);
        assert_eq!(row("initramfs unpack")[2..4], ["412.000", "100.345"]);
        assert_eq!(row("exec /init")[2..5], ["1000.000", "0.800", "1.6%"]);
        assert_eq!(row("mounts")[1..4], ["1012.800", "30.000", "60.0%"]);
        assert_eq!(row("modules")[1..5], ["1002.800", "10.000", "20.0%", "5"]);
        assert_eq!(row("exec stage 2")[3..6], ["1048.800", "1.200", "2.4%"]);
        assert_eq!(row("stage 1 total")[3..6], ["1000.000", "50.000", "100.0%"]);
        assert_eq!(row("outside phases")[2..5], ["-", "2.000", "4.0%"]);
        // A failed phase says so.
        let mut t = t;
        t.phases[2].ok = false;
        assert!(render_table(&t).contains("FAILED: 4 mounts"));
    }

    /// A small XML well-formedness checker: balanced tags, quoted attributes, known entities.
    fn check_well_formed(xml: &str) -> Result<Vec<String>, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        let mut rest = xml.trim_start();
        if let Some(r) = rest.strip_prefix("<?xml") {
            rest = &r[r.find("?>").ok_or("unterminated declaration")? + 2..];
        }
        let check_text = |text: &str| -> Result<(), String> {
            let mut t = text;
            while let Some(i) = t.find('&') {
                let end = t[i..].find(';').ok_or(format!("bare & in {text:?}"))?;
                let entity = &t[i + 1..i + end];
                if !["amp", "lt", "gt", "quot", "apos"].contains(&entity) {
                    return Err(format!("unknown entity {entity}"));
                }
                t = &t[i + end + 1..];
            }
            Ok(())
        };
        let mut roots = 0;
        while !rest.is_empty() {
            let lt = rest.find('<').unwrap_or(rest.len());
            let text = &rest[..lt];
            if stack.is_empty() && !text.trim().is_empty() {
                return Err(format!("text outside the root: {text:?}"));
            }
            check_text(text)?;
            rest = &rest[lt..];
            if rest.is_empty() {
                break;
            }
            let gt = rest.find('>').ok_or("unterminated tag")?;
            let tag = &rest[1..gt];
            rest = &rest[gt + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().ok_or(format!("close {name} without open"))?;
                if open != name.trim() {
                    return Err(format!("close {name} does not match {open}"));
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let tag = tag.trim_end_matches('/');
            let name_end = tag.find(char::is_whitespace).unwrap_or(tag.len());
            let name = &tag[..name_end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(format!("bad tag name {name:?}"));
            }
            // Attributes: name="value" pairs, values without < or bare &.
            let mut attrs = tag[name_end..].trim();
            let mut names = Vec::new();
            while !attrs.is_empty() {
                let eq = attrs
                    .find('=')
                    .ok_or(format!("attribute without value in {tag}"))?;
                let an = attrs[..eq].trim();
                if names.contains(&an) {
                    return Err(format!("duplicate attribute {an} in {tag}"));
                }
                names.push(an);
                let after = &attrs[eq + 1..];
                let after = after
                    .strip_prefix('"')
                    .ok_or(format!("unquoted {an} in {tag}"))?;
                let close = after.find('"').ok_or("unterminated attribute")?;
                let value = &after[..close];
                if value.contains('<') {
                    return Err(format!("< in attribute {an}"));
                }
                check_text(value)?;
                attrs = after[close + 1..].trim_start();
            }
            if stack.is_empty() {
                roots += 1;
            }
            seen.push(name.to_string());
            if !self_closing {
                stack.push(name.to_string());
            }
        }
        if !stack.is_empty() {
            return Err(format!("unclosed {stack:?}"));
        }
        if roots != 1 {
            return Err(format!("{roots} root elements"));
        }
        Ok(seen)
    }

    #[test]
    fn checker_catches_errors() {
        for bad in [
            "<svg><g></svg>",
            "<svg a=1></svg>",
            "<svg>&foo;</svg>",
            "<svg>a & b</svg>",
            "<svg></svg><svg></svg>",
            "<svg a=\"1\" a=\"2\"/>",
        ] {
            assert!(check_well_formed(bad).is_err(), "{bad}");
        }
        assert!(check_well_formed("<?xml version=\"1.0\"?><svg><g a=\"&lt;\"/>x</svg>").is_ok());
    }

    /// The `<rect>` bars of one panel: (row label, x, width).
    fn bars(svg: &str, panel: &str) -> Vec<(String, f64, f64)> {
        let start = svg.find(&format!("<g id=\"{panel}\"")).unwrap();
        let end = start + svg[start..].find("</g>").unwrap();
        let attr = |tag: &str, name: &str| -> String {
            let k = format!(" {name}=\"");
            let i = tag.find(&k).unwrap() + k.len();
            tag[i..i + tag[i..].find('"').unwrap()].to_string()
        };
        svg[start..end]
            .split("<rect ")
            .skip(1)
            .map(|tag| {
                let tag = &tag[..tag.find('>').unwrap()];
                (
                    attr(tag, "data-row"),
                    attr(tag, "x").parse().unwrap(),
                    attr(tag, "width").parse().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn svg_is_well_formed_and_proportional() {
        let t = parse_log(&log_with(RECORD)).unwrap();
        let svg = render_svg(&t);
        let elements = check_well_formed(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert_eq!(elements[0], "svg");
        // The summary with markup characters is escaped, not raw.
        assert!(svg.contains("prebuilt &lt;db&gt; &amp; &quot;x&quot;"));

        let stage1 = bars(&svg, "panel2");
        let labels: Vec<&str> = stage1.iter().map(|b| b.0.as_str()).collect();
        assert_eq!(
            labels,
            [
                "exec /init",
                "frame",
                "modules",
                "mounts",
                "registration",
                "switch_root",
                "exec stage 2"
            ]
        );
        // Widths proportional to durations: mounts 30 ms, modules 10 ms, frame 2 ms.
        let w = |name: &str| stage1.iter().find(|b| b.0 == name).unwrap().2;
        assert!((w("mounts") / w("modules") - 3.0).abs() < 1e-3);
        assert!((w("modules") / w("frame") - 5.0).abs() < 1e-3);
        // The bars tile the panel: each starts where the previous ended, and they fill it.
        for pair in stage1.windows(2) {
            assert!((pair[0].1 + pair[0].2 - pair[1].1).abs() < 1e-2, "{pair:?}");
        }
        let total: f64 = stage1.iter().map(|b| b.2).sum();
        assert!((total - CHART_W).abs() < 1e-2);

        let boot = bars(&svg, "panel1");
        let labels: Vec<&str> = boot.iter().map(|b| b.0.as_str()).collect();
        assert_eq!(labels, ["kernel", "initramfs unpack", "stage 1"]);
        // kernel 1000 ms vs stage 1 50 ms.
        assert!((boot[0].2 / boot[2].2 - 20.0).abs() < 1e-3);
    }

    #[test]
    fn ticks() {
        assert_eq!(tick_step_us(1000, 10), 100);
        assert_eq!(tick_step_us(48_000, 10), 5_000);
        assert_eq!(tick_step_us(3_000_000, 10), 500_000);
        assert_eq!(tick_step_us(0, 10), 1);
        assert!(tick_step_us(u64::MAX, 10) > 0);
    }

    #[test]
    fn cli() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("boot.log");
        std::fs::write(&log, log_with(RECORD)).unwrap();
        let svg = dir.path().join("t.svg");
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            main(&args(&[
                "--svg",
                svg.to_str().unwrap(),
                log.to_str().unwrap()
            ])),
            0
        );
        check_well_formed(&std::fs::read_to_string(&svg).unwrap()).unwrap();
        assert_eq!(main(&args(&[])), 2);
        assert_eq!(main(&args(&["--svg"])), 2);
        assert_eq!(main(&args(&["--bogus", "x"])), 2);
        assert_eq!(main(&args(&["a", "b"])), 2);
        assert_eq!(
            main(&args(&[dir.path().join("missing").to_str().unwrap()])),
            1
        );
        let bad = dir.path().join("bad.log");
        std::fs::write(&bad, "[ 1.0] Run /init as init process\n").unwrap();
        assert_eq!(main(&args(&[bad.to_str().unwrap()])), 1);
    }
}
