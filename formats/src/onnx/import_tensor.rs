//! ONNX tensors (initializers, Constant values) into IR tensors: raw bytes,
//! typed repeated fields or external data, every count and length checked
//! before anything is allocated or mapped.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use edgec_core::{DType, Tensor, TensorData};
use memmap2::Mmap;

use super::proto::{data_location, data_type, TensorProto};
use crate::{FormatError, Result};

/// The IR dtype of an ONNX element type, when edgec has one.
pub(super) fn dtype_of(code: i32) -> Option<DType> {
    Some(match code {
        data_type::FLOAT => DType::F32,
        data_type::FLOAT16 => DType::F16,
        data_type::BFLOAT16 => DType::Bf16,
        data_type::INT8 => DType::I8,
        data_type::INT16 => DType::I16,
        data_type::UINT8 => DType::U8,
        data_type::INT32 => DType::I32,
        data_type::INT64 => DType::I64,
        data_type::BOOL => DType::Bool,
        data_type::INT4 => DType::I4,
        data_type::UINT4 => DType::U4,
        _ => return None,
    })
}

/// ONNX's name of an element type, for error messages.
pub(super) fn onnx_type_name(code: i32) -> String {
    let name = match code {
        data_type::UNDEFINED => "UNDEFINED",
        data_type::FLOAT => "FLOAT",
        data_type::UINT8 => "UINT8",
        data_type::INT8 => "INT8",
        data_type::UINT16 => "UINT16",
        data_type::INT16 => "INT16",
        data_type::INT32 => "INT32",
        data_type::INT64 => "INT64",
        data_type::STRING => "STRING",
        data_type::BOOL => "BOOL",
        data_type::FLOAT16 => "FLOAT16",
        data_type::DOUBLE => "DOUBLE",
        data_type::UINT32 => "UINT32",
        data_type::UINT64 => "UINT64",
        14 => "COMPLEX64",
        15 => "COMPLEX128",
        data_type::BFLOAT16 => "BFLOAT16",
        17..=20 | 23 | 24 => "FLOAT8",
        data_type::UINT4 => "UINT4",
        data_type::INT4 => "INT4",
        _ => return format!("data type {code}"),
    };
    name.to_string()
}

/// Bytes of `numel` elements (4-bit types pack two per byte); `None` on overflow.
fn byte_len(d: DType, numel: usize) -> Option<usize> {
    match d {
        DType::F32 | DType::I32 => numel.checked_mul(4),
        DType::F16 | DType::Bf16 | DType::I16 => numel.checked_mul(2),
        DType::I8 | DType::U8 | DType::Bool => Some(numel),
        DType::I4 | DType::U4 => Some(numel.div_ceil(2)),
        DType::I64 => numel.checked_mul(8),
        DType::Ggml(_) => unreachable!("ONNX tensors are dense"),
    }
}

/// The constants of a graph by value name, in the order they were added.
#[derive(Default)]
pub(super) struct Consts {
    pub list: Vec<Tensor>,
    index: HashMap<String, usize>,
}

impl Consts {
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.list[i])
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Adds `t`; false (and nothing added) when the name is taken.
    pub fn insert(&mut self, t: Tensor) -> bool {
        if self.index.contains_key(&t.name) {
            return false;
        }
        self.index.insert(t.name.clone(), self.list.len());
        self.list.push(t);
        true
    }

    /// Keeps the constants `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.list.retain(|t| keep(&t.name));
        self.index = self
            .list
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
    }
}

/// Integer values of a one-dimensional or scalar I64/I32 constant.
pub(super) fn ints_of(t: &Tensor) -> Option<Vec<i64>> {
    match t.dtype {
        DType::I64 => Some(
            t.bytes()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        DType::I32 => Some(
            t.bytes()
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                .collect(),
        ),
        _ => None,
    }
}

/// Turns tensor protos into tensors, borrowing from the model's map and
/// from external data files where it can.
pub(super) struct TensorReader<'a> {
    path: &'a Path,
    /// The model's folder, canonical: external data must stay inside it.
    dir: PathBuf,
    map: Arc<Mmap>,
    external: RefCell<HashMap<PathBuf, Arc<Mmap>>>,
}

impl<'a> TensorReader<'a> {
    pub fn new(path: &'a Path, map: Arc<Mmap>) -> Result<Self> {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = parent
            .canonicalize()
            .map_err(|e| FormatError::io(parent, e))?;
        Ok(TensorReader {
            path,
            dir,
            map,
            external: RefCell::new(HashMap::new()),
        })
    }

