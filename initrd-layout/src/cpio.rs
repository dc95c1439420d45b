//! A reproducible writer for the newc ("070701") cpio format the kernel unpacks into rootfs.
//!
//! Entries are kept in a map keyed by path, so the archive comes out sorted with every parent
//! directory before its children; owners are root, mtimes are one fixed value, inode numbers
//! are assigned from 1 in archive order. A file larger than the 32-bit size field is refused
//! when it is added (a newc archive cannot carry it, and silently dropping it is worse).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The largest file a newc header can describe.
pub const MAX_FILE_SIZE: u64 = u32::MAX as u64;

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error(
        "{path} is {size} bytes: a newc cpio archive stores sizes in 32 bits, so files \
         must be at most {max} bytes (4 GiB - 1)",
        max = MAX_FILE_SIZE
    )]
    TooLarge { path: String, size: u64 },
    #[error("invalid archive path {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("{path} is already in the archive as a {existing}")]
    Conflict {
        path: String,
        existing: &'static str,
    },
    #[error("reading {}: {source}", source_path.display())]
    Read {
        source_path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} changed size while the archive was written (expected {expected} bytes)", source_path.display())]
    Changed { source_path: PathBuf, expected: u64 },
    #[error("writing the archive: {0}")]
    Write(#[source] io::Error),
}

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Bytes(Vec<u8>),
    /// Streamed from disk when the archive is written; the size is taken when it is added.
    Path {
        path: PathBuf,
        size: u64,
    },
}

