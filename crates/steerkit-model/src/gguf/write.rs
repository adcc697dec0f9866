//! Writing GGUF files one tensor at a time.
//!
//! The header is written from each tensor's name, shape and storage alone; then each tensor is
//! computed, encoded and written in turn and dropped before the next, so that a model being
//! exported is held once (as it computes), not twice (and once more as stored). Files are
//! GGUF version 3 with 32-byte alignment, as llama.cpp's gguf-py writes them, and are written
//! whole or not at all: into `OUT.tmp`, flushed and synced, then renamed.

use std::io::{BufWriter, Seek, Write};
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};

/// Alignment of the tensor data (GGUF's default; no `general.alignment` key is written).
const ALIGNMENT: usize = 32;

/// How a tensor is stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    F32,
    F16,
    Q8_0,
    /// GGML's MXFP4 ([`crate::mxfp4`]), as llama.cpp's gpt-oss files hold experts.
    Mxfp4,
}

impl Storage {
    /// GGML's type number.
    pub fn ggml_type(self) -> u32 {
        match self {
            Storage::F32 => 0,
            Storage::F16 => 1,
            Storage::Q8_0 => 8,
            Storage::Mxfp4 => super::mxfp4::TYPE,
        }
    }

    /// Values per block, and bytes per block.
    fn block(self) -> (usize, usize) {
        match self {
            Storage::F32 => (1, 4),
            Storage::F16 => (1, 2),
            Storage::Q8_0 => (32, 34),
            Storage::Mxfp4 => (32, 17),
        }
    }

    /// Whether a tensor whose innermost dimension is `cols` can be stored so (blocks run
    /// along the rows).
    pub fn fits(self, cols: usize) -> bool {
        cols.is_multiple_of(self.block().0)
    }

    /// Bytes of a tensor of dimensions `dims` (outermost first) stored so.
    fn bytes(self, dims: &[usize]) -> Option<usize> {
        let (values, bytes) = self.block();
        let cols = *dims.last()?;
        self.fits(cols)
            .then(|| dims.iter().product::<usize>() / values * bytes)
    }

    /// Writes the stored bytes of `t` to `w`; returns how many.
    fn write<W: Write>(self, t: &Tensor, w: &mut W) -> std::result::Result<usize, Written> {
        let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let ggml = match self {
            Storage::Mxfp4 => {
                let values: Vec<f32> = t.flatten_all()?.to_vec1()?;
                let bytes = crate::mxfp4::encode(&values, crate::mxfp4::Order::Halves)?;
                w.write_all(&bytes)?;
                return Ok(bytes.len());
            }
            Storage::F32 => GgmlDType::F32,
            Storage::F16 => GgmlDType::F16,
            Storage::Q8_0 => GgmlDType::Q8_0,
        };
        let q = QTensor::quantize(&t, ggml)?;
        let data = q.data()?;
        w.write_all(&data)?;
        Ok(data.len())
    }
}

/// A tensor to write: its name, dimensions (outermost first, as candle's shapes; the file
/// stores them innermost first) and storage, and how to compute it when its turn comes.
pub struct Planned<'a> {
    pub name: String,
    pub dims: Vec<usize>,
    pub storage: Storage,
    pub make: Box<dyn FnOnce() -> Result<Tensor> + 'a>,
}

impl<'a> Planned<'a> {
    /// A tensor already computed.
    pub fn ready(name: impl Into<String>, t: Tensor, storage: Storage) -> Self {
        Planned {
            name: name.into(),
            dims: t.dims().to_vec(),
            storage,
            make: Box::new(move || Ok(t)),
        }
    }
}

/// Writes a GGUF file at `out` with the key/values `kv` (in this order) and `tensors` (in this
/// order), computing each tensor when it is written; `progress` is told the bytes of tensor
/// data written so far and in all. On error nothing is left at `out` or beside it.
pub fn write(
    out: &Path,
    kv: &[(&str, &Value)],
    tensors: Vec<Planned>,
    progress: &dyn Fn(u64, u64),
) -> Result<()> {
    let io = |p: &Path, e: std::io::Error| ModelError::io(p, e);
    let sizes = sizes(&tensors)?;
    // The header is built first (a few MB at most: the vocabulary), so the room checked is
    // the whole file's; a temporary file left by an interrupted run is emptied before the
    // check, so it is not counted as used.
    let mut header = std::io::Cursor::new(Vec::new());
    write_header(&mut header, kv, &tensors, &sizes).map_err(|e| e.at(out))?;
    let header = header.into_inner();
    let data: usize = sizes.iter().map(|s| s.next_multiple_of(ALIGNMENT)).sum();
    // The output did not exist when the caller began; one written meanwhile is kept.
    crate::scratch::write_through(out, false, io, |file, tmp| {
        crate::space::ensure_room((header.len() + data) as u64, out)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(&header).map_err(|e| io(tmp, e))?;
        write_data(&mut w, tensors, sizes, progress).map_err(|e| e.at(tmp))?;
        w.into_inner()
            .map_err(|e| io(tmp, e.into_error()))?
            .sync_all()
            .map_err(|e| io(tmp, e))
    })
}

