//! Tensors: a name, a shape and bytes that are either borrowed from a
//! memory-mapped file or owned.

use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;

use crate::ggml::{dequant, GgmlType};
use crate::{Error, Result};

/// Element storage of a tensor. Dense dtypes plus ggml block types, which
/// are the quantized storage every writer understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    Bf16,
    I8,
    U8,
    I32,
    I64,
    /// One byte per element, 0 or 1 (ONNX's bool).
    Bool,
    /// 4-bit integers, two per byte, the first in the low nibble (ONNX's
    /// INT4 and UINT4 layout).
    I4,
    U4,
    /// 16-bit integers (TFLite's 16x8 activations, ONNX's INT16).
    I16,
    /// A quantized ggml block type (never F32/F16/BF16: those map to the dense variants).
    Ggml(GgmlType),
}

impl DType {
    /// The dense or block type as a ggml type, when one exists.
    pub fn as_ggml(self) -> Option<GgmlType> {
        match self {
            DType::F32 => Some(GgmlType::F32),
            DType::F16 => Some(GgmlType::F16),
            DType::Bf16 => Some(GgmlType::Bf16),
            DType::Ggml(t) => Some(t),
            _ => None,
        }
    }

    pub fn from_ggml(t: GgmlType) -> Self {
        match t {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            GgmlType::Bf16 => DType::Bf16,
            t => DType::Ggml(t),
        }
    }

