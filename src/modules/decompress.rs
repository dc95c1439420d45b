//! Decompressing `.ko.xz`, `.ko.zst` and `.ko.gz` modules in the process, with pure-Rust
//! decoders (lzma-rs, ruzstd, flate2's miniz_oxide backend) that link into a static binary.
//! Used when the kernel cannot decompress a module itself (no CONFIG_MODULE_DECOMPRESS, or
//! another format than the one it was built for).

use std::fmt;
use std::io::{self, Read, Write};

/// Largest decompressed module accepted (the largest Debian modules are about 20 MB).
pub const MAX_MODULE_BYTES: usize = 256 << 20;

pub const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Xz,
    Zstd,
    Gzip,
}

impl Compression {
    /// By file name, as depmod names them: `.ko`, `.ko.xz`, `.ko.zst`, `.ko.gz`.
    pub fn from_file_name(name: &str) -> Self {
        if name.ends_with(".xz") {
            Compression::Xz
        } else if name.ends_with(".zst") {
            Compression::Zstd
        } else if name.ends_with(".gz") {
            Compression::Gzip
        } else {
            Compression::None
        }
    }

    /// By content; `None` for anything that is not one of the three formats.
    pub fn from_magic(data: &[u8]) -> Self {
        if data.starts_with(XZ_MAGIC) {
            Compression::Xz
        } else if data.starts_with(ZSTD_MAGIC) {
            Compression::Zstd
        } else if data.starts_with(GZIP_MAGIC) {
            Compression::Gzip
        } else {
            Compression::None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    #[error("{format} data is corrupt: {message}")]
    Corrupt {
        format: Compression,
        message: String,
    },
    #[error("decompressed module is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the {format}-decompressed data is not an ELF module (starts with {head:02x?})")]
    NotElf { format: Compression, head: Vec<u8> },
}

/// A writer that refuses to grow past `limit`.
struct Limited {
    out: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl Write for Limited {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.out.len().saturating_add(buf.len()) > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("decompressed data exceeds the limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decompresses a module image; the format is taken from the data itself. An ELF image is
/// returned as it is. The result is checked to be ELF.
pub fn decompress(data: &[u8]) -> Result<(Vec<u8>, Compression), DecompressError> {
    decompress_with_limit(data, MAX_MODULE_BYTES)
}

pub fn decompress_with_limit(
    data: &[u8],
    limit: usize,
) -> Result<(Vec<u8>, Compression), DecompressError> {
    let format = Compression::from_magic(data);
    let mut sink = Limited {
        out: Vec::new(),
        limit,
        exceeded: false,
    };
    let corrupt = |message: String| DecompressError::Corrupt { format, message };
    let result: Result<(), String> = match format {
        Compression::None => {
            if data.len() > limit {
                return Err(DecompressError::TooLarge { limit });
            }
            sink.out = data.to_vec();
            Ok(())
        }
        Compression::Xz => {
            if let Some(dict) = xz_dict_size(data) {
                // lzma-rs buffers up to a dictionary's worth before writing out.
                if dict as usize > limit {
                    return Err(corrupt(format!(
                        "dictionary of {dict} bytes is larger than the limit of {limit}"
                    )));
                }
            }
            let mut input = data;
            lzma_rs::xz_decompress(&mut input, &mut sink).map_err(|e| e.to_string())
        }
        Compression::Zstd => zstd_frames(data, &mut sink),
        Compression::Gzip => {
            let mut decoder = flate2::read::MultiGzDecoder::new(data);
            io::copy(&mut decoder, &mut sink)
                .map(drop)
                .map_err(|e| e.to_string())
        }
    };
    if sink.exceeded {
        return Err(DecompressError::TooLarge { limit });
    }
    result.map_err(corrupt)?;
    if !sink.out.starts_with(ELF_MAGIC) {
        let head = sink.out.iter().take(4).copied().collect();
        return Err(DecompressError::NotElf { format, head });
    }
    Ok((sink.out, format))
}

/// All frames of a zstd stream (skippable frames skipped).
fn zstd_frames(data: &[u8], sink: &mut Limited) -> Result<(), String> {
    use ruzstd::frame::ReadFrameHeaderError;
    use ruzstd::frame_decoder::FrameDecoderError;
    let mut input = data;
    let mut frames = 0usize;
    while !input.is_empty() {
        frames += 1;
        if frames > 1 << 16 {
            return Err("too many frames".into());
        }
        match ruzstd::StreamingDecoder::new(&mut input) {
            Ok(mut decoder) => {
                // Read in chunks so the sink's limit stops a runaway frame early.
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = decoder.read(&mut buf).map_err(|e| e.to_string())?;
                    if n == 0 {
                        break;
                    }
                    sink.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                }
                // ruzstd reads the frame's content checksum but leaves checking it to us.
                let frame = &decoder.decoder;
                if let (Some(want), Some(got)) = (
                    frame.get_checksum_from_data(),
                    frame.get_calculated_checksum(),
                ) {
                    if want != got {
                        return Err(format!(
                            "content checksum mismatch: {want:#010x} stored, {got:#010x} computed"
                        ));
                    }
                }
            }
            Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                length,
                ..
            })) => {
                input = input
                    .get(length as usize..)
                    .ok_or_else(|| "truncated skippable frame".to_string())?;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    if frames == 0 {
        return Err("no frames".into());
    }
    Ok(())
}

/// The LZMA2 dictionary size of an xz stream's first block, when the headers say so plainly.
fn xz_dict_size(data: &[u8]) -> Option<u64> {
    // Stream header: 6 magic + 2 flags + 4 CRC; then the block header.
    let block = data.get(12..)?;
    let header_size = (*block.first()? as usize + 1) * 4;
    let header = block.get(..header_size)?;
    let flags = *header.get(1)?;
    let mut pos = 2;
    let varint = |pos: &mut usize| -> Option<u64> {
        let mut value = 0u64;
        for i in 0..9 {
            let b = *header.get(*pos)?;
            *pos += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    };
    if flags & 0x40 != 0 {
        varint(&mut pos)?;
    }
    if flags & 0x80 != 0 {
        varint(&mut pos)?;
    }
    let filters = (flags & 0x03) + 1;
    for _ in 0..filters {
        let id = varint(&mut pos)?;
        let props = varint(&mut pos)? as usize;
        if id == 0x21 && props == 1 {
            let code = u64::from(*header.get(pos)? & 0x3f);
            if code > 40 {
                return None;
            }
            if code == 40 {
                return Some(u64::from(u32::MAX));
            }
            return Some((2 | (code & 1)) << (code / 2 + 11));
        }
        pos = pos.checked_add(props)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn fake_elf(len: usize) -> Vec<u8> {
        let mut v = ELF_MAGIC.to_vec();
        // Compressible but not trivial.
        v.extend((0..len).map(|i| (i % 251) as u8 ^ (i / 4096) as u8));
        v
    }

    fn compress(tool: &[&str], data: &[u8]) -> Vec<u8> {
        let mut child = Command::new(tool[0])
            .args(&tool[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (install xz-utils, zstd, gzip)", tool[0]));
        let mut stdin = child.stdin.take().unwrap();
        let input = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "{tool:?} failed");
        out.stdout
    }

    #[test]
    fn round_trips_through_the_reference_compressors() {
        let data = fake_elf(300_000);
        let cases: &[(&[&str], Compression)] = &[
            (
                &["xz", "-c", "--check=crc32", "--lzma2=dict=1MiB"],
                Compression::Xz,
            ),
            (&["xz", "-c", "--check=crc64"], Compression::Xz),
            (&["zstd", "-c", "-q", "-19"], Compression::Zstd),
            (&["gzip", "-c", "-9"], Compression::Gzip),
        ];
        for (tool, format) in cases {
            let packed = compress(tool, &data);
            assert_eq!(Compression::from_magic(&packed), *format);
            let (out, got) = decompress(&packed).unwrap();
            assert_eq!(got, *format);
            assert!(out == data, "{tool:?}: output differs");
        }
    }

    #[test]
    fn xz_dictionary_size_is_read_from_the_header() {
        let packed = compress(&["xz", "-c", "--lzma2=dict=1MiB"], &fake_elf(1000));
        assert_eq!(xz_dict_size(&packed), Some(1 << 20));
        let packed = compress(&["xz", "-c", "--lzma2=dict=3MiB"], &fake_elf(1000));
        assert_eq!(xz_dict_size(&packed), Some(3 << 20));
    }

    #[test]
    fn plain_elf_is_returned_as_is() {
        let data = fake_elf(100);
        assert_eq!(decompress(&data).unwrap(), (data, Compression::None));
    }

    #[test]
    fn errors_table() {
        let elf = fake_elf(100_000);
        let xz = compress(&["xz", "-c"], &elf);
        let not_elf = compress(&["gzip", "-c"], b"hello world");
        let mut truncated = xz.clone();
        truncated.truncate(xz.len() / 2);
        let mut flipped = compress(&["zstd", "-c", "-q"], &elf);
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        let cases: Vec<(&str, Vec<u8>, usize, &str)> = vec![
            (
                "garbage",
                b"garbage".to_vec(),
                MAX_MODULE_BYTES,
                "not an ELF",
            ),
            ("empty", vec![], MAX_MODULE_BYTES, "not an ELF"),
            (
                "truncated xz",
                truncated,
                MAX_MODULE_BYTES,
                "xz data is corrupt",
            ),
            (
                "corrupt zstd",
                flipped,
                MAX_MODULE_BYTES,
                "zstd data is corrupt",
            ),
            ("gzip of text", not_elf, MAX_MODULE_BYTES, "not an ELF"),
            ("over the limit", xz, 50_000, "larger than the limit"),
            (
                "magic only",
                vec![0x28, 0xb5, 0x2f, 0xfd],
                MAX_MODULE_BYTES,
                "zstd data is corrupt",
            ),
        ];
        for (what, data, limit, want) in cases {
            let e = match decompress_with_limit(&data, limit) {
                Ok((out, format)) => panic!("{what}: decoded {} bytes of {format}", out.len()),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(want), "{what}: {e}");
        }
    }

    #[test]
    fn a_corrupt_xz_footer_is_an_error_not_a_panic() {
        // Found by the module_decompress fuzz target: Backward Size 0xFFFFFFFF in the footer.
        let crashes: [&[u8]; 2] = [
            include_bytes!(
                "../../fuzz/known-crashes/module_decompress/lzma-rs-0.3.0-xz-backward-size-overflow.xz"
            ),
            include_bytes!(
                "../../fuzz/known-crashes/module_decompress/lzma-rs-0.3.0-xz-backward-size-overflow-2.xz"
            ),
        ];
        for data in crashes {
            match decompress(data) {
                Err(DecompressError::Corrupt { format, .. }) => assert_eq!(format, Compression::Xz),
                other => panic!("expected a corrupt-xz error, got {other:?}"),
            }
        }
    }

    #[test]
    fn file_names() {
        assert_eq!(Compression::from_file_name("a.ko"), Compression::None);
        assert_eq!(Compression::from_file_name("a.ko.xz"), Compression::Xz);
        assert_eq!(Compression::from_file_name("a.ko.zst"), Compression::Zstd);
        assert_eq!(Compression::from_file_name("a.ko.gz"), Compression::Gzip);
    }
}