impl Data {
    fn len(&self) -> u64 {
        match self {
            Data::Bytes(b) => b.len() as u64,
            Data::Path { size, .. } => *size,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Data),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

impl Kind {
    fn describe(&self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File(_) => "file",
            Kind::Symlink(_) => "symlink",
            Kind::CharDev { .. } => "character device",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits only (0o7777); the type bits come from `kind`.
    pub perm: u32,
}

/// A set of entries to be written as one newc archive.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

/// Archive paths are relative (`init`, `lib/modules/...`), as the kernel expects them.
fn normalize(path: &str) -> Result<String, CpioError> {
    let bad = |reason| CpioError::BadPath {
        path: path.to_string(),
        reason,
    };
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(bad("contains '..'")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(bad("names the root directory"));
    }
    let joined = parts.join("/");
    if joined.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    Ok(joined)
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in archive order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        normalize(path).ok().and_then(|p| self.entries.get(&p))
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<(), CpioError> {
        let path = normalize(path)?;
        self.ensure_parents(&path)?;
        if let Some(existing) = self.entries.get(&path) {
            // Re-adding a directory is harmless; replacing anything else hides a mistake.
            if existing.kind == Kind::Dir && entry.kind == Kind::Dir {
                return Ok(());
            }
            return Err(CpioError::Conflict {
                path,
                existing: existing.kind.describe(),
            });
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    fn ensure_parents(&mut self, path: &str) -> Result<(), CpioError> {
        let mut end = 0;
        while let Some(pos) = path[end..].find('/') {
            let parent = &path[..end + pos];
            match self.entries.get(parent) {
                Some(Entry {
                    kind: Kind::Dir, ..
                }) => {}
                Some(other) => {
                    return Err(CpioError::Conflict {
                        path: parent.to_string(),
                        existing: other.kind.describe(),
                    })
                }
                None => {
                    self.entries.insert(
                        parent.to_string(),
                        Entry {
                            kind: Kind::Dir,
                            perm: 0o755,
                        },
                    );
                }
            }
            end += pos + 1;
        }
        Ok(())
    }

    pub fn add_dir(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        self.insert(
            path,
            Entry {
                kind: Kind::Dir,
                perm: perm & 0o7777,
            },
        )
    }

    pub fn add_bytes(&mut self, path: &str, perm: u32, bytes: Vec<u8>) -> Result<(), CpioError> {
        check_size(path, bytes.len() as u64)?;
        self.insert(
            path,
            Entry {
                kind: Kind::File(Data::Bytes(bytes)),
                perm: perm & 0o7777,
            },
        )
    }

    /// Adds a file whose contents are streamed from `source` when the archive is written.
    pub fn add_file(&mut self, path: &str, perm: u32, source: &Path) -> Result<(), CpioError> {
        let meta = std::fs::metadata(source).map_err(|e| CpioError::Read {
            source_path: source.to_path_buf(),
            source: e,
        })?;
        check_size(&source.display().to_string(), meta.len())?;
        self.insert(
            path,
            Entry {
                kind: Kind::File(Data::Path {
                    path: source.to_path_buf(),
                    size: meta.len(),
                }),
                perm: perm & 0o7777,
            },
        )
    }

    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        self.insert(
            path,
            Entry {
                kind: Kind::Symlink(target.to_string()),
                perm: 0o777,
            },
        )
    }

    pub fn add_char_dev(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.insert(
            path,
            Entry {
                kind: Kind::CharDev { major, minor },
                perm: perm & 0o7777,
            },
        )
    }

    /// Adds a directory tree from disk under `dest`: directories, regular files (permission
    /// bits kept) and symlinks. Other file types are refused.
    pub fn add_tree(&mut self, dest: &str, source: &Path) -> Result<(), CpioError> {
        let read_err = |p: &Path, e: io::Error| CpioError::Read {
            source_path: p.to_path_buf(),
            source: e,
        };
        let meta = std::fs::symlink_metadata(source).map_err(|e| read_err(source, e))?;
        let ft = meta.file_type();
        use std::os::unix::fs::PermissionsExt;
        let perm = meta.permissions().mode() & 0o7777;
        if ft.is_symlink() {
            let target = std::fs::read_link(source).map_err(|e| read_err(source, e))?;
            self.add_symlink(dest, &target.to_string_lossy())
        } else if ft.is_dir() {
            self.add_dir(dest, perm)?;
            let mut names = Vec::new();
            for entry in std::fs::read_dir(source).map_err(|e| read_err(source, e))? {
                names.push(entry.map_err(|e| read_err(source, e))?.file_name());
            }
            names.sort();
            for name in names {
                let child_dest =
                    format!("{}/{}", dest.trim_end_matches('/'), name.to_string_lossy());
                self.add_tree(&child_dest, &source.join(&name))?;
            }
            Ok(())
        } else if ft.is_file() {
            self.add_file(dest, perm, source)
        } else {
            Err(read_err(
                source,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a file, directory or symlink",
                ),
            ))
        }
    }

    /// Writes the archive with every mtime set to `mtime`; returns the number of bytes written
    /// (a multiple of 4).
    pub fn write_to<W: Write + ?Sized>(&self, out: &mut W, mtime: u32) -> Result<u64, CpioError> {
        let mut w = Counting {
            inner: out,
            count: 0,
        };
        for (ino, (path, entry)) in (1u32..).zip(self.entries.iter()) {
            let (mode, nlink, size, rdev) = match &entry.kind {
                Kind::Dir => (S_IFDIR | entry.perm, 2, 0, (0, 0)),
                Kind::File(d) => (S_IFREG | entry.perm, 1, d.len(), (0, 0)),
                Kind::Symlink(t) => (S_IFLNK | entry.perm, 1, t.len() as u64, (0, 0)),
                Kind::CharDev { major, minor } => (S_IFCHR | entry.perm, 1, 0, (*major, *minor)),
            };
            check_size(path, size)?;
            let header = Header {
                ino,
                mode,
                nlink,
                mtime,
                size: size as u32,
                rdev,
                name: path,
            };
            header.write(&mut w).map_err(CpioError::Write)?;
            match &entry.kind {
                Kind::File(Data::Bytes(b)) => w.write_all(b).map_err(CpioError::Write)?,
                Kind::File(Data::Path { path: src, size }) => copy_exact(src, *size, &mut w)?,
                Kind::Symlink(t) => w.write_all(t.as_bytes()).map_err(CpioError::Write)?,
                Kind::Dir | Kind::CharDev { .. } => {}
            }
            pad4(&mut w).map_err(CpioError::Write)?;
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            mtime: 0,
            size: 0,
            rdev: (0, 0),
            name: TRAILER,
        };
        trailer.write(&mut w).map_err(CpioError::Write)?;
        Ok(w.count)
    }

    /// The archive as bytes (for the small part; the store image is streamed instead).
    pub fn to_bytes(&self, mtime: u32) -> Result<Vec<u8>, CpioError> {
        let mut v = Vec::new();
        self.write_to(&mut v, mtime)?;
        Ok(v)
    }
}

fn check_size(path: &str, size: u64) -> Result<(), CpioError> {
    if size > MAX_FILE_SIZE {
        return Err(CpioError::TooLarge {
            path: path.to_string(),
            size,
        });
    }
    Ok(())
}

struct Header<'a> {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
    name: &'a str,
}

impl Header<'_> {
    fn write<W: Write + ?Sized>(&self, w: &mut Counting<W>) -> io::Result<()> {
        let namesize = self.name.len() as u32 + 1;
        let text = format!(
            "{MAGIC}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            self.mode,
            0,
            0,
            self.nlink,
            self.mtime,
            self.size,
            0,
            0,
            self.rdev.0,
            self.rdev.1,
            namesize,
            0
        );
        w.write_all(text.as_bytes())?;
        w.write_all(self.name.as_bytes())?;
        w.write_all(&[0])?;
        pad4(w)
    }
}

struct Counting<'a, W: Write + ?Sized> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write + ?Sized> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn pad4<W: Write + ?Sized>(w: &mut Counting<W>) -> io::Result<()> {
    let rem = (w.count % 4) as usize;
    if rem != 0 {
        w.write_all(&[0u8; 4][..4 - rem])?;
    }
    Ok(())
}

