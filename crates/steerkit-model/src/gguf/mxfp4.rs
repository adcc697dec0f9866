//! GGUF headers with tensors stored as GGML's MXFP4 (type 39), which llama.cpp's converter
//! writes for gpt-oss's experts and candle does not know.
//!
//! The header is read twice: once here, to find the type field of every MXFP4 tensor, and
//! once by candle, on a copy of the header in which those fields say f32 (candle reads no
//! tensor data then, so the placeholder type is never used to read one). Such tensors are
//! read by [`crate::gguf::Gguf`] and decoded by [`crate::mxfp4`]. They are written by
//! [`crate::gguf::write`], steerkit's own writer.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::gguf_file::Content;

use crate::error::{ModelError, Result};

/// GGML's type number for MXFP4.
pub const TYPE: u32 = 39;

/// Whether candle's error on a GGUF header is its refusal of type [`TYPE`].
pub fn is_unknown_type(error: &str) -> bool {
    error
        .split("unknown dtype for tensor ")
        .nth(1)
        .is_some_and(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits == TYPE.to_string()
        })
}

/// The header of a GGUF file with MXFP4 tensors, read by candle with those tensors typed f32,
/// and their names. An error for files candle could read anyway (none is MXFP4) is not
/// returned: the caller only comes here when candle failed on type 39.
pub fn read_header(path: &Path) -> Result<(Content, HashSet<String>)> {
    let bad = |why: String| ModelError::BadGguf {
        path: path.into(),
        why,
    };
    let io = |e: std::io::Error| bad(format!("reading the header: {e}"));
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let size = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let mut r = BufReader::new(file);
    let infos = tensor_infos(&mut r, size).map_err(io)?;
    let (mut names, mut fields) = (HashSet::new(), vec![]);
    for info in infos.into_iter().filter(|i| i.ty == TYPE) {
        names.insert(info.name);
        fields.push(info.ty_at as usize);
    }
    let end = r.stream_position().map_err(io)? as usize;
    let mut header = vec![0u8; end];
    r.seek(SeekFrom::Start(0)).map_err(io)?;
    r.read_exact(&mut header).map_err(io)?;
    for at in fields {
        header[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
    }
    let content =
        Content::read(&mut std::io::Cursor::new(header)).map_err(|e| bad(format!("{e}")))?;
    Ok((content, names))
}

/// Where a tensor's description sits in a GGUF header.
struct TensorInfo {
    name: String,
    /// Offset of its GGML type, and the type.
    ty_at: u64,
    ty: u32,
}

/// The tensor descriptions of the GGUF header at the start of `r` (after its version and
/// key/values, which are skipped), `size` the file's length; `r` is left after them.
fn tensor_infos(r: &mut BufReader<File>, size: u64) -> std::io::Result<Vec<TensorInfo>> {
    let bad = |why: String| std::io::Error::other(why);
    let mut magic = [0u8; 4];
    r.seek(SeekFrom::Start(0))?;
    r.read_exact(&mut magic)?;
    let version = u32_le(r)?;
    if &magic != b"GGUF" || !(2..=3).contains(&version) {
        return Err(bad(format!(
            "MXFP4 tensors in a GGUF file of version {version}; steerkit reads them in versions 2 and 3"
        )));
    }
    let tensors = u64_le(r)?;
    let kvs = u64_le(r)?;
    for _ in 0..kvs {
        skip_string(r)?;
        let ty = u32_le(r)?;
        skip_value(r, ty, 0)?;
    }
    let mut out = vec![];
    for _ in 0..tensors {
        let len = u64_le(r)?;
        // Bounded before anything is allocated (candle's own limit is 2^30 bytes).
        if len > (1 << 30) || len > size {
            return Err(bad(format!("a tensor name of {len} bytes")));
        }
        let mut name = vec![0u8; len as usize];
        r.read_exact(&mut name)?;
        // As candle reads names: trailing NULs dropped.
        while name.last() == Some(&0) {
            name.pop();
        }
        let n = u32_le(r)?;
        if n > 8 {
            return Err(bad(format!("a tensor of {n} dimensions")));
        }
        for _ in 0..n {
            u64_le(r)?;
        }
        let ty_at = r.stream_position()?;
        let ty = u32_le(r)?;
        u64_le(r)?;
        out.push(TensorInfo {
            name: String::from_utf8_lossy(&name).into_owned(),
            ty_at,
            ty,
        });
    }
    Ok(out)
}

fn u32_le(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn u64_le(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn skip_string(r: &mut BufReader<File>) -> std::io::Result<()> {
    let len = u64_le(r)?;
    r.seek_relative(i64::try_from(len).map_err(std::io::Error::other)?)
}

/// Skips a metadata value of GGUF type `ty` (arrays nest at most 64 levels, as candle reads
/// them).
fn skip_value(r: &mut BufReader<File>, ty: u32, depth: usize) -> std::io::Result<()> {
    let fixed = |ty: u32| match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    };
    match ty {
        8 => skip_string(r),
        9 if depth < 64 => {
            let inner = u32_le(r)?;
            let n = u64_le(r)?;
            match fixed(inner) {
                Some(size) => {
                    r.seek_relative(i64::try_from(n * size).map_err(std::io::Error::other)?)
                }
                None => (0..n).try_for_each(|_| skip_value(r, inner, depth + 1)),
            }
        }
        t => match fixed(t) {
            Some(size) => r.seek_relative(size as i64),
            None => Err(std::io::Error::other(format!("GGUF value type {t}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_type_39_is_taken_for_mxfp4() {
        assert!(is_unknown_type("unknown dtype for tensor 39"));
        assert!(!is_unknown_type("unknown dtype for tensor 391"));
        assert!(!is_unknown_type("unknown dtype for tensor 3"));
    }
}
