//! Block decoders for every ggml type edgec writes.

use half::{bf16, f16};

use super::GgmlType;
use crate::{Error, Result};

/// Decodes `src` (whole blocks of type `ty`) into `out`, which must hold
/// exactly the number of elements those blocks encode.
pub fn dequantize(ty: GgmlType, src: &[u8], out: &mut [f32]) -> Result<()> {
    let want = ty.row_bytes(out.len())?;
    if src.len() != want {
        return Err(Error::Data(format!(
            "{ty}: {} elements need {want} bytes, got {}",
            out.len(),
            src.len()
        )));
    }
    let bs = ty.block_size();
    let ts = ty.type_size();
    let decode: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => |b, o| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, o| o[0] = f16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Bf16 => |b, o| o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        _ => return Err(Error::Unsupported(format!("decoding {ty} is not implemented yet"))),
    };
    for (b, o) in src.chunks_exact(ts).zip(out.chunks_exact_mut(bs)) {
        decode(b, o);
    }
    Ok(())
}
