//! IDX files, the format of MNIST and Fashion-MNIST: plain or gzip-compressed
//! (recognised by the gzip magic bytes, whatever the name).
//!
//! Layout: two zero bytes, a type code (0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32,
//! 0x0D f32, 0x0E f64), the rank, then `rank` big-endian u32 dimensions and
//! the elements, big-endian, in row-major order. Every dimension and the data
//! length are checked against the header before anything of that size is
//! allocated: a truncated file, trailing bytes, a product of dimensions that
//! overflows or exceeds [`MAX_ELEMENTS`] are errors naming the file.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::{CalibrationError, Result};
use crate::images::{ImageBatch, Layout};

/// The most elements an IDX file may hold (4 GiB as f32; Fashion-MNIST's
/// training images are 47 million).
pub const MAX_ELEMENTS: u64 = 1 << 30;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The element type of an IDX file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdxType {
    U8,
    I8,
    I16,
    I32,
    F32,
    F64,
}

impl IdxType {
    /// The type of a header's type code.
    pub fn from_code(code: u8) -> Option<IdxType> {
        Some(match code {
            0x08 => IdxType::U8,
            0x09 => IdxType::I8,
            0x0B => IdxType::I16,
            0x0C => IdxType::I32,
            0x0D => IdxType::F32,
            0x0E => IdxType::F64,
            _ => return None,
        })
    }

    pub fn code(self) -> u8 {
        match self {
            IdxType::U8 => 0x08,
            IdxType::I8 => 0x09,
            IdxType::I16 => 0x0B,
            IdxType::I32 => 0x0C,
            IdxType::F32 => 0x0D,
            IdxType::F64 => 0x0E,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            IdxType::U8 | IdxType::I8 => 1,
            IdxType::I16 => 2,
            IdxType::I32 | IdxType::F32 => 4,
            IdxType::F64 => 8,
        }
    }

    fn is_integer(self) -> bool {
        !matches!(self, IdxType::F32 | IdxType::F64)
    }
}

/// The contents of an IDX file as f32.
#[derive(Clone, Debug, PartialEq)]
pub struct IdxArray {
    /// The file's element type (the values are converted to f32: i32 beyond
    /// 2^24 and f64 lose precision).
    pub dtype: IdxType,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// An IDX file's header and its raw big-endian element bytes.
struct RawIdx {
    dtype: IdxType,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl RawIdx {
    fn elements(&self) -> impl Iterator<Item = f64> + '_ {
        let size = self.dtype.size();
        let dtype = self.dtype;
        self.bytes.chunks_exact(size).map(move |b| match dtype {
            IdxType::U8 => b[0] as f64,
            IdxType::I8 => b[0] as i8 as f64,
            IdxType::I16 => i16::from_be_bytes([b[0], b[1]]) as f64,
            IdxType::I32 => i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64,
            IdxType::F32 => f32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64,
            IdxType::F64 => f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        })
    }
}

fn invalid(path: &Path, msg: impl Into<String>) -> CalibrationError {
    CalibrationError::Invalid {
        path: path.into(),
        msg: msg.into(),
    }
}

/// Reads exactly `buf.len()` bytes or says how many there were.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn read_raw(path: &Path) -> Result<RawIdx> {
    let io = |e| CalibrationError::io(path, e);
    let mut file = BufReader::new(File::open(path).map_err(io)?);
    let file_len = file.get_ref().metadata().map_err(io)?.len();
    let mut magic = [0u8; 2];
    let n = read_full(&mut file, &mut magic).map_err(io)?;
    // Put the sniffed bytes back in front of the rest.
    let mut stream = std::io::Cursor::new(magic[..n].to_vec()).chain(file);
    if n == 2 && magic == GZIP_MAGIC {
        // Decompression errors (a corrupt or cut stream, a bad checksum)
        // come back as io errors; say what they were about.
        let mut r = MultiGzDecoder::new(BufReader::new(stream));
        parse(path, &mut r, None).map_err(|e| match e {
            CalibrationError::Io { path, err } => invalid(&path, format!("gzip data: {err}")),
            other => other,
        })
    } else {
        parse(path, &mut stream, Some(file_len))
    }
}

