//! Writers: one module per output format. They lay out and serialize what
//! the passes decided; the write pass picks one by the output path.

pub mod gguf;

use crate::report::TensorRecord;

/// The report's per-tensor records of a written GGUF file.
pub fn gguf_tensor_records(report: &gguf::GgufReport) -> Vec<TensorRecord> {
    report
        .tensors
        .iter()
        .map(|t| {
            let params: usize = t.shape.iter().product();
            let (layer, kind) = gguf_kind(&t.name);
            TensorRecord {
                name: t.name.clone(),
                kind,
                layer,
                shape: t.shape.clone(),
                ty: t.ty.clone(),
                bits_per_weight: t.bytes as f64 * 8.0 / params.max(1) as f64,
                bytes_before: t.bytes_before as u64,
                bytes_after: t.bytes as u64,
                sparsity: t.errors.sparsity(),
                error: t.errors.relative_rms(),
            }
        })
        .collect()
}

/// A GGUF tensor name's layer and kind: `blk.3.attn_q.weight` → (3, attn_q),
/// `token_embd.weight` → (None, token_embd); biases keep their suffix.
fn gguf_kind(name: &str) -> (Option<usize>, String) {
    let (layer, rest) = match name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
        Some((n, rest)) => (n.parse().ok(), rest),
        None => (None, name),
    };
    let kind = rest.strip_suffix(".weight").unwrap_or(rest);
    (layer, kind.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn gguf_kinds() {
        assert_eq!(
            super::gguf_kind("blk.12.ffn_down.weight"),
            (Some(12), "ffn_down".into())
        );
        assert_eq!(
            super::gguf_kind("token_embd.weight"),
            (None, "token_embd".into())
        );
        assert_eq!(
            super::gguf_kind("blk.0.attn_q.bias"),
            (Some(0), "attn_q.bias".into())
        );
    }
}
