//! The Nix path registration format: what `nix-store --dump-db` writes and `--load-db` reads
//! (nixpkgs' `closureInfo` writes the same thing to `nix-path-registration`).
//!
//! One record per path, one field per line, each line ending in `\n`:
//!
//! ```text
//! /nix/store/<hash>-<name>      the path
//! <nar hash>                    sha256, as Nix's Hash::parseAny takes it (see below)
//! <nar size>                    decimal
//! <deriver>                     a store path, or an empty line
//! <n>                           the number of references
//! <reference> x n               store paths
//! ```
//!
//! The NAR hash is `sha256:` followed by base16, Nix base32 or base64 (closureInfo writes
//! `sha256:<base32>`), the SRI form `sha256-<base64>`, or bare base16/base32 (`--dump-db`
//! writes bare base16). Like Nix, the parser requires the final newline and rejects blank
//! lines between records. [`write`] produces the same text back.

use std::fmt;

/// The store directory of every path in the file.
pub const STORE_DIR: &str = "/nix/store";
/// Largest registration accepted (a 10,000-path closure is a few MiB).
pub const MAX_FILE_SIZE: usize = 256 << 20;
/// Longest line accepted; store paths are far shorter.
pub const MAX_LINE_LEN: usize = 4096;
/// Most paths accepted in one file.
pub const MAX_PATHS: usize = 1_000_000;
/// Most references accepted for one path.
pub const MAX_REFERENCES: usize = 100_000;

/// Longest store path name Nix accepts.
const MAX_NAME_LEN: usize = 211;
/// Nix's base32 alphabet (no e, o, t, u).
const NIX_BASE32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// One registered path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub path: String,
    /// As written in the file; [`nar_hash_digest`] decodes it.
    pub nar_hash: String,
    pub nar_size: u64,
    pub deriver: Option<String>,
    pub references: Vec<String>,
}

/// What is wrong with a registration, and on which line (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("registration is {size} bytes, more than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("line {line}: {what}")]
    Line { line: usize, what: String },
}

fn line_error(line: usize, what: impl Into<String>) -> ParseError {
    ParseError::Line {
        line,
        what: what.into(),
    }
}

/// Shows a line in an error message: quoted, control characters escaped, long lines cut.
fn show(s: &str) -> String {
    let cut: String = s.chars().take(80).collect();
    let ellipsis = if cut.len() < s.len() { "..." } else { "" };
    format!("{:?}{ellipsis}", cut)
}

/// Parses a registration whose paths live in [`STORE_DIR`].
pub fn parse(text: &str) -> Result<Vec<PathInfo>, ParseError> {
    parse_in(text, STORE_DIR)
}

/// Parses a registration whose paths live in `store_dir`.
pub fn parse_in(text: &str, store_dir: &str) -> Result<Vec<PathInfo>, ParseError> {
    if text.len() > MAX_FILE_SIZE {
        return Err(ParseError::TooLarge {
            size: text.len(),
            limit: MAX_FILE_SIZE,
        });
    }
    let mut lines = Lines::new(text);
    let mut infos = Vec::new();
    while let Some((no, path)) = lines.next()? {
        if infos.len() >= MAX_PATHS {
            return Err(line_error(
                no,
                format!("more than {MAX_PATHS} paths in the registration"),
            ));
        }
        let path = store_path(no, path, store_dir, "a store path")?;
        let (no, hash) = lines.field("the NAR hash of", path)?;
        if nar_hash_digest(hash).is_none() {
            return Err(line_error(
                no,
                format!("expected a sha256 NAR hash of {path}, got {}", show(hash)),
            ));
        }
        let (no, size) = lines.field("the NAR size of", path)?;
        let nar_size = decimal(size).ok_or_else(|| {
            line_error(
                no,
                format!("expected the NAR size of {path}, got {}", show(size)),
            )
        })?;
        let (no, deriver) = lines.field("the deriver of", path)?;
        let deriver = match deriver {
            "" => None,
            d => Some(
                store_path(no, d, store_dir, "a deriver (store path or empty line)")?.to_string(),
            ),
        };
        let (no, count) = lines.field("the reference count of", path)?;
        let count = decimal(count).ok_or_else(|| {
            line_error(
                no,
                format!(
                    "expected the number of references of {path}, got {}",
                    show(count)
                ),
            )
        })?;
        if count > MAX_REFERENCES as u64 {
            return Err(line_error(
                no,
                format!("{path} has {count} references, more than the limit of {MAX_REFERENCES}"),
            ));
        }
        let mut references = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let (no, reference) = lines.field("a reference of", path)?;
            references.push(
                store_path(no, reference, store_dir, "a reference (store path)")?.to_string(),
            );
        }
        infos.push(PathInfo {
            path: path.to_string(),
            nar_hash: hash.to_string(),
            nar_size,
            deriver,
            references,
        });
    }
    Ok(infos)
}

