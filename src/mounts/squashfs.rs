//! The squashfs superblock, checked before an image is mounted so that a missing,
//! truncated or foreign image gets a message saying which, rather than the kernel's bare
//! EINVAL. Layout: `struct squashfs_super_block` in the kernel's `fs/squashfs/squashfs_fs.h`
//! (96 bytes, little-endian).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

pub const MAGIC: u32 = 0x7371_7368; // "hsqs" read little-endian
pub const SUPERBLOCK_LEN: usize = 96;

/// Compressor ids and the kernel option that provides each decompressor.
pub const COMPRESSORS: &[(u16, &str, &str)] = &[
    (1, "gzip", "CONFIG_SQUASHFS_ZLIB"),
    (2, "lzma", "(none: Linux has no squashfs lzma support)"),
    (3, "lzo", "CONFIG_SQUASHFS_LZO"),
    (4, "xz", "CONFIG_SQUASHFS_XZ"),
    (5, "lz4", "CONFIG_SQUASHFS_LZ4"),
    (6, "zstd", "CONFIG_SQUASHFS_ZSTD"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    pub inodes: u32,
    pub block_size: u32,
    pub compression: u16,
    pub block_log: u16,
    pub major: u16,
    pub minor: u16,
    pub bytes_used: u64,
}

impl Superblock {
    /// `gzip`, `xz`, ...
    pub fn compressor_name(&self) -> &'static str {
        compressor(self.compression).map_or("unknown", |c| c.0)
    }

    /// The kernel config option for the decompressor.
    pub fn compressor_config(&self) -> &'static str {
        compressor(self.compression).map_or("?", |c| c.1)
    }
}

fn compressor(id: u16) -> Option<(&'static str, &'static str)> {
    COMPRESSORS.iter().find(|c| c.0 == id).map(|c| (c.1, c.2))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuperblockError {
    #[error("too short for a squashfs superblock ({0} bytes, need {SUPERBLOCK_LEN})")]
    Short(usize),
    #[error("not a squashfs image (magic {found:#010x}, expected {MAGIC:#010x} \"hsqs\")")]
    BadMagic { found: u32 },
    #[error("squashfs version {major}.{minor}; the kernel reads 4.0 only")]
    Version { major: u16, minor: u16 },
    #[error(
        "unknown squashfs compressor id {0} (known: 1 gzip, 2 lzma, 3 lzo, 4 xz, 5 lz4, 6 zstd)"
    )]
    UnknownCompressor(u16),
    #[error(
        "compressor lzma (id 2) is not supported by Linux squashfs; rebuild the image with xz"
    )]
    Lzma,
    #[error("bad block size {block_size} (block_log {block_log})")]
    BlockSize { block_size: u32, block_log: u16 },
}

/// Checks a superblock (the first 96 bytes of an image).
pub fn parse(bytes: &[u8]) -> Result<Superblock, SuperblockError> {
    if let Some(m) = bytes.get(..4) {
        let found = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
        if found != MAGIC {
            return Err(SuperblockError::BadMagic { found });
        }
    }
    if bytes.len() < SUPERBLOCK_LEN {
        return Err(SuperblockError::Short(bytes.len()));
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let sb = Superblock {
        inodes: u32_at(4),
        block_size: u32_at(12),
        compression: u16_at(20),
        block_log: u16_at(22),
        major: u16_at(28),
        minor: u16_at(30),
        bytes_used: u64_at(40),
    };
    if sb.major != 4 || sb.minor != 0 {
        return Err(SuperblockError::Version {
            major: sb.major,
            minor: sb.minor,
        });
    }
    match sb.compression {
        2 => return Err(SuperblockError::Lzma),
        1..=6 => {}
        id => return Err(SuperblockError::UnknownCompressor(id)),
    }
    // The kernel's own checks: 4 KiB..1 MiB, a power of two matching block_log.
    let bs = sb.block_size;
    if !(4096..=1 << 20).contains(&bs)
        || !bs.is_power_of_two()
        || u32::from(sb.block_log) != bs.trailing_zeros()
    {
        return Err(SuperblockError::BlockSize {
            block_size: bs,
            block_log: sb.block_log,
        });
    }
    Ok(sb)
}

/// What is wrong with an image file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("squashfs image {path} is missing")]
    Missing { path: PathBuf },
    // `error`, not `source`: thiserror would make it the source and `{:#}` print it twice.
    #[error("cannot read squashfs image {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("squashfs image {path} is truncated: its superblock says {bytes_used} bytes, the file has {size}")]
    Truncated {
        path: PathBuf,
        bytes_used: u64,
        size: u64,
    },
    #[error("squashfs image {path} is truncated: {size} bytes, less than a superblock")]
    TooShort { path: PathBuf, size: u64 },
    #[error("squashfs image {path}: {problem}")]
    Superblock {
        path: PathBuf,
        problem: SuperblockError,
    },
}