/// Why a write stopped: the output's I/O, or a tensor that could not be made.
enum Written {
    Io(std::io::Error),
    Model(ModelError),
}

impl Written {
    /// The error, an I/O one told of the file `path`.
    fn at(self, path: &Path) -> ModelError {
        match self {
            Written::Io(e) => ModelError::io(path, e),
            Written::Model(e) => e,
        }
    }
}

impl From<std::io::Error> for Written {
    fn from(e: std::io::Error) -> Self {
        Written::Io(e)
    }
}

impl From<candle_core::Error> for Written {
    fn from(e: candle_core::Error) -> Self {
        Written::Model(e.into())
    }
}

impl From<ModelError> for Written {
    fn from(e: ModelError) -> Self {
        Written::Model(e)
    }
}

/// The stored bytes of each tensor; an error for one whose rows are not whole blocks.
fn sizes(tensors: &[Planned]) -> Result<Vec<usize>> {
    tensors
        .iter()
        .map(|t| {
            t.storage.bytes(&t.dims).ok_or_else(|| {
                ModelError::Weights(format!(
                    "`{}` ({:?}) cannot be stored as {:?}: its rows are not whole blocks",
                    t.name, t.dims, t.storage
                ))
            })
        })
        .collect()
}

/// The header: version, counts, key/values, tensor descriptions, and the padding up to the
/// data.
fn write_header<W: Write + Seek>(
    w: &mut W,
    kv: &[(&str, &Value)],
    tensors: &[Planned],
    sizes: &[usize],
) -> std::result::Result<(), Written> {
    w.write_all(b"GGUF")?;
    w.write_all(&3u32.to_le_bytes())?;
    w.write_all(&(tensors.len() as u64).to_le_bytes())?;
    w.write_all(&(kv.len() as u64).to_le_bytes())?;
    for (key, value) in kv {
        write_string(w, key)?;
        w.write_all(&value_type(value).to_le_bytes())?;
        write_value(w, key, value)?;
    }
    let mut offset = 0usize;
    for (t, size) in tensors.iter().zip(sizes) {
        write_string(w, &t.name)?;
        w.write_all(&(t.dims.len() as u32).to_le_bytes())?;
        for d in t.dims.iter().rev() {
            w.write_all(&(*d as u64).to_le_bytes())?;
        }
        w.write_all(&t.storage.ggml_type().to_le_bytes())?;
        w.write_all(&(offset as u64).to_le_bytes())?;
        offset += size.next_multiple_of(ALIGNMENT);
    }
    pad(w)?;
    Ok(())
}

/// The tensors' data after the header, each computed, stored and dropped in turn.
fn write_data<W: Write + Seek>(
    w: &mut W,
    tensors: Vec<Planned>,
    sizes: Vec<usize>,
    progress: &dyn Fn(u64, u64),
) -> std::result::Result<(), Written> {
    let total: u64 = sizes
        .iter()
        .map(|s| s.next_multiple_of(ALIGNMENT) as u64)
        .sum();
    let mut done = 0u64;
    for (t, size) in tensors.into_iter().zip(sizes) {
        let made = (t.make)()?;
        if made.dims() != t.dims {
            return Err(ModelError::Weights(format!(
                "`{}` was planned as {:?} and computed as {:?}",
                t.name,
                t.dims,
                made.dims()
            ))
            .into());
        }
        let written = t.storage.write(&made, w)?;
        drop(made);
        if written != size {
            return Err(ModelError::Weights(format!(
                "`{}`: {written} bytes stored, {size} planned",
                t.name
            ))
            .into());
        }
        pad(w)?;
        done += size.next_multiple_of(ALIGNMENT) as u64;
        progress(done, total);
    }
    Ok(())
}

/// Zeros up to the next multiple of [`ALIGNMENT`].
fn pad<W: Write + Seek>(w: &mut W) -> std::io::Result<()> {
    let at = w.stream_position()? as usize;
    w.write_all(&[0u8; ALIGNMENT][..at.next_multiple_of(ALIGNMENT) - at])
}

