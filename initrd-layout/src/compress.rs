//! Compression of the initrd's small part with the external `zstd`, `xz` and `gzip` commands,
//! using settings the kernel's initramfs decompressors accept.

use anyhow::{bail, Context, Result};
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zstd levels 1..=19: the kernel's streaming decompressor refuses windows over 8 MiB,
    /// which the `--ultra` levels use.
    Zstd {
        level: u32,
    },
    /// xz with CRC32 checks (the kernel's xz decoder does not do CRC64) and a 1 MiB dictionary.
    Xz {
        level: u32,
    },
    Gzip {
        level: u32,
    },
    None,
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd { level: 19 }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::Zstd { level } => write!(f, "zstd -{level}"),
            Compression::Xz { level } => write!(f, "xz -{level}"),
            Compression::Gzip { level } => write!(f, "gzip -{level}"),
            Compression::None => write!(f, "none"),
        }
    }
}

impl Compression {
    /// `zstd`, `zstd:19`, `xz`, `xz:6`, `gzip`, `gzip:9`, `none`.
    pub fn parse(text: &str) -> Result<Compression> {
        let (name, level) = match text.split_once(':') {
            Some((n, l)) => {
                let level: u32 = l.parse().with_context(|| {
                    format!("compression {text:?}: level {l:?} is not a number")
                })?;
                (n, Some(level))
            }
            None => (text, None),
        };
        let c = match name {
            "zstd" => Compression::Zstd { level: level.unwrap_or(19) },
            "xz" => Compression::Xz { level: level.unwrap_or(6) },
            "gzip" | "gz" => Compression::Gzip { level: level.unwrap_or(9) },
            "none" | "cat" => {
                if level.is_some() {
                    bail!("compression {text:?}: \"none\" takes no level");
                }
                Compression::None
            }
            other => bail!("unknown compression {other:?}: expected zstd, xz, gzip or none (optionally with :LEVEL)"),
        };
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        match *self {
            Compression::Zstd { level } if !(1..=19).contains(&level) => bail!(
                "zstd level {level} is out of range: the kernel can unpack levels 1 to 19 \
                 (higher levels use windows over 8 MiB)"
            ),
            Compression::Xz { level } if level > 9 => {
                bail!("xz level {level} is out of range (0 to 9)")
            }
            Compression::Gzip { level } if !(1..=9).contains(&level) => {
                bail!("gzip level {level} is out of range (1 to 9)")
            }
            _ => Ok(()),
        }
    }

    /// The command and arguments that compress stdin to stdout, or None for no compression.
    pub fn command(&self) -> Option<(&'static str, Vec<String>)> {
        match *self {
            // -T1: one frame written the same way on every machine.
            Compression::Zstd { level } => Some((
                "zstd",
                vec![format!("-{level}"), "-T1".into(), "-q".into(), "-c".into()],
            )),
            Compression::Xz { level } => Some((
                "xz",
                vec![
                    "--check=crc32".into(),
                    format!("--lzma2=preset={level},dict=1MiB"),
                    "-T1".into(),
                    "-q".into(),
                    "-c".into(),
                ],
            )),
            // -n: no file name or timestamp in the header.
            Compression::Gzip { level } => {
                Some(("gzip", vec![format!("-{level}"), "-n".into(), "-c".into()]))
            }
            Compression::None => None,
        }
    }

    /// Fails with a clear message when the compressor command is not installed.
    pub fn check_available(&self) -> Result<()> {
        if let Some((cmd, _)) = self.command() {
            if find_in_path(cmd).is_none() {
                bail!("{self}: the `{cmd}` command is not installed (it is in the Debian package of the same name)");
            }
        }
        Ok(())
    }

    /// Runs `produce` with a writer whose bytes end up compressed in `out`. The compressor
    /// writes straight to the file, so large inputs (the store image in single-archive mode)
    /// are never held in memory.
    pub fn compress_into(
        &self,
        out: &File,
        produce: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let Some((cmd, args)) = self.command() else {
            let mut w = std::io::BufWriter::new(out);
            produce(&mut w)?;
            w.flush().context("writing the initrd")?;
            return Ok(());
        };
        let mut child = Command::new(cmd)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(
                out.try_clone()
                    .context("duplicating the output file handle")?,
            )
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{cmd}`"))?;
        let result = {
            let stdin = child.stdin.take().context("compressor stdin")?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, stdin);
            produce(&mut w).and_then(|()| w.flush().context("feeding the compressor"))
        };
        let output = child
            .wait_with_output()
            .with_context(|| format!("waiting for `{cmd}`"))?;
        if !output.status.success() {
            bail!(
                "`{cmd} {}` failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        result
    }
}

/// Looks a command up in `$PATH` (plus the sbin directories, where Debian puts kexec).
pub fn find_in_path(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .into_iter()
                .map(PathBuf::from),
        )
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        assert_eq!(
            Compression::parse("zstd").unwrap(),
            Compression::Zstd { level: 19 }
        );
        assert_eq!(
            Compression::parse("zstd:3").unwrap(),
            Compression::Zstd { level: 3 }
        );
        assert_eq!(
            Compression::parse("xz").unwrap(),
            Compression::Xz { level: 6 }
        );
        assert_eq!(
            Compression::parse("gzip:1").unwrap(),
            Compression::Gzip { level: 1 }
        );
        assert_eq!(Compression::parse("none").unwrap(), Compression::None);
        for bad in [
            "zstd:22", "zstd:0", "zstd:x", "lz4", "none:1", "gzip:10", "",
        ] {
            assert!(Compression::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn xz_uses_crc32() {
        let (_, args) = Compression::Xz { level: 6 }.command().unwrap();
        assert!(args.contains(&"--check=crc32".to_string()));
    }
}