    fn err(&self, name: &str, msg: impl std::fmt::Display) -> FormatError {
        FormatError::invalid(self.path, format!("tensor {name}: {msg}"))
    }

    /// Decodes `t` as the tensor `name`. `raw` is where its raw_data lies in
    /// the model file when the caller found it there (initializers);
    /// otherwise `t.raw_data` is used (Constant nodes' values).
    pub fn read(&self, t: &TensorProto, raw: Option<Range<usize>>, name: &str) -> Result<Tensor> {
        let dtype = dtype_of(t.data_type).ok_or_else(|| {
            self.err(
                name,
                format!(
                    "element type {} is not supported",
                    onnx_type_name(t.data_type)
                ),
            )
        })?;
        let mut shape = Vec::with_capacity(t.dims.len().min(64));
        for &d in &t.dims {
            let d = usize::try_from(d).map_err(|_| {
                self.err(name, format!("negative dimension {d} in dims {:?}", t.dims))
            })?;
            shape.push(d);
        }
        let numel = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| byte_len(dtype, n).is_some())
            .ok_or_else(|| {
                self.err(
                    name,
                    format!("absurd dimensions {:?}: the size overflows", t.dims),
                )
            })?;
        let want = byte_len(dtype, numel).expect("checked above");
        let data = match t.data_location {
            data_location::EXTERNAL => self.external(t, name, want)?,
            data_location::DEFAULT => {
                let raw_len = raw.as_ref().map_or(t.raw_data.len(), |r| r.len());
                if raw_len > 0 || (want == 0 && !has_typed(t)) {
                    if raw_len != want {
                        return Err(self.err(
                            name,
                            format!("{dtype} {shape:?} needs {want} bytes, raw_data has {raw_len}"),
                        ));
                    }
                    match raw {
                        Some(r) if !r.is_empty() => TensorData::Mapped {
                            map: self.map.clone(),
                            offset: r.start,
                            len: r.len(),
                        },
                        _ => TensorData::Owned(Arc::new(t.raw_data.clone())),
                    }
                } else {
                    TensorData::Owned(Arc::new(self.typed(t, name, dtype, &shape, numel)?))
                }
            }
            other => {
                return Err(self.err(name, format!("unknown data_location {other}")));
            }
        };
        Tensor::new(name, shape, dtype, data)
            .map_err(|e| FormatError::invalid(self.path, e.to_string()))
    }

    /// Little-endian bytes from the typed repeated fields.
    fn typed(
        &self,
        t: &TensorProto,
        name: &str,
        dtype: DType,
        shape: &[usize],
        numel: usize,
    ) -> Result<Vec<u8>> {
        let count = |field: &str, n: usize| {
            if n == numel {
                Ok(())
            } else {
                Err(self.err(
                    name,
                    format!("{dtype} {shape:?} needs {numel} elements, {field} has {n}"),
                ))
            }
        };
        // int32_data carries the narrow types one element per entry.
        let narrow = |lo: i32, hi: i32, width: usize| -> Result<Vec<u8>> {
            count("int32_data", t.int32_data.len())?;
            let mut out = Vec::with_capacity(numel * width);
            for &v in &t.int32_data {
                if v < lo || v > hi {
                    return Err(self.err(
                        name,
                        format!("int32_data value {v} is out of range for {dtype}"),
                    ));
                }
                out.extend_from_slice(&(v as u32).to_le_bytes()[..width]);
            }
            Ok(out)
        };
        Ok(match dtype {
            DType::F32 => {
                count("float_data", t.float_data.len())?;
                t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect()
            }
            DType::I64 => {
                count("int64_data", t.int64_data.len())?;
                t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect()
            }
            DType::I32 => {
                count("int32_data", t.int32_data.len())?;
                t.int32_data.iter().flat_map(|v| v.to_le_bytes()).collect()
            }
            DType::I8 => narrow(-128, 127, 1)?,
            DType::I16 => narrow(i16::MIN as i32, i16::MAX as i32, 2)?,
            DType::U8 => narrow(0, 255, 1)?,
            DType::Bool => narrow(0, 1, 1)?,
            DType::F16 | DType::Bf16 => narrow(0, 0xffff, 2)?,
            DType::I4 | DType::U4 => {
                // int32_data holds two 4-bit elements per entry (low first)
                if t.int32_data.len() != numel.div_ceil(2) {
                    return Err(self.err(
                        name,
                        format!(
                            "{dtype} {shape:?} needs {} int32_data entries, has {}",
                            numel.div_ceil(2),
                            t.int32_data.len()
                        ),
                    ));
                }
                t.int32_data
                    .iter()
                    .map(|&v| v as u8)
                    .take(numel.div_ceil(2))
                    .collect()
            }
            DType::Ggml(_) => unreachable!("ONNX tensors are dense"),
        })
    }

    /// Data in a file beside the model, borrowed from its map.
    fn external(&self, t: &TensorProto, name: &str, want: usize) -> Result<TensorData> {
        let (mut location, mut offset, mut length) = (None, 0u64, None);
        for e in &t.external_data {
            let num = |v: &str| {
                v.parse::<u64>().map_err(|_| {
                    self.err(
                        name,
                        format!("external data {} {v:?} is not a number", e.key),
                    )
                })
            };
            match e.key.as_str() {
                "location" => location = Some(e.value.as_str()),
                "offset" => offset = num(&e.value)?,
                "length" => length = Some(num(&e.value)?),
                _ => {} // checksum and future keys do not change the bytes
            }
        }
        let location = location.ok_or_else(|| self.err(name, "external data has no location"))?;
        let file_path = self.external_path(name, location)?;
        if want == 0 && length.unwrap_or(0) == 0 {
            return Ok(TensorData::Owned(Arc::new(Vec::new())));
        }
        let map = self.map_external(name, location, &file_path)?;
        let size = map.len() as u64;
        let length = length.unwrap_or(size.saturating_sub(offset));
        let end = offset.checked_add(length).filter(|&e| e <= size);
        if end.is_none() {
            return Err(self.err(
                name,
                format!(
                    "external data offset {offset} + length {length} runs past the end of \
                     {location} ({size} bytes)"
                ),
            ));
        }
        if length != want as u64 {
            return Err(self.err(
                name,
                format!(
                    "shape {:?} needs {want} bytes, external data length is {length}",
                    t.dims
                ),
            ));
        }
        Ok(TensorData::Mapped {
            map,
            offset: offset as usize,
            len: want,
        })
    }

    /// The file `location` names, refusing anything that leaves the model's
    /// folder: a model file must not make us read arbitrary files.
    fn external_path(&self, name: &str, location: &str) -> Result<PathBuf> {
        let rel = Path::new(location);
        if location.is_empty() {
            return Err(self.err(name, "external data location is empty"));
        }
        if rel.has_root() || rel.is_absolute() {
            return Err(self.err(
                name,
                format!("external data location {location:?} is an absolute path"),
            ));
        }
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(self.err(
                name,
                format!("external data location {location:?} leaves the model's folder"),
            ));
        }
        let full = self.dir.join(rel);
        let canonical = full
            .canonicalize()
            .map_err(|e| self.err(name, format!("external data file {location:?}: {e}")))?;
        if !canonical.starts_with(&self.dir) {
            return Err(self.err(
                name,
                format!(
                    "external data location {location:?} resolves outside the model's folder \
                     (to {})",
                    canonical.display()
                ),
            ));
        }
        if !canonical.is_file() {
            return Err(self.err(
                name,
                format!("external data location {location:?} is not a regular file"),
            ));
        }
        Ok(canonical)
    }

    fn map_external(&self, name: &str, location: &str, file_path: &Path) -> Result<Arc<Mmap>> {
        if let Some(m) = self.external.borrow().get(file_path) {
            return Ok(m.clone());
        }
        let io =
            |e: std::io::Error| self.err(name, format!("external data file {location:?}: {e}"));
        let file = File::open(file_path).map_err(io)?;
        if file.metadata().map_err(io)?.len() == 0 {
            return Err(self.err(name, format!("external data file {location:?} is empty")));
        }
        // SAFETY: the map is read-only; a file changed underneath us while
        // converting is outside what any converter can defend against.
        let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(io)?);
        self.external
            .borrow_mut()
            .insert(file_path.to_path_buf(), map.clone());
        Ok(map)
    }
}

fn has_typed(t: &TensorProto) -> bool {
    !(t.float_data.is_empty()
        && t.int32_data.is_empty()
        && t.int64_data.is_empty()
        && t.double_data.is_empty()
        && t.uint64_data.is_empty()
        && t.string_data.is_empty())
}