/// Reads and checks the superblock of `path`; for regular files also that the file holds
/// all `bytes_used` bytes.
pub fn check_image(path: &Path) -> Result<Superblock, ImageError> {
    let read_err = |error: std::io::Error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            ImageError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            ImageError::Read {
                path: path.to_path_buf(),
                error,
            }
        }
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let mut head = Vec::with_capacity(SUPERBLOCK_LEN);
    (&mut file)
        .take(SUPERBLOCK_LEN as u64)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    if head.len() < SUPERBLOCK_LEN && meta.is_file() {
        // A short file with the right magic was cut off; one without is just not squashfs.
        if head.len() < 4 || head[..4] == MAGIC.to_le_bytes() {
            return Err(ImageError::TooShort {
                path: path.to_path_buf(),
                size: meta.len(),
            });
        }
    }
    let sb = parse(&head).map_err(|problem| ImageError::Superblock {
        path: path.to_path_buf(),
        problem,
    })?;
    if meta.is_file() && meta.len() < sb.bytes_used {
        return Err(ImageError::Truncated {
            path: path.to_path_buf(),
            bytes_used: sb.bytes_used,
            size: meta.len(),
        });
    }
    Ok(sb)
}

impl fmt::Display for Superblock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "squashfs {}.{}, {}, {} KiB blocks, {} inodes, {} bytes",
            self.major,
            self.minor,
            self.compressor_name(),
            self.block_size / 1024,
            self.inodes,
            self.bytes_used
        )
    }
}

/// A superblock with the given fields, for tests (here and in the integration tests).
#[doc(hidden)]
pub fn synthetic(compression: u16, bytes_used: u64) -> [u8; SUPERBLOCK_LEN] {
    let mut b = [0u8; SUPERBLOCK_LEN];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    b[12..16].copy_from_slice(&131072u32.to_le_bytes());
    b[20..22].copy_from_slice(&compression.to_le_bytes());
    b[22..24].copy_from_slice(&17u16.to_le_bytes());
    b[28..30].copy_from_slice(&4u16.to_le_bytes());
    b[40..48].copy_from_slice(&bytes_used.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_superblocks() {
        for (id, name) in [(1, "gzip"), (3, "lzo"), (4, "xz"), (5, "lz4"), (6, "zstd")] {
            let sb = parse(&synthetic(id, 4096)).unwrap();
            assert_eq!(sb.compressor_name(), name);
            assert_eq!(sb.bytes_used, 4096);
            assert_eq!(sb.block_size, 131072);
        }
        assert_eq!(
            parse(&synthetic(6, 4096)).unwrap().compressor_config(),
            "CONFIG_SQUASHFS_ZSTD"
        );
    }

    #[test]
    fn bad_superblocks() {
        let mut wrong_magic = synthetic(1, 4096);
        wrong_magic[0..4].copy_from_slice(b"\x7fELF");
        let mut v3 = synthetic(1, 4096);
        v3[28] = 3;
        v3[30] = 1;
        let mut bs = synthetic(1, 4096);
        bs[22] = 16;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "too short for a squashfs superblock (0 bytes"),
            (synthetic(1, 4096)[..95].to_vec(), "too short"),
            (
                wrong_magic.to_vec(),
                "not a squashfs image (magic 0x464c457f",
            ),
            (
                v3.to_vec(),
                "squashfs version 3.1; the kernel reads 4.0 only",
            ),
            (
                synthetic(2, 4096).to_vec(),
                "compressor lzma (id 2) is not supported",
            ),
            (
                synthetic(0, 4096).to_vec(),
                "unknown squashfs compressor id 0",
            ),
            (
                synthetic(99, 4096).to_vec(),
                "unknown squashfs compressor id 99",
            ),
            (bs.to_vec(), "bad block size 131072 (block_log 16)"),
        ];
        for (bytes, want) in cases {
            let err = parse(&bytes).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err}");
        }
    }

    #[test]
    fn image_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.squashfs");
        assert!(check_image(&missing)
            .unwrap_err()
            .to_string()
            .ends_with("missing.squashfs is missing"));

        let truncated = dir.path().join("t.squashfs");
        std::fs::write(&truncated, synthetic(4, 8192)).unwrap();
        assert!(check_image(&truncated)
            .unwrap_err()
            .to_string()
            .ends_with("is truncated: its superblock says 8192 bytes, the file has 96"));

        let short = dir.path().join("s.squashfs");
        std::fs::write(&short, &synthetic(4, 8192)[..50]).unwrap();
        assert!(check_image(&short)
            .unwrap_err()
            .to_string()
            .ends_with("is truncated: 50 bytes, less than a superblock"));

        let text = dir.path().join("x.squashfs");
        std::fs::write(&text, "hello").unwrap();
        let err = check_image(&text).unwrap_err().to_string();
        assert!(err.contains("not a squashfs image"), "{err}");

        let good = dir.path().join("g.squashfs");
        let mut img = synthetic(6, 4096).to_vec();
        img.resize(4096, 0);
        std::fs::write(&good, img).unwrap();
        assert_eq!(check_image(&good).unwrap().compressor_name(), "zstd");

        // The cause is printed once, also with `{:#}`.
        let err = anyhow::Error::new(check_image(dir.path()).unwrap_err());
        assert_eq!(
            format!("{err:#}"),
            format!(
                "cannot read squashfs image {}: Is a directory (os error 21)",
                dir.path().display()
            )
        );
    }

    #[test]
    fn no_panics_on_any_prefix() {
        let sb = synthetic(4, 4096);
        for n in 0..=SUPERBLOCK_LEN {
            let _ = parse(&sb[..n]);
        }
    }
}