/// Parses an IDX stream; `file_len` is the plain file's size, checked before
/// the data is read.
fn parse(path: &Path, r: &mut impl Read, file_len: Option<u64>) -> Result<RawIdx> {
    let io = |e| CalibrationError::io(path, e);
    let mut head = [0u8; 4];
    let n = read_full(r, &mut head).map_err(io)?;
    if n < 4 {
        return Err(invalid(
            path,
            format!("not an IDX file: {n} bytes, shorter than the 4-byte magic number"),
        ));
    }
    if head[0] != 0 || head[1] != 0 {
        return Err(invalid(
            path,
            format!(
                "not an IDX file: bad magic number {:02x} {:02x} {:02x} {:02x} \
                 (an IDX file starts with two zero bytes)",
                head[0], head[1], head[2], head[3]
            ),
        ));
    }
    let dtype = IdxType::from_code(head[2]).ok_or_else(|| {
        invalid(
            path,
            format!(
                "unknown IDX element type code 0x{:02x} (known: 0x08 u8, 0x09 i8, \
                 0x0b i16, 0x0c i32, 0x0d f32, 0x0e f64)",
                head[2]
            ),
        )
    })?;
    let rank = head[3] as usize;
    if rank == 0 {
        return Err(invalid(path, "IDX rank 0: no dimensions"));
    }
    let mut dim_bytes = vec![0u8; 4 * rank]; // at most 1020 bytes
    let n = read_full(r, &mut dim_bytes).map_err(io)?;
    if n < dim_bytes.len() {
        return Err(invalid(
            path,
            format!(
                "truncated IDX header: {rank} dimensions need {} bytes, found {n}",
                4 * rank
            ),
        ));
    }
    let mut shape = Vec::with_capacity(rank);
    let mut count: u64 = 1;
    for d in dim_bytes.chunks_exact(4) {
        let d = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        shape.push(d as usize);
        count = count.checked_mul(d as u64).ok_or_else(|| {
            invalid(
                path,
                format!("IDX dimensions {shape:?}...: the element count overflows"),
            )
        })?;
    }
    if count > MAX_ELEMENTS {
        return Err(invalid(
            path,
            format!(
                "IDX dimensions {shape:?}: {count} elements, more than the limit of {MAX_ELEMENTS}"
            ),
        ));
    }
    // count ≤ 2^30 and size ≤ 8: no overflow.
    let data_len = count * dtype.size() as u64;
    let header_len = 4 + 4 * rank as u64;
    if let Some(file_len) = file_len {
        let want = header_len + data_len;
        if file_len < want {
            return Err(invalid(
                path,
                format!(
                    "truncated IDX data: dimensions {shape:?} of {dtype:?} need {data_len} bytes \
                     after the {header_len}-byte header, the file has {}",
                    file_len - header_len
                ),
            ));
        }
        if file_len > want {
            return Err(invalid(
                path,
                format!(
                    "{} bytes after the IDX data (dimensions {shape:?} of {dtype:?}, {data_len} bytes)",
                    file_len - want
                ),
            ));
        }
    }
    // Grows only as bytes arrive: a gzip stream cut short or claiming huge
    // dimensions never makes the reader allocate what the header says.
    let mut bytes = Vec::with_capacity(data_len.min(1 << 24) as usize);
    r.take(data_len + 1).read_to_end(&mut bytes).map_err(io)?;
    let got = bytes.len() as u64;
    if got < data_len {
        return Err(invalid(
            path,
            format!(
                "truncated IDX data: dimensions {shape:?} of {dtype:?} need {data_len} bytes, \
                 found {got}"
            ),
        ));
    }
    if got > data_len {
        return Err(invalid(
            path,
            format!(
                "bytes after the IDX data (dimensions {shape:?} of {dtype:?}, {data_len} bytes)"
            ),
        ));
    }
    Ok(RawIdx {
        dtype,
        shape,
        bytes,
    })
}

/// Reads an IDX file (plain or gzip): its element type, shape and values as
/// f32. Non-finite floats are an error naming the element.
pub fn read_idx(path: impl AsRef<Path>) -> Result<IdxArray> {
    let path = path.as_ref();
    let raw = read_raw(path)?;
    let mut data = Vec::with_capacity(raw.bytes.len() / raw.dtype.size());
    for (i, v) in raw.elements().enumerate() {
        if !v.is_finite() {
            return Err(invalid(
                path,
                format!("IDX element {i} is {v}, not a finite number"),
            ));
        }
        data.push(v as f32);
    }
    Ok(IdxArray {
        dtype: raw.dtype,
        shape: raw.shape,
        data,
    })
}

