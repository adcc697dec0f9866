//! MXFP4 (the OCP microscaling format): blocks of 32 e2m1 values (4 bits each) that share a
//! power-of-two scale (e8m0: `2^(e - 127)`). OpenAI ships gpt-oss's experts so in safetensors
//! (`*_blocks`, `*_scales`), and llama.cpp's converter writes them so in GGUF (GGML type 39);
//! the two place a block's values differently in its bytes ([`Order`]).

use crate::error::{ModelError, Result};

/// Bytes of one block of 32 values: the scale, then 16 bytes of 4-bit codes.
pub const BLOCK_BYTES: usize = 17;

/// e2m1 values by 4-bit code.
const FP4: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// Where a block's 32 values sit in its 16 code bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// GGML's `block_mxfp4`: byte `j` holds value `j` in its low nibble and value `j + 16` in
    /// its high one (ggml's `dequantize_row_mxfp4`).
    Halves,
    /// OpenAI's safetensors: byte `j` holds values `2j` (low nibble) and `2j + 1` (high).
    Pairs,
}

/// Blocks of [`BLOCK_BYTES`], each its scale byte and then its codes in `order`, as f32. A
/// scale of 255 (NaN in e8m0) is an error.
pub fn decode(bytes: &[u8], order: Order) -> Result<Vec<f32>> {
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
            let (lo, hi) = match order {
                Order::Halves => (j, j + 16),
                Order::Pairs => (2 * j, 2 * j + 1),
            };
            y[lo] = FP4[usize::from(q & 0x0f)] * d;
            y[hi] = FP4[usize::from(q >> 4)] * d;
        }
    }
    Ok(out)
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
        let y = decode(&block, Order::Halves).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], 2.0 * FP4[j], "value {j}");
            assert_eq!(y[j + 16], 2.0 * FP4[15 - j], "value {}", j + 16);
        }
        block[0] = 255;
        assert!(decode(&block, Order::Halves)
            .unwrap_err()
            .to_string()
            .contains("255"));
        assert!(decode(&block[..16], Order::Halves).is_err());
    }

    /// OpenAI's order: the same bytes give values in pairs.
    #[test]
    fn pairs_decode_in_openai_order() {
        let mut block = vec![127u8];
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = decode(&block, Order::Pairs).unwrap();
        for j in 0..16 {
            assert_eq!(y[2 * j], FP4[j], "value {}", 2 * j);
            assert_eq!(y[2 * j + 1], FP4[15 - j], "value {}", 2 * j + 1);
        }
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
        let got = decode(&BLOCKS, Order::Halves).unwrap();
        for (i, (g, w)) in got.iter().zip(VALUES).enumerate() {
            assert_eq!(*g, f32::from_bits(w), "value {i}");
        }
    }
}
