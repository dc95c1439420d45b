//! The overlayfs data string.
//!
//! overlayfs splits its options on unescaped `,` and `lowerdir` on unescaped `:`, then drops
//! every backslash that escapes a character (`ovl_next_opt`, `ovl_split_lowerdirs`,
//! `ovl_unescape` in `fs/overlayfs/`). So `\`, `:` and `,` in a path are written `\\`, `\:`
//! and `\,`. `mount(2)` takes one page of data: [`MAX_DATA_LEN`].

use std::path::{Path, PathBuf};

/// `mount(2)` copies at most one page of option data, including the terminating NUL.
pub const MAX_DATA_LEN: usize = 4095;

/// Escapes one path for the overlayfs option string.
pub fn escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Overlay layers, as absolute paths on the running system (already under the target root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layers {
    pub lower: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverlayError {
    #[error("overlay needs at least one lowerdir")]
    NoLower,
    #[error("overlay has an upperdir but no workdir (the kernel needs both)")]
    UpperWithoutWork,
    #[error("overlay has a workdir but no upperdir")]
    WorkWithoutUpper,
    #[error("path {0:?} is not valid UTF-8")]
    NotUtf8(PathBuf),
    #[error("overlay option data is {0} bytes; mount(2) takes at most {MAX_DATA_LEN}")]
    TooLong(usize),
}

fn esc(p: &Path) -> Result<String, OverlayError> {
    p.to_str()
        .map(escape)
        .ok_or_else(|| OverlayError::NotUtf8(p.to_path_buf()))
}

/// `lowerdir=a:b,upperdir=u,workdir=w` followed by `extra` options (e.g. `redirect_dir=on`).
pub fn data(layers: &Layers, extra: &[String]) -> Result<String, OverlayError> {
    if layers.lower.is_empty() {
        return Err(OverlayError::NoLower);
    }
    match (&layers.upper, &layers.work) {
        (Some(_), None) => return Err(OverlayError::UpperWithoutWork),
        (None, Some(_)) => return Err(OverlayError::WorkWithoutUpper),
        _ => {}
    }
    let lower = layers
        .lower
        .iter()
        .map(|p| esc(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut parts = vec![format!("lowerdir={}", lower.join(":"))];
    if let (Some(u), Some(w)) = (&layers.upper, &layers.work) {
        parts.push(format!("upperdir={}", esc(u)?));
        parts.push(format!("workdir={}", esc(w)?));
    }
    parts.extend(extra.iter().cloned());
    let s = parts.join(",");
    if s.len() > MAX_DATA_LEN {
        return Err(OverlayError::TooLong(s.len()));
    }
    Ok(s)
}

/// Splits a `lowerdir` value written the older NixOS way (`lowerdir=/a:/b` in `options`) on
/// unescaped `:`, removing the escapes.
pub fn split_lowerdir(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ':' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.retain(|s| !s.is_empty());
    out
}

/// Unescapes an `upperdir=`/`workdir=` value written in `options`.
pub fn unescape(value: &str) -> String {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_table() {
        for (input, want) in [
            ("/nix/.ro-store", "/nix/.ro-store"),
            ("/a:b", "/a\\:b"),
            ("/a,b", "/a\\,b"),
            ("/a\\b", "/a\\\\b"),
            ("/sp ace", "/sp ace"),
            (":,\\", "\\:\\,\\\\"),
        ] {
            assert_eq!(escape(input), want, "{input}");
        }
    }

    #[test]
    fn data_strings() {
        let l = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        let netboot = Layers {
            lower: l(&["/mnt-root/nix/.ro-store"]),
            upper: Some("/mnt-root/nix/.rw-store/store".into()),
            work: Some("/mnt-root/nix/.rw-store/work".into()),
        };
        assert_eq!(
            data(&netboot, &[]).unwrap(),
            "lowerdir=/mnt-root/nix/.ro-store,upperdir=/mnt-root/nix/.rw-store/store,workdir=/mnt-root/nix/.rw-store/work"
        );
        let several = Layers {
            lower: l(&["/r/a:1", "/r/b,2", "/r/c"]),
            upper: None,
            work: None,
        };
        assert_eq!(
            data(&several, &["redirect_dir=on".into()]).unwrap(),
            "lowerdir=/r/a\\:1:/r/b\\,2:/r/c,redirect_dir=on"
        );
    }

    #[test]
    fn data_errors() {
        let mut layers = Layers {
            lower: vec![],
            upper: None,
            work: None,
        };
        assert_eq!(data(&layers, &[]), Err(OverlayError::NoLower));
        layers.lower.push("/a".into());
        layers.upper = Some("/u".into());
        assert_eq!(data(&layers, &[]), Err(OverlayError::UpperWithoutWork));
        layers.upper = None;
        layers.work = Some("/w".into());
        assert_eq!(data(&layers, &[]), Err(OverlayError::WorkWithoutUpper));
        layers.work = None;
        layers.lower = vec![PathBuf::from(format!("/{}", "x".repeat(MAX_DATA_LEN)))];
        assert!(matches!(data(&layers, &[]), Err(OverlayError::TooLong(_))));
    }

    #[test]
    fn split_and_escape_round_trip() {
        let dirs = ["/a:b", "/c,d", "/e\\f", "/plain"];
        let joined = dirs.iter().map(|d| escape(d)).collect::<Vec<_>>().join(":");
        assert_eq!(split_lowerdir(&joined), dirs);
        assert_eq!(split_lowerdir("/x:/y"), ["/x", "/y"]);
        assert_eq!(unescape("/u\\:x"), "/u:x");
    }
}
