//! safetensors: single files and sharded models, memory-mapped; and a
//! streaming writer.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgec_core::{DType, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors, View};

use crate::error::{FormatError, Result};

pub(crate) fn map_file(path: &Path) -> Result<Arc<Mmap>> {
    let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
    // SAFETY: the map is read-only; a file changed underneath us while
    // converting is outside what any converter can defend against.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
    Ok(Arc::new(map))
}

fn dtype_from_st(path: &Path, name: &str, dtype: Dtype) -> Result<DType> {
    Ok(match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::Bf16,
        Dtype::I8 => DType::I8,
        Dtype::I16 => DType::I16,
        Dtype::U8 => DType::U8,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        other => {
            return Err(FormatError::invalid(
                path,
                format!("tensor {name}: dtype {other:?} is not supported (F32, F16, BF16, I8, U8, I32, I64 are)"),
            ))
        }
    })
}

/// Reads one `.safetensors` file. Tensors come back in file (offset) order and
/// borrow their bytes from the map.
pub fn read_file(path: &Path) -> Result<Vec<Tensor>> {
    let map = map_file(path)?;
    // The crate validates the header: its length, JSON, that offsets are
    // contiguous, in range and match each dtype and shape.
    let st = SafeTensors::deserialize(&map)
        .map_err(|e| FormatError::invalid(path, format!("not a valid safetensors file: {e}")))?;
    let base = map.as_ptr() as usize;
    let mut views: Vec<_> = st.tensors();
    views.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    views
        .into_iter()
        .map(|(name, view)| {
            let dtype = dtype_from_st(path, &name, view.dtype())?;
            let offset = view.data().as_ptr() as usize - base;
            let data = TensorData::Mapped {
                map: map.clone(),
                offset,
                len: view.data().len(),
            };
            Tensor::new(name, view.shape().to_vec(), dtype, data)
                .map_err(|e| FormatError::invalid(path, e.to_string()))
        })
        .collect()
}

/// Reads a sharded model from its `model.safetensors.index.json`, checking
/// that every tensor the index names is in the shard it names.
pub fn read_sharded(index_path: &Path) -> Result<Vec<Tensor>> {
    let text = std::fs::read_to_string(index_path).map_err(|e| FormatError::io(index_path, e))?;
    let index: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| FormatError::invalid(index_path, format!("invalid JSON: {e}")))?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| FormatError::invalid(index_path, "no \"weight_map\" object"))?;
    let dir = index_path.parent().unwrap_or(Path::new("."));
    // shard file -> tensor names the index puts there
    let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| {
            FormatError::invalid(
                index_path,
                format!("weight_map[{tensor}] is not a file name"),
            )
        })?;
        if shard.contains('/') || shard.contains('\\') || shard.starts_with("..") {
            return Err(FormatError::invalid(
                index_path,
                format!("shard name {shard:?} must be a plain file name in the model folder"),
            ));
        }
        shards
            .entry(shard.to_string())
            .or_default()
            .push(tensor.clone());
    }
    let mut out = Vec::new();
    for (shard, names) in shards {
        let shard_path: PathBuf = dir.join(&shard);
        let tensors = read_file(&shard_path)?;
        for name in &names {
            if !tensors.iter().any(|t| &t.name == name) {
                return Err(FormatError::invalid(
                    &shard_path,
                    format!("the index puts tensor {name} in this shard, but it is not there"),
                ));
            }
        }
        out.extend(tensors.into_iter().filter(|t| names.contains(&t.name)));
    }
    Ok(out)
}

/// A tensor to write, produced on demand so that only one is in memory at a time.
pub struct LazyTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub produce: Box<dyn Fn() -> Vec<u8> + 'a>,
}

impl View for &LazyTensor<'_> {
    fn dtype(&self) -> Dtype {
        match self.dtype {
            DType::F32 => Dtype::F32,
            DType::F16 => Dtype::F16,
            DType::Bf16 => Dtype::BF16,
            DType::I8 => Dtype::I8,
            DType::I16 => Dtype::I16,
            DType::U8 => Dtype::U8,
            DType::I32 => Dtype::I32,
            DType::I64 => Dtype::I64,
            DType::Bool => Dtype::BOOL,
            // Callers unpack 4-bit codes before writing safetensors.
            DType::I4 | DType::U4 => unreachable!("4-bit codes are not written to safetensors"),
            // Callers dequantize block types before writing safetensors.
            DType::Ggml(_) => unreachable!("block types are not written to safetensors"),
        }
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned((self.produce)())
    }
    fn data_len(&self) -> usize {
        let n: usize = self.shape.iter().product();
        self.dtype
            .byte_len(self.shape.last().copied().unwrap_or(1), n)
            .unwrap_or(0)
    }
}

/// Writes tensors to `path` (the caller handles the temporary file and
/// rename). The crate writes them sorted by alignment then name, so output
/// does not depend on input order.
pub fn write_file(path: &Path, tensors: &[LazyTensor<'_>]) -> Result<()> {
    if let Some(t) = tensors.iter().find(|t| matches!(t.dtype, DType::Ggml(_))) {
        return Err(FormatError::invalid(
            path,
            format!(
                "tensor {}: {} cannot be stored in safetensors",
                t.name, t.dtype
            ),
        ));
    }
    // One key only: the crate takes a HashMap, whose order would vary.
    let meta = Some(
        [("format".to_string(), "pt".to_string())]
            .into_iter()
            .collect(),
    );
    safetensors::tensor::serialize_to_file(tensors.iter().map(|t| (t.name.clone(), t)), meta, path)
        .map_err(|e| FormatError::invalid(path, format!("writing safetensors: {e}")))
}