fn copy_exact<W: Write + ?Sized>(
    src: &Path,
    size: u64,
    w: &mut Counting<W>,
) -> Result<(), CpioError> {
    let file = File::open(src).map_err(|e| CpioError::Read {
        source_path: src.to_path_buf(),
        source: e,
    })?;
    let mut limited = file.take(size);
    let copied = io::copy(&mut limited, w).map_err(|e| CpioError::Read {
        source_path: src.to_path_buf(),
        source: e,
    })?;
    // A file that grew is caught too: one more byte must not be readable.
    let mut extra = [0u8; 1];
    let grew = limited
        .into_inner()
        .read(&mut extra)
        .map(|n| n > 0)
        .unwrap_or(false);
    if copied != size || grew {
        return Err(CpioError::Changed {
            source_path: src.to_path_buf(),
            expected: size,
        });
    }
    Ok(())
}

/// Writes one archive holding a single file at `path`, streamed from `source`. Used for the
/// store image, which must not be read into memory.
pub fn write_single_file<W: Write + ?Sized>(
    out: &mut W,
    path: &str,
    perm: u32,
    source: &Path,
    mtime: u32,
) -> Result<u64, CpioError> {
    let mut a = Archive::new();
    a.add_file(path, perm, source)?;
    a.write_to(out, mtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let mut a = Archive::new();
        a.add_bytes("init", 0o755, b"abc".to_vec()).unwrap();
        let bytes = a.to_bytes(0).unwrap();
        assert_eq!(&bytes[..6], b"070701");
        // 110-byte header + "init\0" = 115, padded to 116; then 3 bytes data padded to 4.
        assert_eq!(&bytes[110..115], b"init\0");
        assert_eq!(&bytes[116..119], b"abc");
        assert_eq!(bytes[119], 0);
        assert_eq!(&bytes[120..126], b"070701");
        let hdr = std::str::from_utf8(&bytes[..110]).unwrap();
        assert_eq!(&hdr[6..14], "00000001"); // ino
        assert_eq!(&hdr[14..22], "000081ed"); // mode
        assert_eq!(&hdr[54..62], "00000003"); // size
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn parents_first_and_sorted() {
        let mut a = Archive::new();
        a.add_bytes("b/c/d", 0o644, vec![]).unwrap();
        a.add_bytes("a-b", 0o644, vec![]).unwrap();
        a.add_bytes("/a/x", 0o644, vec![]).unwrap();
        let names: Vec<_> = a.entries().map(|(p, _)| p.to_string()).collect();
        assert_eq!(names, ["a", "a-b", "a/x", "b", "b/c", "b/c/d"]);
    }

    #[test]
    fn bad_paths_and_conflicts() {
        let mut a = Archive::new();
        assert!(matches!(
            a.add_dir("/", 0o755),
            Err(CpioError::BadPath { .. })
        ));
        assert!(matches!(
            a.add_dir("a/../b", 0o755),
            Err(CpioError::BadPath { .. })
        ));
        a.add_bytes("f", 0o644, vec![]).unwrap();
        assert!(matches!(
            a.add_bytes("f/g", 0o644, vec![]),
            Err(CpioError::Conflict { .. })
        ));
        assert!(matches!(
            a.add_symlink("f", "x"),
            Err(CpioError::Conflict { .. })
        ));
        a.add_dir("d", 0o700).unwrap();
        a.add_dir("d", 0o755).unwrap();
    }

    #[test]
    fn too_large_is_an_error_naming_the_file() {
        let err = check_size("/x/nix-store.squashfs", MAX_FILE_SIZE + 1).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/x/nix-store.squashfs"), "{msg}");
        assert!(msg.contains("4294967296"), "{msg}");
        assert!(check_size("ok", MAX_FILE_SIZE).is_ok());
    }

    #[test]
    fn sparse_file_over_4g_is_refused_when_added() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.squashfs");
        let f = File::create(&p).unwrap();
        f.set_len(MAX_FILE_SIZE + 1).unwrap();
        let mut a = Archive::new();
        let err = a.add_file("nix-store.squashfs", 0o444, &p).unwrap_err();
        assert!(err.to_string().contains("big.squashfs"), "{err}");
        assert!(a.is_empty());
    }
}
