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

impl Order {
    /// The values code byte `j` holds: (low nibble, high nibble).
    fn slots(self, j: usize) -> (usize, usize) {
        match self {
            Order::Halves => (j, j + 16),
            Order::Pairs => (2 * j, 2 * j + 1),
        }
    }
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
            let (lo, hi) = order.slots(j);
            y[lo] = FP4[usize::from(q & 0x0f)] * d;
            y[hi] = FP4[usize::from(q >> 4)] * d;
        }
    }
    Ok(out)
}

/// `values` (a multiple of 32) as blocks of [`BLOCK_BYTES`] in `order`, by llama.cpp's
/// reference quantizer (`quantize_row_mxfp4_ref`, gguf-py's `MXFP4.quantize_blocks`): the
/// scale `2^(floor(log2 amax) - 2)` of the block's largest magnitude (values past 6 times
/// it saturate there), each value the nearest e2m1 multiple of it, ties to the first in
/// code order (`+0` before `-0`). `floor(log2 amax)` is taken of the f32 `log2`, as llama.cpp
/// takes `floorf(log2f(amax))` (a value a few ulps under a power of two rounds up to it
/// there, and so here). One deliberate difference: a block whose largest magnitude is under
/// 2^-125 gets scale byte 0, where llama.cpp's cast of a negative float to a byte wraps
/// (2^-126 gives 255, NaN in e8m0).
pub fn encode(values: &[f32], order: Order) -> Result<Vec<u8>> {
    if !values.len().is_multiple_of(32) {
        return Err(ModelError::Weights(format!(
            "{} values are not whole MXFP4 blocks of 32",
            values.len()
        )));
    }
    let mut out = Vec::with_capacity(values.len() / 32 * BLOCK_BYTES);
    for x in values.chunks_exact(32) {
        if let Some(v) = x.iter().find(|v| !v.is_finite()) {
            return Err(ModelError::Weights(format!(
                "a value of {v} has no MXFP4 form"
            )));
        }
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        // floor(log2 amax) - 2 + 127 as an e8m0 byte (0 for a block of zeros or of
        // subnormals, as llama.cpp's cast gives for those that reach it).
        let e = match amax > 0.0 {
            true => (amax.log2().floor() as i32 - 2 + 127).clamp(0, 254) as u8,
            false => 0,
        };
        let d = 2f32.powi(i32::from(e) - 127);
        // The first code of the smallest error (a strictly smaller one replaces it).
        let code = |v: f32| -> u8 {
            let err = |c: usize| (FP4[c] * d - v).abs();
            (1..16).fold(0, |best, c| if err(c) < err(best) { c } else { best }) as u8
        };
        out.push(e);
        for j in 0..16 {
            let (lo, hi) = order.slots(j);
            out.push(code(x[lo]) | (code(x[hi]) << 4));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encoding: values on the grid come back exactly, in both orders; a block by hand
    /// (amax 7: scale 2^0, 7 saturates to 6, 0.25 ties between 0 and 0.5 and takes 0, -0.8
    /// goes to -1); zeros; the scale byte as llama.cpp and gguf-py compute it (the values a
    /// review found: an amax one ulp under 2^-5 takes 2^-5's scale, 120; float max 253), and
    /// 0 for a block under 2^-125.
    #[test]
    fn encoding_follows_llama_cpp() {
        // Block b: every e2m1 value twice, times 2^(b - 1) (its largest, 6, sets the scale).
        let grid: Vec<f32> = (0..64)
            .map(|i| FP4[i % 16] * 2f32.powi(i as i32 / 32 - 1))
            .collect();
        for order in [Order::Halves, Order::Pairs] {
            let bytes = encode(&grid, order).unwrap();
            assert_eq!(bytes.len(), 2 * BLOCK_BYTES);
            assert_eq!(decode(&bytes, order).unwrap(), grid);
        }
        let mut x = vec![0f32; 32];
        (x[0], x[1], x[2], x[17]) = (7.0, 0.25, -0.8, 2.6);
        let y = decode(&encode(&x, Order::Halves).unwrap(), Order::Halves).unwrap();
        assert_eq!((y[0], y[1], y[2], y[17]), (6.0, 0.0, -1.0, 3.0));
        assert_eq!(
            encode(&[0.0; 32], Order::Halves).unwrap(),
            vec![0u8; BLOCK_BYTES]
        );
        assert!(encode(&[1.0; 31], Order::Halves).is_err());
        assert!(encode(&[f32::NAN; 32], Order::Halves).is_err());
        // Decoded blocks encode back to the same values (not always the same bytes: a block
        // whose largest code is under 4 takes a smaller scale), so re-exporting a model
        // read from MXFP4 changes none of its experts' values.
        let mut bytes = vec![];
        for b in 0..64u32 {
            bytes.push(3 + (b * 37 % 248) as u8);
            bytes.extend((0..16u32).map(|j| ((b * 131 + j * 29) % 256) as u8));
            if b % 4 == 0 {
                // Small codes only (|value| <= 1.5 times the scale).
                let n = bytes.len();
                bytes[n - 16..].iter_mut().for_each(|q| *q &= 0x33);
            }
        }
        let values = decode(&bytes, Order::Halves).unwrap();
        let again = decode(&encode(&values, Order::Halves).unwrap(), Order::Halves).unwrap();
        assert_eq!(again, values);
        let scale = |amax: f32| {
            let mut x = [0f32; 32];
            x[5] = -amax;
            encode(&x, Order::Halves).unwrap()[0]
        };
        let under = f32::from_bits((2f32.powi(-5)).to_bits() - 1);
        for (amax, e) in [
            (1.0f32, 125),
            (7.0, 127),
            (2f32.powi(-5), 120),
            (under, 120),
            (f32::MAX, 253),
            (2f32.powi(-126), 0),
            (1e-45, 0),
        ] {
            assert_eq!(scale(amax), e, "{amax:e}");
        }
    }

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