/// Reads an IDX labels file: rank 1, an integer element type (MNIST's are
/// u8), values ≥ 0. An empty file (0 labels) is an error.
pub fn read_idx_labels(path: impl AsRef<Path>) -> Result<Vec<u32>> {
    let path = path.as_ref();
    let raw = read_raw(path)?;
    if raw.shape.len() != 1 {
        return Err(invalid(
            path,
            format!(
                "IDX labels must have rank 1, found dimensions {:?}",
                raw.shape
            ),
        ));
    }
    if !raw.dtype.is_integer() {
        return Err(invalid(
            path,
            format!("IDX labels must be integers, found {:?}", raw.dtype),
        ));
    }
    if raw.shape[0] == 0 {
        return Err(invalid(path, "no labels (dimension 0)"));
    }
    raw.elements()
        .enumerate()
        .map(|(i, v)| {
            if v < 0.0 {
                Err(invalid(path, format!("IDX label {i} is {v}, negative")))
            } else {
                Ok(v as u32)
            }
        })
        .collect()
}

/// Reads an IDX images file of rank 3, `[N, H, W]`, as one-channel samples
/// `x * scale + offset` (`x` as stored, 0..=255 for MNIST) in `[N, 1, H, W]`
/// (NCHW) or `[N, H, W, 1]` (NHWC), which hold the same values. N, H and W
/// must be non-zero.
pub fn read_idx_images(
    path: impl AsRef<Path>,
    scale: f32,
    offset: f32,
    layout: Layout,
) -> Result<ImageBatch> {
    let path = path.as_ref();
    if !scale.is_finite() || !offset.is_finite() {
        return Err(CalibrationError::InvalidArgument(format!(
            "pixel scale {scale} and offset {offset}: must be finite"
        )));
    }
    let raw = read_raw(path)?;
    let [n, h, w] = raw.shape[..] else {
        return Err(invalid(
            path,
            format!(
                "IDX images must have rank 3 [N, H, W], found dimensions {:?}",
                raw.shape
            ),
        ));
    };
    if n == 0 || h == 0 || w == 0 {
        return Err(invalid(
            path,
            format!("IDX images of dimensions {:?}: empty", raw.shape),
        ));
    }
    let mut data = Vec::with_capacity(n * h * w);
    for (i, v) in raw.elements().enumerate() {
        if !v.is_finite() {
            return Err(invalid(
                path,
                format!("IDX element {i} is {v}, not a finite number"),
            ));
        }
        data.push(v as f32 * scale + offset);
    }
    let shape = match layout {
        Layout::Nchw => [n, 1, h, w],
        Layout::Nhwc => [n, h, w, 1],
    };
    Ok(ImageBatch {
        data,
        shape,
        layout,
    })
}

/// Writes `values` as a plain IDX file of `dtype` and `shape`; for tests and
/// fixtures. Values are cast to the element type (saturating for integers).
/// The shape must match the number of values and have 1 to 255 dimensions,
/// each below 2^32.
pub fn write_idx(
    path: impl AsRef<Path>,
    dtype: IdxType,
    shape: &[usize],
    values: &[f64],
) -> Result<()> {
    let path = path.as_ref();
    if shape.is_empty() || shape.len() > 255 {
        return Err(CalibrationError::InvalidArgument(format!(
            "IDX rank {}: must be 1 to 255",
            shape.len()
        )));
    }
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count != Some(values.len()) || shape.iter().any(|&d| d > u32::MAX as usize) {
        return Err(CalibrationError::InvalidArgument(format!(
            "IDX shape {shape:?} does not hold {} values",
            values.len()
        )));
    }
    let mut out = vec![0, 0, dtype.code(), shape.len() as u8];
    for &d in shape {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    for &v in values {
        match dtype {
            IdxType::U8 => out.push(v as u8),
            IdxType::I8 => out.extend_from_slice(&(v as i8).to_be_bytes()),
            IdxType::I16 => out.extend_from_slice(&(v as i16).to_be_bytes()),
            IdxType::I32 => out.extend_from_slice(&(v as i32).to_be_bytes()),
            IdxType::F32 => out.extend_from_slice(&(v as f32).to_be_bytes()),
            IdxType::F64 => out.extend_from_slice(&v.to_be_bytes()),
        }
    }
    std::fs::write(path, out).map_err(|e| CalibrationError::io(path, e))
}
