//! `/proc/self/mountinfo` (proc(5)):
//! `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`.
//! Paths carry octal escapes (`\040` for a space); [`parse`] decodes them. Malformed lines
//! are skipped, never a panic.

use std::path::Path;

/// Limits against a runaway file.
pub const MAX_LINES: usize = 100_000;
pub const MAX_LINE_LEN: usize = 64 * 1024;
/// Most bytes read (a stage 1 has a few dozen mounts of about 100 bytes each).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_id: u32,
    pub parent_id: u32,
    /// `major:minor`.
    pub device: String,
    /// The root of the mount inside its file system.
    pub root: String,
    pub mount_point: String,
    pub mount_options: String,
    pub optional: Vec<String>,
    pub fs_type: String,
    pub source: String,
    pub super_options: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountTable {
    pub mounts: Vec<MountInfo>,
    /// Lines that could not be read (line number from 1), for debug logs.
    pub skipped: Vec<usize>,
}

impl MountTable {
    /// The mount on top at `mount_point` (the last one listed there).
    pub fn find(&self, mount_point: &str) -> Option<&MountInfo> {
        self.mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == mount_point)
    }
}

/// Decodes `\NNN` octal escapes; anything else is kept as written.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_line(line: &str) -> Option<MountInfo> {
    let mut fields = line.split(' ');
    let mount_id = fields.next()?.parse().ok()?;
    let parent_id = fields.next()?.parse().ok()?;
    let device = fields.next()?.to_string();
    let root = unescape(fields.next()?);
    let mount_point = unescape(fields.next()?);
    let mount_options = fields.next()?.to_string();
    let mut optional = Vec::new();
    loop {
        let f = fields.next()?;
        if f == "-" {
            break;
        }
        if optional.len() >= 64 {
            return None;
        }
        optional.push(f.to_string());
    }
    let fs_type = unescape(fields.next()?);
    let source = unescape(fields.next()?);
    let super_options = fields.next().unwrap_or("").to_string();
    Some(MountInfo {
        mount_id,
        parent_id,
        device,
        root,
        mount_point,
        mount_options,
        optional,
        fs_type,
        source,
        super_options,
    })
}

/// Reads and parses `path` (`/proc/self/mountinfo`), at most [`MAX_FILE_BYTES`] of it.
pub fn read(path: &Path) -> std::io::Result<MountTable> {
    crate::sys::read_text_limited(path, MAX_FILE_BYTES).map(|text| parse(&text))
}

/// Parses the whole file.
pub fn parse(text: &str) -> MountTable {
    let mut table = MountTable::default();
    for (n, line) in text.lines().enumerate() {
        if n >= MAX_LINES {
            table.skipped.push(n + 1);
            break;
        }
        if line.is_empty() {
            continue;
        }
        match (line.len() <= MAX_LINE_LEN)
            .then(|| parse_line(line))
            .flatten()
        {
            Some(m) => table.mounts.push(m),
            None => table.skipped.push(n + 1),
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
40 22 0:40 / /mnt-root rw,relatime - tmpfs tmpfs rw,mode=755
41 40 7:0 / /mnt-root/nix/.ro-store ro,relatime - squashfs /dev/loop0 ro,errors=continue
42 40 0:41 / /tmp/with\\040space\\011tab rw - tmpfs none\\134x rw
43 40 0:42 / /mnt-root rw shared:1 master:2 propagate_from:3 - overlay overlay rw,lowerdir=/a
";

    #[test]
    fn parses_fields() {
        let t = parse(SAMPLE);
        assert!(t.skipped.is_empty(), "{:?}", t.skipped);
        assert_eq!(t.mounts.len(), 6);
        let m = &t.mounts[1];
        assert_eq!(
            (m.mount_id, m.parent_id, m.device.as_str(), m.root.as_str()),
            (36, 35, "98:0", "/mnt1")
        );
        assert_eq!(m.mount_point, "/mnt2");
        assert_eq!(m.mount_options, "rw,noatime");
        assert_eq!(m.optional, vec!["master:1"]);
        assert_eq!(
            (
                m.fs_type.as_str(),
                m.source.as_str(),
                m.super_options.as_str()
            ),
            ("ext3", "/dev/root", "rw,errors=continue")
        );
        assert_eq!(t.mounts[4].mount_point, "/tmp/with space\ttab");
        assert_eq!(t.mounts[4].source, "none\\x");
        assert_eq!(t.mounts[5].optional.len(), 3);
    }

    #[test]
    fn find_returns_the_top_mount() {
        let t = parse(SAMPLE);
        assert_eq!(
            t.find("/mnt-root").map(|m| m.fs_type.as_str()),
            Some("overlay")
        );
        assert_eq!(
            t.find("/mnt-root/nix/.ro-store").map(|m| m.source.as_str()),
            Some("/dev/loop0")
        );
        assert!(t.find("/mnt-root/nix").is_none());
    }

    #[test]
    fn unescape_table() {
        for (input, want) in [
            ("plain", "plain"),
            ("a\\040b", "a b"),
            ("\\134", "\\"),
            ("\\012end", "\nend"),
            ("trailing\\", "trailing\\"),
            ("short\\04", "short\\04"),
            ("\\999", "\\999"),
            ("\\777", "\\777"),
            ("\\", "\\"),
        ] {
            assert_eq!(unescape(input), want, "{input}");
        }
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let t = parse("garbage\n1 2 3\n1 2 0:1 / /x rw no-separator\n\n7 1 0:1 / /ok rw - tmpfs t rw\nx y 0:1 / /z rw - a b c\n");
        assert_eq!(t.mounts.len(), 1);
        assert_eq!(t.skipped, vec![1, 2, 3, 6]);
    }

    #[test]
    fn limits() {
        let long = format!("1 1 0:1 / /{} rw - tmpfs t rw", "a".repeat(MAX_LINE_LEN));
        assert_eq!(parse(&long).skipped, vec![1]);
    }

    #[test]
    fn read_stops_at_the_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mountinfo");
        std::fs::write(&path, SAMPLE).unwrap();
        assert_eq!(read(&path).unwrap(), parse(SAMPLE));
        let line = "22 1 0:21 / /proc rw - proc proc rw\n";
        let huge = line.repeat(MAX_FILE_BYTES as usize / line.len() + 1);
        std::fs::write(&path, huge).unwrap();
        let err = read(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("larger than the limit of {MAX_FILE_BYTES} bytes")
        );
    }
}
