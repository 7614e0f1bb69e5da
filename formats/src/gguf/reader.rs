//! GGUF v2/v3 parsing. Every count, length and offset is checked against the
//! file before use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgec_core::{DType, GgmlType, Tensor, TensorData};
use memmap2::Mmap;

use super::value::{type_id, GgufValue, Metadata};
use super::DEFAULT_ALIGNMENT;
use crate::error::{FormatError, Result};

/// A parsed GGUF file: metadata and tensors borrowing from the map. Tensor
/// shapes are already in the IR's order (outermost first).
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<Tensor>,
}

// Limits far above any real model, so that a hostile count cannot make us
// allocate before the bounds checks catch it.
const MAX_STRING: u64 = 1 << 30;
const MAX_DIMS: u32 = 4;

struct Cursor<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl Into<String>) -> FormatError {
        FormatError::invalid(self.path, format!("{} (at byte {})", msg.into(), self.pos))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                self.err(format!(
                    "truncated file: {what} needs {n} bytes past the end of the file"
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1, "a u8")?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2, "a u16")?.try_into().unwrap(),
        ))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, "a u32")?.try_into().unwrap(),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, "a u64")?.try_into().unwrap(),
        ))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64()?;
        if len > MAX_STRING || len as usize > self.buf.len() - self.pos {
            return Err(self.err(format!(
                "{what}: string length {len} runs past the end of the file"
            )));
        }
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.err(format!("{what}: string is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<GgufValue> {
        use type_id::*;
        Ok(match ty {
            U8 => GgufValue::U8(self.u8()?),
            I8 => GgufValue::I8(self.u8()? as i8),
            U16 => GgufValue::U16(self.u16()?),
            I16 => GgufValue::I16(self.u16()? as i16),
            U32 => GgufValue::U32(self.u32()?),
            I32 => GgufValue::I32(self.u32()? as i32),
            F32 => GgufValue::F32(f32::from_bits(self.u32()?)),
            BOOL => match self.u8()? {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.err(format!("key {key}: bool value {b} is neither 0 nor 1"))),
            },
            STRING => GgufValue::String(self.string(key)?),
            U64 => GgufValue::U64(self.u64()?),
            I64 => GgufValue::I64(self.u64()? as i64),
            F64 => GgufValue::F64(f64::from_bits(self.u64()?)),
            ARRAY => {
                if depth > 0 {
                    return Err(self.err(format!("key {key}: nested arrays are not supported")));
                }
                let elem = self.u32()?;
                let n = self.u64()?;
                // Every element takes at least one byte.
                if n > (self.buf.len() - self.pos) as u64 {
                    return Err(self.err(format!(
                        "key {key}: array of {n} elements runs past the end of the file"
                    )));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                GgufValue::Array(elem, items)
            }
            other => return Err(self.err(format!("key {key}: unknown value type {other}"))),
        })
    }
}

pub fn read(path: &Path) -> Result<GgufFile> {
    let map = crate::safetensors::map_file(path)?;
    parse(path, map)
}

fn parse(path: &Path, map: Arc<Mmap>) -> Result<GgufFile> {
    let mut c = Cursor {
        path,
        buf: &map,
        pos: 0,
    };
    let magic = c.take(4, "the magic")?;
    if magic != b"GGUF" {
        return Err(FormatError::invalid(
            path,
            "not a GGUF file (magic is not \"GGUF\")",
        ));
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(FormatError::invalid(
            path,
            format!("GGUF version {version} is not supported (2 and 3 are)"),
        ));
    }
    let n_tensors = c.u64()?;
    let n_kv = c.u64()?;
    // A key takes at least 12 bytes, a tensor info at least 24.
    let left = (map.len() - c.pos) as u64;
    if n_kv > left / 12 || n_tensors > left / 24 {
        return Err(c.err(format!(
            "header claims {n_kv} keys and {n_tensors} tensors, more than the file can hold"
        )));
    }
    let mut metadata = Metadata::default();
    for _ in 0..n_kv {
        let key = c.string("a metadata key")?;
        let ty = c.u32()?;
        let value = c.value(ty, &key, 0)?;
        if metadata.get(&key).is_some() {
            return Err(c.err(format!("duplicate metadata key {key}")));
        }
        metadata.entries.push((key, value));
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 16 => a as usize,
            _ => {
                return Err(FormatError::invalid(
                    path,
                    format!("general.alignment {v:?} is not a power of two"),
                ))
            }
        },
    };
    struct Info {
        name: String,
        shape: Vec<usize>,
        ty: GgmlType,
        offset: u64,
        size: usize,
    }
    let mut infos: Vec<Info> = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = c.string("a tensor name")?;
        let n_dims = c.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(c.err(format!(
                "tensor {name}: {n_dims} dimensions (1 to {MAX_DIMS} are allowed)"
            )));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = c.u64()?;
            if d == 0 || d > 1 << 40 {
                return Err(c.err(format!("tensor {name}: dimension {d} is out of range")));
            }
            ne.push(d as usize);
        }
        let ty_id = c.u32()?;
        let ty = GgmlType::from_id(ty_id)
            .map_err(|_| c.err(format!("tensor {name}: ggml type {ty_id} is not supported")))?;
        let offset = c.u64()?;
        let n = edgec_core::tensor::checked_numel(&ne)
            .filter(|&n| n <= map.len() * 8)
            .ok_or_else(|| {
                c.err(format!(
                    "tensor {name}: shape {ne:?} is larger than the file"
                ))
            })?;
        let size = DType::from_ggml(ty)
            .byte_len(ne[0], n)
            .map_err(|e| c.err(format!("tensor {name}: {e}")))?;
        if offset % alignment as u64 != 0 {
            return Err(c.err(format!(
                "tensor {name}: offset {offset} is not aligned to {alignment}"
            )));
        }
        if infos.iter().any(|i| i.name == name) {
            return Err(c.err(format!("duplicate tensor name {name}")));
        }
        ne.reverse();
        infos.push(Info {
            name,
            shape: ne,
            ty,
            offset,
            size,
        });
    }
    let data_start = c.pos.div_ceil(alignment) * alignment;
    let data_len = map.len().saturating_sub(data_start) as u64;
    // Ranges must lie inside the data section and must not overlap.
    let mut ranges: Vec<(u64, u64, &str)> = infos
        .iter()
        .map(|i| (i.offset, i.offset + i.size as u64, i.name.as_str()))
        .collect();
    ranges.sort();
    for (start, end, name) in &ranges {
        if *end > data_len {
            return Err(FormatError::invalid(
                path,
                format!("tensor {name}: data [{start}, {end}) runs past the end of the file (data section is {data_len} bytes)"),
            ));
        }
    }
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(FormatError::invalid(
                path,
                format!("tensors {} and {} overlap", w[0].2, w[1].2),
            ));
        }
    }
    let tensors = infos
        .into_iter()
        .map(|i| {
            let data = TensorData::Mapped {
                map: map.clone(),
                offset: data_start + i.offset as usize,
                len: i.size,
            };
            Tensor::new(i.name, i.shape, DType::from_ggml(i.ty), data)
                .map_err(|e| FormatError::invalid(path, e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(GgufFile {
        path: path.to_path_buf(),
        version,
        metadata,
        tensors,
    })
}