/// Writes `infos` in the registration format; `parse(&write(x)) == x`.
pub fn write(infos: &[PathInfo]) -> String {
    let mut out = String::new();
    for info in infos {
        // Writing to a String cannot fail.
        let _ = write_one(&mut out, info);
    }
    out
}

fn write_one(out: &mut impl fmt::Write, info: &PathInfo) -> fmt::Result {
    writeln!(out, "{}", info.path)?;
    writeln!(out, "{}", info.nar_hash)?;
    writeln!(out, "{}", info.nar_size)?;
    writeln!(out, "{}", info.deriver.as_deref().unwrap_or(""))?;
    writeln!(out, "{}", info.references.len())?;
    for reference in &info.references {
        writeln!(out, "{reference}")?;
    }
    Ok(())
}

/// The lines of the file with their numbers; every line must end in `\n`.
struct Lines<'a> {
    rest: &'a str,
    no: usize,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Lines { rest: text, no: 0 }
    }

    fn next(&mut self) -> Result<Option<(usize, &'a str)>, ParseError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        self.no += 1;
        let (line, rest) = match self.rest.find('\n') {
            Some(end) => (&self.rest[..end], &self.rest[end + 1..]),
            None => {
                return Err(line_error(
                    self.no,
                    format!(
                        "{} does not end with a newline (truncated file?)",
                        show(self.rest)
                    ),
                ))
            }
        };
        if line.len() > MAX_LINE_LEN {
            return Err(line_error(
                self.no,
                format!(
                    "line is {} bytes, more than the limit of {MAX_LINE_LEN}",
                    line.len()
                ),
            ));
        }
        self.rest = rest;
        Ok(Some((self.no, line)))
    }

    /// The next line, which must exist: `what` and `path` say what was expected.
    fn field(&mut self, what: &str, path: &str) -> Result<(usize, &'a str), ParseError> {
        match self.next()? {
            Some(line) => Ok(line),
            None => Err(line_error(
                self.no + 1,
                format!("unexpected end of file, expected {what} {path}"),
            )),
        }
    }
}

fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn store_path<'a>(
    no: usize,
    s: &'a str,
    store_dir: &str,
    what: &str,
) -> Result<&'a str, ParseError> {
    if s.is_empty() {
        return Err(line_error(
            no,
            format!("expected {what}, got an empty line"),
        ));
    }
    match check_store_path(s, store_dir) {
        Ok(()) => Ok(s),
        Err(why) => Err(line_error(
            no,
            format!("expected {what}, got {}: {why}", show(s)),
        )),
    }
}

