//! Streaming GGUF v3 writer: the header is computed from the tensor plan,
//! then each tensor's bytes are produced, written and dropped, so peak
//! memory is about one tensor.

use std::io::Write;
use std::path::Path;

use edgec_core::{DType, GgmlType};

use super::value::{GgufValue, Metadata};
use super::DEFAULT_ALIGNMENT;
use crate::error::{FormatError, Result};

/// One tensor to write: GGUF name, IR-order shape and target type.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    pub name: String,
    pub shape: Vec<usize>,
    pub ty: GgmlType,
}

impl TensorPlan {
    pub fn byte_len(&self) -> Result<usize, edgec_core::Error> {
        let n = self.shape.iter().product();
        DType::from_ggml(self.ty).byte_len(self.shape.last().copied().unwrap_or(1), n)
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.push(*x as u8),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(*x as u8),
        GgufValue::String(s) => put_string(out, s),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Array(elem, items) => {
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
    }
}

/// The header (magic through the padding before the data) and each tensor's
/// offset in the data section.
pub fn header(metadata: &Metadata, plans: &[TensorPlan]) -> Result<Vec<u8>, edgec_core::Error> {
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(plans.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.entries.len() as u64).to_le_bytes());
    for (key, value) in &metadata.entries {
        put_string(&mut out, key);
        out.extend_from_slice(&value.type_id().to_le_bytes());
        put_value(&mut out, value);
    }
    let mut offset = 0usize;
    for plan in plans {
        put_string(&mut out, &plan.name);
        out.extend_from_slice(&(plan.shape.len() as u32).to_le_bytes());
        // GGUF lists dimensions innermost first.
        for d in plan.shape.iter().rev() {
            out.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        out.extend_from_slice(&plan.ty.id().to_le_bytes());
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += plan.byte_len()?.next_multiple_of(DEFAULT_ALIGNMENT);
    }
    out.resize(out.len().next_multiple_of(DEFAULT_ALIGNMENT), 0);
    Ok(out)
}

/// Writes a GGUF v3 file to `out`. `produce(i)` returns the encoded bytes of
/// `plans[i]`; it is called once per tensor, in order.
pub fn write<W: Write>(
    path: &Path,
    out: &mut W,
    metadata: &Metadata,
    plans: &[TensorPlan],
    mut produce: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<()> {
    let io = |e| FormatError::io(path, e);
    let head = header(metadata, plans).map_err(|e| FormatError::invalid(path, e.to_string()))?;
    out.write_all(&head).map_err(io)?;
    let zeros = [0u8; DEFAULT_ALIGNMENT];
    for (i, plan) in plans.iter().enumerate() {
        let bytes = produce(i)?;
        let want = plan
            .byte_len()
            .map_err(|e| FormatError::invalid(path, e.to_string()))?;
        if bytes.len() != want {
            return Err(FormatError::invalid(
                path,
                format!(
                    "tensor {}: encoder produced {} bytes, {} needs {want}",
                    plan.name,
                    bytes.len(),
                    plan.ty
                ),
            ));
        }
        out.write_all(&bytes).map_err(io)?;
        let pad = want.next_multiple_of(DEFAULT_ALIGNMENT) - want;
        out.write_all(&zeros[..pad]).map_err(io)?;
    }
    out.flush().map_err(io)
}
