//! The system profile as `nix-env -p /nix/var/nix/profiles/system --set <toplevel>` makes it
//! (checked against Nix 2.8):
//!
//! ```text
//! /nix/var/nix/profiles/system-1-link -> /nix/store/...-nixos-system-...   (absolute)
//! /nix/var/nix/profiles/system        -> system-1-link                     (relative)
//! /nix/var/nix/gcroots/auto/<base32 sha1 of the link path> -> /nix/var/nix/profiles/system-1-link
//! ```
//!
//! The last one is the indirect GC root `addPermRoot` registers. Like nix-env, an existing
//! newest generation pointing at the same toplevel is reused, otherwise the next number is used.

use super::{parse, sys_err, under, RegistrationError, RegistrationOps};
use std::path::Path;

/// Nix's profiles directory, inside the new root.
pub const PROFILES_DIR: &str = "/nix/var/nix/profiles";
/// The system profile's name in [`PROFILES_DIR`].
pub const SYSTEM_PROFILE: &str = "system";
/// Nix's indirect GC roots, inside the new root.
pub const GCROOTS_AUTO: &str = "/nix/var/nix/gcroots/auto";

/// Points the system profile of `target` at `toplevel`; returns the generation link's name.
pub fn set_system_profile<S: RegistrationOps>(
    sys_ops: &S,
    target: &Path,
    toplevel: &str,
) -> Result<String, RegistrationError> {
    let (dir_inner, name) = (PROFILES_DIR, SYSTEM_PROFILE);
    let dir = under(target, dir_inner);
    sys_ops.mkdir_all(&dir).map_err(sys_err("mkdir", &dir))?;

    let (last, last_target) = newest_generation(&dir, name);
    let number = match (last, last_target) {
        (Some(n), Some(t)) if t == toplevel => n,
        (Some(n), _) => n + 1,
        (None, _) => 1,
    };
    let generation = format!("{name}-{number}-link");
    let generation_path = dir.join(&generation);
    if Some(number) != last {
        sys_ops
            .symlink(Path::new(toplevel), &generation_path)
            .map_err(sys_err("symlink", &generation_path))?;
    }

    // The indirect GC root names the link as seen from the booted system.
    let inner_link = format!("{dir_inner}/{generation}");
    let auto = under(target, GCROOTS_AUTO);
    sys_ops.mkdir_all(&auto).map_err(sys_err("mkdir", &auto))?;
    let root = auto.join(parse::nix_base32_encode(&sha1(inner_link.as_bytes())));
    if std::fs::symlink_metadata(&root).is_err() {
        sys_ops
            .symlink(Path::new(&inner_link), &root)
            .map_err(sys_err("symlink", &root))?;
    }

    // switchLink: relative target, replaced atomically if it exists.
    let link = dir.join(name);
    if std::fs::symlink_metadata(&link).is_ok() {
        let tmp = dir.join(format!(".{name}-{number}-link.tmp"));
        sys_ops
            .symlink(Path::new(&generation), &tmp)
            .map_err(sys_err("symlink", &tmp))?;
        sys_ops
            .rename(&tmp, &link)
            .map_err(sys_err("rename", &link))?;
    } else {
        sys_ops
            .symlink(Path::new(&generation), &link)
            .map_err(sys_err("symlink", &link))?;
    }
    Ok(generation)
}

/// The highest `<name>-<n>-link` in `dir` and where it points.
fn newest_generation(dir: &Path, name: &str) -> (Option<u64>, Option<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (None, None);
    };
    let prefix = format!("{name}-");
    let newest = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let n: u64 = file
                .strip_prefix(&prefix)?
                .strip_suffix("-link")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n);
    match newest {
        Some((n, path)) => (
            Some(n),
            std::fs::read_link(path)
                .ok()
                .map(|t| t.to_string_lossy().into_owned()),
        ),
        None => (None, None),
    }
}

/// SHA-1 (FIPS 180-4), only for naming the GC root as Nix does.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hi = hi.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (i, v) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn sha1_vectors() {
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex(&sha1(&[b'a'; 1000])),
            "291e9a6c66994949b57ba5e650361e98fc36b1ba"
        );
    }

    #[test]
    fn gc_root_name_matches_nix_env() {
        // What Nix 2.8's nix-env --set made for this link path in a scratch root.
        let link = "/tmp/nixt/root/nix/var/nix/profiles/system-1-link";
        assert_eq!(
            parse::nix_base32_encode(&sha1(link.as_bytes())),
            "8jrj8ik44wgjiirg24q9vjgbl56gbb1d"
        );
    }
}
