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
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let size = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let mut r = BufReader::new(file);
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
        // Bounded before anything is allocated (candle's own limit is 2^30 bytes).
        if len > (1 << 30) || len > size {
            return Err(bad(format!("a tensor name of {len} bytes")));
        }
        let mut name = vec![0u8; len as usize];
        r.read_exact(&mut name).map_err(io)?;
        // As candle reads names: trailing NULs dropped.
        while name.last() == Some(&0) {
            name.pop();
        }
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

    /// Four blocks (scales 0, 1, 127 and 254; every code) against what gguf-py's
    /// `MXFP4.dequantize_blocks`, which follows ggml's `dequantize_row_mxfp4`, gives for them
    /// (as f32 bits; ggml reads code 8 as +0, steerkit as -0, equal values).
    #[test]
    fn blocks_decode_as_gguf_py_does() {
        const BLOCKS: [u8; 68] = [
            0, 240, 225, 210, 195, 180, 165, 150, 135, 120, 105, 90, 75, 60, 45, 30, 15, 1, 35, 20,
            5, 246, 231, 216, 201, 186, 171, 156, 141, 126, 111, 80, 65, 50, 127, 69, 54, 39, 24,
            9, 250, 235, 220, 205, 190, 175, 144, 129, 114, 99, 84, 254, 103, 88, 73, 58, 43, 28,
            13, 254, 239, 208, 193, 178, 163, 148, 133, 118,
        ];
        const VALUES: [u32; 128] = [
            0x0, 0x200000, 0x400000, 0x600000, 0x800000, 0xc00000, 0x1000000, 0x1400000, 0x0,
            0x80200000, 0x80400000, 0x80600000, 0x80800000, 0x80c00000, 0x81000000, 0x81400000,
            0x81400000, 0x81000000, 0x80c00000, 0x80800000, 0x80600000, 0x80400000, 0x80200000,
            0x0, 0x1400000, 0x1000000, 0xc00000, 0x800000, 0x600000, 0x400000, 0x200000, 0x0,
            0xc00000, 0x1000000, 0x1400000, 0x1800000, 0x1c00000, 0x0, 0x80400000, 0x80800000,
            0x80c00000, 0x81000000, 0x81400000, 0x81800000, 0x81c00000, 0x0, 0x400000, 0x800000,
            0x800000, 0x400000, 0x0, 0x81c00000, 0x81800000, 0x81400000, 0x81000000, 0x80c00000,
            0x80800000, 0x80400000, 0x0, 0x1c00000, 0x1800000, 0x1400000, 0x1000000, 0xc00000,
            0x40400000, 0x40800000, 0x40c00000, 0x0, 0xbf000000, 0xbf800000, 0xbfc00000,
            0xc0000000, 0xc0400000, 0xc0800000, 0xc0c00000, 0x0, 0x3f000000, 0x3f800000,
            0x3fc00000, 0x40000000, 0x40000000, 0x3fc00000, 0x3f800000, 0x3f000000, 0x0,
            0xc0c00000, 0xc0800000, 0xc0400000, 0xc0000000, 0xbfc00000, 0xbf800000, 0xbf000000,
            0x0, 0x40c00000, 0x40800000, 0x40400000, 0x7f800000, 0x0, 0xfe800000, 0xff000000,
            0xff400000, 0xff800000, 0xff800000, 0xff800000, 0xff800000, 0x0, 0x7e800000,
            0x7f000000, 0x7f400000, 0x7f800000, 0x7f800000, 0x7f800000, 0x7f800000, 0x7f800000,
            0x7f800000, 0x7f400000, 0x7f000000, 0x7e800000, 0x0, 0xff800000, 0xff800000,
            0xff800000, 0xff800000, 0xff400000, 0xff000000, 0xfe800000, 0x0, 0x7f800000,
        ];
        let got = decode(&BLOCKS).unwrap();
        for (i, (g, w)) in got.iter().zip(VALUES).enumerate() {
            assert_eq!(*g, f32::from_bits(w), "value {i}");
        }
        assert!(is_unknown_type("unknown dtype for tensor 39"));
        assert!(!is_unknown_type("unknown dtype for tensor 391"));
    }
}