fn write_string<W: Write>(w: &mut W, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

/// GGUF's type number of a metadata value.
fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// A metadata value (its type number written before); an array's elements must share a type
/// (an empty array is written as one of u32, as candle writes it).
fn write_value<W: Write>(w: &mut W, key: &str, v: &Value) -> std::result::Result<(), Written> {
    match v {
        Value::U8(x) => w.write_all(&[*x])?,
        Value::I8(x) => w.write_all(&x.to_le_bytes())?,
        Value::U16(x) => w.write_all(&x.to_le_bytes())?,
        Value::I16(x) => w.write_all(&x.to_le_bytes())?,
        Value::U32(x) => w.write_all(&x.to_le_bytes())?,
        Value::I32(x) => w.write_all(&x.to_le_bytes())?,
        Value::U64(x) => w.write_all(&x.to_le_bytes())?,
        Value::I64(x) => w.write_all(&x.to_le_bytes())?,
        Value::F32(x) => w.write_all(&x.to_le_bytes())?,
        Value::F64(x) => w.write_all(&x.to_le_bytes())?,
        Value::Bool(x) => w.write_all(&[u8::from(*x)])?,
        Value::String(s) => write_string(w, s)?,
        Value::Array(items) => {
            let ty = match items.first() {
                Some(first) => value_type(first),
                None => 4,
            };
            for item in items {
                if value_type(item) != ty {
                    return Err(ModelError::Input(format!(
                        "the GGUF key `{key}` is an array of values of more than one type"
                    ))
                    .into());
                }
            }
            w.write_all(&ty.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            for item in items {
                write_value(w, key, item)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file candle writes for the same key/values and tensors, byte for byte, but for
    /// the version field (candle writes 2, this writer 3); and candle reads it back.
    #[test]
    fn same_bytes_as_candle_but_the_version() {
        let cpu = &Device::Cpu;
        let a = Tensor::arange(0f32, 3.0 * 64.0, cpu)
            .unwrap()
            .reshape((3, 64))
            .unwrap();
        let b = Tensor::new(&[1.5f32, -2.0, 7.0], cpu).unwrap();
        let c = (Tensor::arange(0f32, 64.0, cpu).unwrap() / 7.0)
            .unwrap()
            .reshape((2, 32))
            .unwrap();
        let arch = Value::String("llama".into());
        let n = Value::U32(7);
        let list = Value::Array(vec![Value::I32(1), Value::I32(-3)]);
        let empty = Value::Array(vec![]);
        let flags = Value::Array(vec![Value::Bool(true), Value::Bool(false)]);
        let kv: Vec<(&str, &Value)> = vec![
            ("general.architecture", &arch),
            ("llama.block_count", &n),
            ("x.list", &list),
            ("x.empty", &empty),
            ("x.flags", &flags),
        ];
        let stored = [
            ("a", a.clone(), GgmlDType::F16, Storage::F16),
            ("b", b.clone(), GgmlDType::F32, Storage::F32),
            ("c", c.clone(), GgmlDType::Q8_0, Storage::Q8_0),
        ];
        let q: Vec<(String, QTensor)> = stored
            .iter()
            .map(|(n, t, g, _)| (n.to_string(), QTensor::quantize(t, *g).unwrap()))
            .collect();
        let refs: Vec<(&str, &QTensor)> = q.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut want = std::io::Cursor::new(vec![]);
        candle_core::quantized::gguf_file::write(&mut want, &kv, &refs).unwrap();
        let mut want = want.into_inner();
        want[4..8].copy_from_slice(&3u32.to_le_bytes());

        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.gguf");
        let planned = stored
            .iter()
            .map(|(n, t, _, s)| Planned::ready(*n, t.clone(), *s))
            .collect();
        let seen = std::cell::RefCell::new(vec![]);
        write(&out, &kv, planned, &|d, t| seen.borrow_mut().push((d, t))).unwrap();
        let got = std::fs::read(&out).unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the files differ");
        let total = seen.borrow().last().unwrap().1;
        assert_eq!(
            seen.into_inner(),
            vec![(384, total), (416, total), (416 + 96, total)]
        );
        let mut f = std::fs::File::open(&out).unwrap();
        let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
        let back = content.tensor(&mut f, "b", cpu).unwrap();
        assert_eq!(
            back.dequantize(cpu).unwrap().to_vec1::<f32>().unwrap(),
            [1.5, -2.0, 7.0]
        );
        assert!(!dir.path().join("m.gguf.tmp").exists());
    }

    /// A tensor that cannot be made, a shape other than planned, rows that are not whole
    /// blocks, an array of mixed values: errors, and no file left.
    #[test]
    fn failures_leave_no_file() {
        let cpu = &Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.gguf");
        let t = Tensor::zeros((2, 32), DType::F32, cpu).unwrap();
        let fail = |planned: Vec<Planned>, kv: &[(&str, &Value)]| {
            let e = write(&out, kv, planned, &|_, _| {})
                .unwrap_err()
                .to_string();
            assert!(!out.exists() && std::fs::read_dir(dir.path()).unwrap().count() == 0);
            e
        };
        let broken = Planned {
            name: "x".into(),
            dims: vec![2, 32],
            storage: Storage::F16,
            make: Box::new(|| Err(ModelError::Weights("no such tensor".into()))),
        };
        assert!(fail(vec![broken], &[]).contains("no such tensor"));
        let mut other = Planned::ready("x", t.clone(), Storage::F16);
        other.dims = vec![4, 16];
        assert!(fail(vec![other], &[]).contains("planned as [4, 16]"));
        let odd = Planned::ready(
            "x",
            Tensor::zeros((2, 24), DType::F32, cpu).unwrap(),
            Storage::Q8_0,
        );
        assert!(fail(vec![odd], &[]).contains("not whole blocks"));
        let mixed = Value::Array(vec![Value::U32(1), Value::I32(1)]);
        let e = fail(
            vec![Planned::ready("x", t, Storage::F32)],
            &[("k.mixed", &mixed)],
        );
        assert!(e.contains("`k.mixed`"), "{e}");
    }
}