    /// Bytes for a tensor of this dtype whose innermost dimension is `row` and
    /// that has `n` elements in all.
    pub fn byte_len(self, row: usize, n: usize) -> Result<usize> {
        let elem = |size: usize| {
            n.checked_mul(size)
                .ok_or_else(|| Error::Shape(format!("{n} elements overflow")))
        };
        match self {
            DType::F32 | DType::I32 => elem(4),
            DType::F16 | DType::Bf16 | DType::I16 => elem(2),
            DType::I8 | DType::U8 | DType::Bool => elem(1),
            DType::I64 => elem(8),
            DType::I4 | DType::U4 => Ok(n.div_ceil(2)),
            DType::Ggml(t) => {
                if row == 0 {
                    return Ok(0);
                }
                Ok(t.row_bytes(row)? * (n / row))
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::Bf16 => "BF16",
            DType::I8 => "I8",
            DType::I16 => "I16",
            DType::U8 => "U8",
            DType::I32 => "I32",
            DType::I64 => "I64",
            DType::Bool => "BOOL",
            DType::I4 => "I4",
            DType::U4 => "U4",
            DType::Ggml(t) => t.name(),
        }
    }

    pub fn bits_per_weight(self) -> f64 {
        match self {
            DType::I8 | DType::U8 | DType::Bool => 8.0,
            DType::I4 | DType::U4 => 4.0,
            DType::I16 => 16.0,
            DType::I32 => 32.0,
            DType::I64 => 64.0,
            d => d.as_ggml().map(GgmlType::bits_per_weight).unwrap_or(0.0),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Bytes of a tensor. `Mapped` borrows from a file so a model is never
/// copied whole.
#[derive(Clone)]
pub enum TensorData {
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
    Owned(Arc<Vec<u8>>),
}

impl TensorData {
    pub fn bytes(&self) -> &[u8] {
        match self {
            TensorData::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            TensorData::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for TensorData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TensorData({} bytes)", self.bytes().len())
    }
}

/// A named tensor. `shape` is row-major, outermost first (the PyTorch /
/// safetensors order); GGUF's reversed order is handled by its reader and writer.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub data: TensorData,
}

impl Tensor {
    /// Builds a tensor after checking that `data` has exactly the bytes its
    /// shape and dtype need.
    pub fn new(
        name: impl Into<String>,
        shape: Vec<usize>,
        dtype: DType,
        data: TensorData,
    ) -> Result<Self> {
        let name = name.into();
        let n = checked_numel(&shape)
            .ok_or_else(|| Error::Shape(format!("tensor {name}: shape {shape:?} overflows")))?;
        let row = shape.last().copied().unwrap_or(1);
        let want = dtype
            .byte_len(row, n)
            .map_err(|e| Error::Shape(format!("tensor {name}: {e}")))?;
        let got = data.bytes().len();
        if want != got {
            return Err(Error::Shape(format!(
                "tensor {name}: {dtype} {shape:?} needs {want} bytes, data has {got}"
            )));
        }
        Ok(Tensor {
            name,
            shape,
            dtype,
            data,
        })
    }

    pub fn from_f32(name: impl Into<String>, shape: Vec<usize>, values: Vec<f32>) -> Result<Self> {
        let bytes: Vec<u8> = bytemuck::cast_slice(&values).to_vec();
        Tensor::new(name, shape, DType::F32, TensorData::Owned(Arc::new(bytes)))
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Length of the innermost dimension (1 for scalars).
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    pub fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    /// All elements as f32, dequantizing block types.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.numel()];
        advise_huge_pages(&mut out);
        self.decode_all(&mut out)?;
        Ok(out)
    }

    /// Decodes the whole tensor into `out` (`numel()` values). Large tensors
    /// are decoded in row blocks on the rayon pool: loading a model is mostly
    /// page faults and copies, and every core helps.
    pub fn decode_all(&self, out: &mut [f32]) -> Result<()> {
        self.decode_rows(0..self.row_count(), out)
    }

    /// Decodes rows `rows` into `out` (`rows.len() · row_len()` values), in
    /// parallel row blocks when there are many.
    pub fn decode_rows(&self, rows: std::ops::Range<usize>, out: &mut [f32]) -> Result<()> {
        use rayon::prelude::*;
        /// Elements per parallel block (1 MiB of f32).
        const BLOCK: usize = 1 << 18;
        let total = self.row_count();
        let row_len = self.row_len();
        let bytes = self.bytes();
        let err = |e| Error::Data(format!("tensor {}: {e}", self.name));
        if rows.end > total || rows.start > rows.end || out.len() != rows.len() * row_len {
            return Err(Error::Shape(format!(
                "tensor {}: rows {rows:?} of {total} do not fit {} values",
                self.name,
                out.len()
            )));
        }
        if rows.is_empty() {
            return Ok(());
        }
        if !bytes.len().is_multiple_of(total) {
            return Err(Error::Data(format!(
                "tensor {}: {} bytes are not {total} whole rows",
                self.name,
                bytes.len()
            )));
        }
        let row_bytes = bytes.len() / total;
        let bytes = &bytes[rows.start * row_bytes..rows.end * row_bytes];
        if out.len() < 2 * BLOCK || rows.len() < 2 {
            return decode_into(self.dtype, bytes, out).map_err(err);
        }
        let rows_per_block = (BLOCK / row_len.max(1)).max(1);
        out.par_chunks_mut(rows_per_block * row_len)
            .zip(bytes.par_chunks(rows_per_block * row_bytes))
            .try_for_each(|(o, b)| decode_into(self.dtype, b, o))
            .map_err(err)
    }

    /// Rows are the innermost dimension; a 1-D tensor is one row.
    pub fn row_count(&self) -> usize {
        self.numel() / self.row_len().max(1)
    }

    /// Decodes row `row` into `out` (`row_len()` values), dequantizing block
    /// types, so that large tensors can be processed a row at a time.
    pub fn row_to_f32(&self, row: usize, out: &mut [f32]) -> Result<()> {
        let row_bytes = self.bytes().len() / self.row_count().max(1);
        let bytes = self
            .bytes()
            .get(row * row_bytes..(row + 1) * row_bytes)
            .ok_or_else(|| Error::Shape(format!("tensor {}: no row {row}", self.name)))?;
        decode_into(self.dtype, bytes, out)
            .map_err(|e| Error::Data(format!("tensor {}: {e}", self.name)))
    }

    /// Tells the OS that this tensor's mapped pages will not be read again
    /// soon, so they leave the resident set (a streaming writer calls this
    /// after each tensor; the pages come back from the file if read again).
    pub fn release_pages(&self) {
        #[cfg(unix)]
        if let TensorData::Mapped { map, offset, len } = &self.data {
            const PAGE: usize = 4096;
            let start = offset.next_multiple_of(PAGE);
            let end = (offset + len) / PAGE * PAGE;
            if end > start {
                // SAFETY: the map is a read-only, file-backed private mapping
                // that is never written, so MADV_DONTNEED only drops clean
                // pages: later reads see the file's bytes again, unchanged.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
    }
}

/// Decodes `bytes` of `dtype` into `out`, which must hold exactly as many
/// elements as the bytes encode.
pub fn decode_into(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    if let DType::I4 | DType::U4 = dtype {
        if bytes.len() != out.len().div_ceil(2) {
            return Err(Error::Data(format!(
                "{dtype}: {} bytes do not hold {} elements",
                bytes.len(),
                out.len()
            )));
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = nibble(dtype, bytes, i) as f32;
        }
        return Ok(());
    }
    let elem = match dtype {
        DType::F32 | DType::I32 => 4,
        DType::F16 | DType::Bf16 | DType::I16 => 2,
        DType::I8 | DType::U8 | DType::Bool => 1,
        DType::I64 => 8,
        DType::I4 | DType::U4 => unreachable!("handled above"),
        DType::Ggml(t) => return dequant::dequantize(t, bytes, out),
    };
    if bytes.len() != out.len() * elem {
        return Err(Error::Data(format!(
            "{dtype}: {} bytes do not hold {} elements",
            bytes.len(),
            out.len()
        )));
    }
    let chunks = bytes.chunks_exact(elem).zip(out.iter_mut());
    match dtype {
        DType::F32 => chunks.for_each(|(c, o)| *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        DType::F16 => chunks.for_each(|(c, o)| *o = f16::from_le_bytes([c[0], c[1]]).to_f32()),
        DType::Bf16 => chunks.for_each(|(c, o)| *o = bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        DType::I8 => chunks.for_each(|(c, o)| *o = c[0] as i8 as f32),
        DType::I16 => chunks.for_each(|(c, o)| *o = i16::from_le_bytes([c[0], c[1]]) as f32),
        DType::U8 | DType::Bool => chunks.for_each(|(c, o)| *o = c[0] as f32),
        DType::I32 => {
            chunks.for_each(|(c, o)| *o = i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
        }
        DType::I64 => chunks.for_each(|(c, o)| {
            *o = i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
        }),
        DType::Ggml(_) | DType::I4 | DType::U4 => unreachable!("handled above"),
    }
    Ok(())
}

/// Element `i` of packed 4-bit data (low nibble first), sign-extended for I4.
pub fn nibble(dtype: DType, bytes: &[u8], i: usize) -> i64 {
    let n = (bytes[i / 2] >> (4 * (i % 2))) & 15;
    match dtype {
        DType::I4 => ((n << 4) as i8 >> 4) as i64,
        _ => n as i64,
    }
}

/// Asks the kernel to back `buf` with transparent huge pages (where it is
/// set to "madvise"), so that filling a large buffer takes one fault per
/// 2 MiB instead of one per 4 KiB. Advice only: failure changes nothing.
pub fn advise_huge_pages(buf: &mut [f32]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (buf.as_mut_ptr() as usize).next_multiple_of(HUGE);
        let end = (buf.as_mut_ptr() as usize + std::mem::size_of_val(buf)) / HUGE * HUGE;
        if end > start {
            // SAFETY: [start, end) lies inside `buf`, which we borrow
            // mutably; MADV_HUGEPAGE does not change the memory's contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}