/// Checks `s` is `<store_dir>/<32 base32 chars>-<name>` with a name Nix accepts.
pub fn check_store_path(s: &str, store_dir: &str) -> Result<(), String> {
    let Some(base) = s
        .strip_prefix(store_dir)
        .and_then(|rest| rest.strip_prefix('/'))
    else {
        return Err(format!("not in {store_dir}"));
    };
    if base.contains('/') {
        return Err("not a top-level store path".into());
    }
    let bytes = base.as_bytes();
    if bytes.len() < 34 || bytes[32] != b'-' {
        return Err("expected <32-character hash>-<name>".into());
    }
    if !bytes[..32].iter().all(|b| NIX_BASE32.contains(b)) {
        return Err("hash part is not Nix base32".into());
    }
    let name = &base[33..];
    if name.len() > MAX_NAME_LEN {
        return Err(format!("name longer than {MAX_NAME_LEN} characters"));
    }
    if name.starts_with('.') {
        return Err("name starts with '.'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "+-._?=".contains(*c)))
    {
        return Err(format!("name contains {c:?}"));
    }
    Ok(())
}

/// Decodes a sha256 NAR hash in any form `nix-store --load-db` accepts.
pub fn nar_hash_digest(s: &str) -> Option<[u8; 32]> {
    if let Some(rest) = s.strip_prefix("sha256:") {
        decode_any(rest, true)
    } else if let Some(rest) = s.strip_prefix("sha256-") {
        (rest.len() == 44).then(|| base64_decode(rest)).flatten()
    } else {
        decode_any(s, false)
    }
}

fn decode_any(s: &str, base64_too: bool) -> Option<[u8; 32]> {
    match s.len() {
        64 => base16_decode(s),
        52 => nix_base32_decode(s),
        44 if base64_too => base64_decode(s),
        _ => None,
    }
}

fn base16_decode(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    let bytes = s.as_bytes();
    for (i, o) in out.iter_mut().enumerate() {
        let hi = (bytes[2 * i] as char).to_digit(16)?;
        let lo = (bytes[2 * i + 1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Nix's base32: the last character holds the lowest bits.
pub fn nix_base32_decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    let bytes = s.as_bytes();
    if bytes.len() != (N * 8 - 1) / 5 + 1 {
        return None;
    }
    let mut out = [0u8; N];
    for n in 0..bytes.len() {
        let c = bytes[bytes.len() - n - 1];
        let digit = NIX_BASE32.iter().position(|&a| a == c)? as u16;
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        out[i] |= (digit << j) as u8;
        let carry = (digit >> (8 - j)) as u8;
        if i + 1 < N {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return None;
        }
    }
    Some(out)
}

/// Nix's base32 encoding of `bytes`.
pub fn nix_base32_encode(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return String::new();
    }
    let len = (bytes.len() * 8 - 1) / 5 + 1;
    let mut s = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let lo = (bytes[i] as u16) >> j;
        let hi = if i + 1 < bytes.len() {
            (bytes[i + 1] as u16) << (8 - j)
        } else {
            0
        };
        s.push(NIX_BASE32[((lo | hi) & 0x1f) as usize] as char);
    }
    s
}

fn base64_decode(s: &str) -> Option<[u8; 32]> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    // 32 bytes: 43 symbols and one '='.
    if bytes.len() != 44 || bytes[43] != b'=' {
        return None;
    }
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut out = Vec::with_capacity(33);
    for &c in &bytes[..43] {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // The two leftover bits must be zero for a canonical encoding.
    if acc != 0 {
        return None;
    }
    out.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "/nix/store/z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-a.txt";
    const D: &str = "/nix/store/dn5phjrc3bg310dk3x7kiq365ws0ilcs-d";
    const DRV: &str = "/nix/store/0c2ylqq52q9i0jyxa9hkl5kqsa2s6aaz-d.drv";
    const HEX: &str = "601f5c23aab2a6e202fa08239321db45d8e9c7689ffa466374c31062a037664d";

    fn record(path: &str, hash: &str, size: &str, deriver: &str, refs: &[&str]) -> String {
        let mut s = format!("{path}\n{hash}\n{size}\n{deriver}\n{}\n", refs.len());
        for r in refs {
            s.push_str(r);
            s.push('\n');
        }
        s
    }

    #[test]
    fn parses_dump_db_output() {
        let text = record(D, HEX, "512", "", &[]) + &record(A, HEX, "120", DRV, &[A, D]);
        let infos = parse(&text).unwrap();
        assert_eq!(
            infos,
            vec![
                PathInfo {
                    path: D.into(),
                    nar_hash: HEX.into(),
                    nar_size: 512,
                    deriver: None,
                    references: vec![],
                },
                PathInfo {
                    path: A.into(),
                    nar_hash: HEX.into(),
                    nar_size: 120,
                    deriver: Some(DRV.into()),
                    references: vec![A.into(), D.into()],
                }
            ]
        );
        assert_eq!(write(&infos), text);
    }

    #[test]
    fn empty_file_is_no_paths() {
        assert_eq!(parse(""), Ok(vec![]));
    }

    #[test]
    fn hash_forms_decode_to_the_same_digest() {
        // sha256("abc") in each form Nix accepts.
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let b32 = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";
        let b64 = "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=";
        let want = base16_decode(hex).unwrap();
        for form in [
            hex.to_string(),
            b32.to_string(),
            format!("sha256:{hex}"),
            format!("sha256:{b32}"),
            format!("sha256:{b64}"),
            format!("sha256-{b64}"),
        ] {
            assert_eq!(nar_hash_digest(&form), Some(want), "{form}");
        }
        assert_eq!(nix_base32_encode(&want), b32);
        for bad in [
            "",
            "sha256:",
            "sha512:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
            "md5:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
            // 'e' is not in Nix's alphabet.
            "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5e",
            // The top bits of the first character overflow 256 bits.
            "zb8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015aZ",
            // Bare base64 is not accepted by Nix.
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=",
            "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa1=",
        ] {
            assert_eq!(nar_hash_digest(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn base32_round_trips_other_sizes() {
        let sha1 = [0xa9u8; 20];
        let s = nix_base32_encode(&sha1);
        assert_eq!(s.len(), 32);
        assert_eq!(nix_base32_decode::<20>(&s), Some(sha1));
    }

    #[test]
    fn errors_name_the_line() {
        let good = record(D, HEX, "512", "", &[A]);
        let cases: Vec<(String, usize, &str)> = vec![
            (
                record("nix/store/x", HEX, "1", "", &[]),
                1,
                "expected a store path",
            ),
            (
                record("/nix/store/short-x", HEX, "1", "", &[]),
                1,
                "32-character hash",
            ),
            (
                record(
                    "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x",
                    HEX,
                    "1",
                    "",
                    &[],
                ),
                1,
                "not Nix base32",
            ),
            (
                record(
                    "/nix/store/dn5phjrc3bg310dk3x7kiq365ws0ilcs-a/b",
                    HEX,
                    "1",
                    "",
                    &[],
                ),
                1,
                "not a top-level store path",
            ),
            (
                record(
                    "/nix/store/dn5phjrc3bg310dk3x7kiq365ws0ilcs-a b",
                    HEX,
                    "1",
                    "",
                    &[],
                ),
                1,
                "name contains ' '",
            ),
            (
                record(
                    "/nix/store/dn5phjrc3bg310dk3x7kiq365ws0ilcs-.x",
                    HEX,
                    "1",
                    "",
                    &[],
                ),
                1,
                "starts with '.'",
            ),
            (
                record(D, "sha256:xyz", "1", "", &[]),
                2,
                "expected a sha256 NAR hash",
            ),
            (record(D, HEX, "-1", "", &[]), 3, "expected the NAR size"),
            (
                record(D, HEX, "18446744073709551616", "", &[]),
                3,
                "NAR size",
            ),
            (
                record(D, HEX, "1", "not-a-path", &[]),
                4,
                "expected a deriver",
            ),
            (
                record(D, HEX, "1", "", &[]).replace("\n0\n", "\nx\n"),
                5,
                "number of references",
            ),
            (
                record(D, HEX, "1", "", &[]).replace("\n0\n", "\n100001\n"),
                5,
                "more than the limit",
            ),
            (
                record(D, HEX, "1", "", &["/nix/store/bad"]),
                6,
                "expected a reference",
            ),
            // Fewer references than announced.
            (
                record(D, HEX, "1", "", &[A]).replace("\n1\n", "\n2\n"),
                7,
                "unexpected end of file, expected a reference of",
            ),
            (good.clone() + D + "\n", 8, "expected the NAR hash of"),
            (
                good.trim_end().to_string(),
                6,
                "does not end with a newline",
            ),
            // A blank line between records: Nix rejects it too.
            (good.clone() + "\n" + &good, 7, "got an empty line"),
            (good.clone() + "\n", 7, "got an empty line"),
            (good.replace('\n', "\r\n"), 1, "name contains '\\r'"),
            (
                format!("{}\n", "x".repeat(MAX_LINE_LEN + 1)),
                1,
                "more than the limit",
            ),
        ];
        for (text, line, needle) in cases {
            match parse(&text) {
                Err(ParseError::Line { line: got, what }) => {
                    assert_eq!(got, line, "{text:?}: {what}");
                    assert!(what.contains(needle), "{text:?}: {what:?} lacks {needle:?}");
                }
                other => panic!("{text:?}: expected a line error, got {other:?}"),
            }
        }
    }

    #[test]
    fn long_lines_are_shown_cut() {
        let long = format!("/nix/store/{}", "a".repeat(300));
        let err = parse(&format!("{long}\n")).unwrap_err().to_string();
        assert!(err.contains("..."), "{err}");
        assert!(err.len() < 300, "{err}");
    }

    #[test]
    fn size_limit() {
        let text = "x".repeat(MAX_FILE_SIZE + 1);
        assert!(matches!(parse(&text), Err(ParseError::TooLarge { .. })));
    }

    #[test]
    fn other_store_dir() {
        let p = "/gnu/store/dn5phjrc3bg310dk3x7kiq365ws0ilcs-d";
        let text = record(p, HEX, "1", "", &[]);
        assert_eq!(parse_in(&text, "/gnu/store").unwrap()[0].path, p);
        assert!(parse(&text).is_err());
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn store_path() -> impl Strategy<Value = String> {
            (
                "[0-9a-df-np-sv-z]{32}",
                "[a-zA-Z0-9+_?=-][a-zA-Z0-9+._?=-]{0,40}",
            )
                .prop_map(|(h, n)| format!("/nix/store/{h}-{n}"))
        }

        fn info() -> impl Strategy<Value = PathInfo> {
            (
                store_path(),
                prop::array::uniform32(any::<u8>()),
                any::<u64>(),
                prop::option::of(store_path()),
                prop::collection::vec(store_path(), 0..5),
                0..3usize,
            )
                .prop_map(|(path, digest, nar_size, deriver, references, form)| {
                    let nar_hash = match form {
                        0 => digest.iter().map(|b| format!("{b:02x}")).collect(),
                        1 => format!("sha256:{}", nix_base32_encode(&digest)),
                        _ => nix_base32_encode(&digest),
                    };
                    PathInfo {
                        path,
                        nar_hash,
                        nar_size,
                        deriver,
                        references,
                    }
                })
        }

        proptest! {
            #[test]
            fn write_then_parse_round_trips(infos in prop::collection::vec(info(), 0..8)) {
                let text = write(&infos);
                prop_assert_eq!(parse(&text), Ok(infos));
            }

            #[test]
            fn never_panics(text in ".{0,400}") {
                let _ = parse(&text);
            }

            #[test]
            fn never_panics_on_mutated_records(cut in 0usize..400, junk in ".{0,3}") {
                let mut text = write(&[PathInfo {
                    path: "/nix/store/dn5phjrc3bg310dk3x7kiq365ws0ilcs-d".into(),
                    nar_hash: "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s".into(),
                    nar_size: 5,
                    deriver: None,
                    references: vec!["/nix/store/dn5phjrc3bg310dk3x7kiq365ws0ilcs-d".into()],
                }]);
                let mut cut = cut.min(text.len());
                while !text.is_char_boundary(cut) { cut -= 1; }
                text.insert_str(cut, &junk);
                let _ = parse(&text);
            }
        }
    }
}
