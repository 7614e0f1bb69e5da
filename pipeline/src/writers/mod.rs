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
                sparsity_before: t.errors.sparsity_before(),
                error: t.errors.relative_rms(),
            }
        })
        .collect()
}

/// How much of a pruned model's sparsity the encoding kept, over the
/// tensors that had zeros: `(zeros before, zeros after, values, types that
/// lost some)`, or None for a dense model.
pub fn gguf_sparsity(report: &gguf::GgufReport) -> Option<(u64, u64, u64, Vec<String>)> {
    let sparse: Vec<&gguf::TensorReport> = report
        .tensors
        .iter()
        .filter(|t| t.errors.zeros_before > 0)
        .collect();
    let before: u64 = sparse.iter().map(|t| t.errors.zeros_before).sum();
    let values: u64 = sparse.iter().map(|t| t.errors.count).sum();
    // a few zeros in a dense model are chance, not a mask
    if before * 100 < values {
        return None;
    }
    let after: u64 = sparse
        .iter()
        .map(|t| t.errors.zeros.min(t.errors.zeros_before))
        .sum();
    let mut lost: Vec<String> = sparse
        .iter()
        .filter(|t| t.errors.zeros < t.errors.zeros_before)
        .map(|t| t.ty.clone())
        .collect();
    lost.sort();
    lost.dedup();
    Some((before, after, values, lost))
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
