//! GGUF tensors stored as GGML's MXFP4 (type 39), which llama.cpp's converter writes for
//! gpt-oss's experts and candle does not know.
//!
//! The header is read twice: once here, to find the type field of every MXFP4 tensor, and
//! once by candle, on a copy of the header in which those fields say f32 (candle reads no
//! tensor data then, so the placeholder type is never used to read one). Such tensors are
//! read and decoded here ([`decode`]).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::gguf_file::Content;

use crate::error::{ModelError, Result};

/// GGML's type number for MXFP4.
pub const TYPE: u32 = 39;

/// Bytes of one MXFP4 block of 32 values: the e8m0 scale, then 16 bytes of 4-bit codes.
pub const BLOCK_BYTES: usize = 17;

/// e2m1 values by 4-bit code.
const FP4: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// GGML MXFP4 blocks as f32, as ggml's `dequantize_row_mxfp4`: in each block of 17 bytes,
/// byte 0 is the scale `2^(e - 127)`, and byte `1 + j` holds value `j` in its low nibble and
/// value `j + 16` in its high one. A scale of 255 (NaN in e8m0) is an error.
pub fn decode(bytes: &[u8]) -> Result<Vec<f32>> {
    if !bytes.len().is_multiple_of(BLOCK_BYTES) {
        return Err(ModelError::Weights(format!(
            "{} bytes are not whole MXFP4 blocks of {BLOCK_BYTES}",
            bytes.len()
        )));
    }
    let mut out = vec![0f32; bytes.len() / BLOCK_BYTES * 32];
    for (b, y) in bytes
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(32))
    {
        if b[0] == 255 {
            return Err(ModelError::Weights(
                "an MXFP4 scale of 255 (NaN in e8m0)".into(),
            ));
        }
        let d = 2f32.powi(i32::from(b[0]) - 127);
        for (j, q) in b[1..].iter().enumerate() {
            y[j] = FP4[usize::from(q & 0x0f)] * d;
            y[j + 16] = FP4[usize::from(q >> 4)] * d;
        }
    }
    Ok(out)
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
    let mut r = BufReader::new(File::open(path).map_err(|e| ModelError::io(path, e))?);
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic).map_err(io)?;
    let version = u32_le(&mut r).map_err(io)?;
    if &magic != b"GGUF" || !(2..=3).contains(&version) {
        return Err(bad(format!(
            "MXFP4 tensors in a GGUF file of version {version}; steerkit reads them in versions 2 and 3"
        )));
    }
    let tensors = u64_le(&mut r).map_err(io)?;
    let kvs = u64_le(&mut r).map_err(io)?;
    for _ in 0..kvs {
        skip_string(&mut r).map_err(io)?;
        let ty = u32_le(&mut r).map_err(io)?;
        skip_value(&mut r, ty, 0).map_err(io)?;
    }
    let (mut names, mut fields) = (HashSet::new(), vec![]);
    for _ in 0..tensors {
        let len = u64_le(&mut r).map_err(io)?;
        let mut name = vec![0u8; usize::try_from(len).map_err(|_| bad("a huge name".into()))?];
        r.read_exact(&mut name).map_err(io)?;
        let dims = u32_le(&mut r).map_err(io)?;
        r.seek_relative(8 * i64::from(dims)).map_err(io)?;
        let at = r.stream_position().map_err(io)?;
        if u32_le(&mut r).map_err(io)? == TYPE {
            names.insert(String::from_utf8_lossy(&name).into_owned());
            fields.push(at as usize);
        }
        u64_le(&mut r).map_err(io)?;
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

/// Skips a metadata value of GGUF type `ty` (arrays nest at most a few levels).
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
        9 if depth < 4 => {
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

    /// One block by hand: scale byte 128 (2^1), byte `1 + j` = code `j % 16` low and code
    /// `15 - j % 16` high, as ggml lays them out (value j low, value j + 16 high).
    #[test]
    fn a_block_decodes_as_ggml_lays_it_out() {
        let mut block = vec![128u8];
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = decode(&block).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], 2.0 * FP4[j], "value {j}");
            assert_eq!(y[j + 16], 2.0 * FP4[15 - j], "value {}", j + 16);
        }
        block[0] = 255;
        assert!(decode(&block).unwrap_err().to_string().contains("255"));
        assert!(decode(&block[..16]).is_err());
    }
}
