//! GGUF: llama.cpp's model format. The reader accepts v2 and v3; the writer
//! streams v3. This module maps between the IR (HF names and layouts) and
//! llama.cpp's tensor names, hyper-parameter keys and rotary row order.

pub mod reader;
pub mod value;
pub mod writer;

use std::path::Path;
use std::sync::Arc;

use edgec_core::{
    BertParams, BlockShape, Family, LlamaParams, LlamaVariant, Model, ModelMeta, Tensor, TensorData,
};

use crate::error::{FormatError, Result};
use crate::tokenizer;
pub use reader::GgufFile;
use value::{GgufValue, Metadata};
pub use writer::TensorPlan;

pub const DEFAULT_ALIGNMENT: usize = 32;

/// llama.cpp's `llama_ftype`: what `general.file_type` records.
pub fn file_type_id(name: &str) -> Option<u32> {
    Some(match name {
        "F32" => 0,
        "F16" => 1,
        "Q4_0" => 2,
        "Q4_1" => 3,
        "Q8_0" => 7,
        "Q5_0" => 8,
        "Q5_1" => 9,
        "Q2_K" => 10,
        "Q3_K_S" => 11,
        "Q3_K_M" => 12,
        "Q3_K_L" => 13,
        "Q4_K_S" => 14,
        "Q4_K_M" => 15,
        "Q5_K_S" => 16,
        "Q5_K_M" => 17,
        "Q6_K" => 18,
        "IQ4_NL" => 25,
        "BF16" => 32,
        _ => return None,
    })
}

/// The llama.cpp name of an IR (Hugging Face) tensor name.
pub fn gguf_tensor_name(family: &Family, hf: &str) -> Option<String> {
    let (layer, rest) = split_layer(family, hf);
    let mapped = match family {
        Family::Llama(_) => match (layer, rest) {
            (None, "model.embed_tokens.weight") => "token_embd.weight".to_string(),
            (None, "model.norm.weight") => "output_norm.weight".to_string(),
            (None, "lm_head.weight") => "output.weight".to_string(),
            (Some(i), r) => {
                let (stem, suffix) = r.rsplit_once('.')?;
                let base = match stem {
                    "input_layernorm" => "attn_norm",
                    "self_attn.q_proj" => "attn_q",
                    "self_attn.k_proj" => "attn_k",
                    "self_attn.v_proj" => "attn_v",
                    "self_attn.o_proj" => "attn_output",
                    "post_attention_layernorm" => "ffn_norm",
                    "mlp.gate_proj" => "ffn_gate",
                    "mlp.up_proj" => "ffn_up",
                    "mlp.down_proj" => "ffn_down",
                    _ => return None,
                };
                format!("blk.{i}.{base}.{suffix}")
            }
            _ => return None,
        },
        Family::Bert(_) => match (layer, rest) {
            (None, "embeddings.word_embeddings.weight") => "token_embd.weight".to_string(),
            (None, "embeddings.position_embeddings.weight") => "position_embd.weight".to_string(),
            (None, "embeddings.token_type_embeddings.weight") => "token_types.weight".to_string(),
            (None, "embeddings.LayerNorm.weight") => "token_embd_norm.weight".to_string(),
            (None, "embeddings.LayerNorm.bias") => "token_embd_norm.bias".to_string(),
            (Some(i), r) => {
                let (stem, suffix) = r.rsplit_once('.')?;
                let base = match stem {
                    "attention.self.query" => "attn_q",
                    "attention.self.key" => "attn_k",
                    "attention.self.value" => "attn_v",
                    "attention.output.dense" => "attn_output",
                    "attention.output.LayerNorm" => "attn_output_norm",
                    "intermediate.dense" => "ffn_up",
                    "output.dense" => "ffn_down",
                    "output.LayerNorm" => "layer_output_norm",
                    _ => return None,
                };
                format!("blk.{i}.{base}.{suffix}")
            }
            _ => return None,
        },
    };
    Some(mapped)
}

fn split_layer<'a>(family: &Family, name: &'a str) -> (Option<usize>, &'a str) {
    let prefix = match family {
        Family::Llama(_) => "model.layers.",
        Family::Bert(_) => "encoder.layer.",
    };
    if let Some(rest) = name.strip_prefix(prefix) {
        if let Some((idx, tail)) = rest.split_once('.') {
            if let Ok(i) = idx.parse::<usize>() {
                return (Some(i), tail);
            }
        }
    }
    (None, name)
}

/// The IR name for a llama.cpp tensor name: the inverse of [`gguf_tensor_name`].
pub fn hf_tensor_name(family: &Family, gguf: &str) -> Option<String> {
    family
        .expected_tensors()
        .into_iter()
        .map(|(n, _)| n)
        .find(|n| gguf_tensor_name(family, n).as_deref() == Some(gguf))
}

/// How many heads a tensor's rows must be permuted over for llama.cpp's
/// rotary layout, or None when it is not permuted. llama.cpp's `llama`
/// graph rotates adjacent pairs, while HF checkpoints rotate the two halves
/// of each head, so convert_hf_to_gguf reorders the rows of Q and K.
pub fn rotary_permute_heads(family: &Family, hf: &str) -> Option<usize> {
    let Family::Llama(p) = family else {
        return None;
    };
    if p.variant == LlamaVariant::Qwen2 {
        return None; // llama.cpp runs qwen2 with NeoX rotary: no reorder.
    }
    let block = || {
        hf.strip_prefix("model.layers.")
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|&i| i < p.num_layers)
            .map(|i| p.block(i))
    };
    if hf.ends_with("self_attn.q_proj.weight") || hf.ends_with("self_attn.q_proj.bias") {
        block().map(|b| b.num_heads)
    } else if hf.ends_with("self_attn.k_proj.weight") || hf.ends_with("self_attn.k_proj.bias") {
        block().map(|b| b.num_kv_heads)
    } else {
        None
    }
}

/// The row of the other layout that row `row` of a Q or K matrix comes
/// from: llama.cpp's `llama` graph rotates adjacent pairs while HF
/// checkpoints rotate the two halves of each head, so within each head of
/// `2*half` rows llama.cpp's row `2j + s` is HF's row `s*half + j`.
/// `to_gguf` = true maps a llama.cpp row to its HF source row; false the inverse.
pub fn rotary_source_row(row: usize, rows: usize, n_head: usize, to_gguf: bool) -> usize {
    let per_head = rows / n_head;
    let half = per_head / 2;
    let (head, within) = (row / per_head, row % per_head);
    let src = if to_gguf {
        (within % 2) * half + within / 2
    } else {
        (within % half) * 2 + within / half
    };
    head * per_head + src
}

/// Reorders whole rows of `data` (each `row_len` long: values, or the bytes
/// of quantized rows) from HF's rotary layout to llama.cpp's (`inverse` =
/// false) or back.
pub fn permute_rows<T: Copy>(data: &[T], row_len: usize, n_head: usize, inverse: bool) -> Vec<T> {
    let rows = data.len() / row_len;
    (0..rows)
        .flat_map(|r| {
            let src = rotary_source_row(r, rows, n_head, !inverse);
            data[src * row_len..(src + 1) * row_len].iter().copied()
        })
        .collect()
}

/// `general.*` and hyper-parameter keys, in llama.cpp's order.
pub fn model_metadata(model: &Model, file_type: u32) -> Metadata {
    let mut m = Metadata::default();
    let arch = match &model.meta.family {
        Some(Family::Llama(p)) => p.gguf_arch(),
        Some(Family::Bert(_)) => "bert",
        None => "generic",
    };
    m.set("general.architecture", GgufValue::String(arch.into()));
    m.set("general.type", GgufValue::String("model".into()));
    m.set("general.name", GgufValue::String(model.meta.name.clone()));
    let u32v = |v: usize| GgufValue::U32(v as u32);
    match &model.meta.family {
        Some(Family::Llama(p)) => {
            m.set(format!("{arch}.block_count"), u32v(p.num_layers));
            m.set(
                format!("{arch}.context_length"),
                u32v(p.max_position_embeddings),
            );
            m.set(format!("{arch}.embedding_length"), u32v(p.hidden_size));
            // deci reads one value per block; the others one for all.
            let widths = |f: fn(&BlockShape) -> usize, global: usize| match &p.blocks {
                Some(b) => {
                    GgufValue::Array(value::type_id::U32, b.iter().map(|b| u32v(f(b))).collect())
                }
                None => u32v(global),
            };
            m.set(
                format!("{arch}.feed_forward_length"),
                widths(|b| b.intermediate_size, p.intermediate_size),
            );
            m.set(
                format!("{arch}.attention.head_count"),
                widths(|b| b.num_heads, p.num_heads),
            );
            m.set(
                format!("{arch}.attention.head_count_kv"),
                widths(|b| b.num_kv_heads, p.num_kv_heads),
            );
            m.set(
                format!("{arch}.rope.freq_base"),
                GgufValue::F32(p.rope_theta),
            );
            m.set(
                format!("{arch}.attention.layer_norm_rms_epsilon"),
                GgufValue::F32(p.rms_norm_eps),
            );
            if p.head_dim * p.num_heads != p.hidden_size || !p.is_uniform() {
                m.set(format!("{arch}.attention.key_length"), u32v(p.head_dim));
                m.set(format!("{arch}.attention.value_length"), u32v(p.head_dim));
            }
            m.set(format!("{arch}.vocab_size"), u32v(p.vocab_size));
            m.set(format!("{arch}.rope.dimension_count"), u32v(p.head_dim));
        }
        Some(Family::Bert(p)) => {
            m.set("bert.block_count", u32v(p.num_layers));
            m.set("bert.context_length", u32v(p.max_position_embeddings));
            m.set("bert.embedding_length", u32v(p.hidden_size));
            m.set("bert.feed_forward_length", u32v(p.intermediate_size));
            m.set("bert.attention.head_count", u32v(p.num_heads));
            m.set(
                "bert.attention.layer_norm_epsilon",
                GgufValue::F32(p.layer_norm_eps),
            );
            m.set("bert.attention.causal", GgufValue::Bool(false));
            // llama.cpp's LLAMA_POOLING_TYPE_MEAN, as sentence-transformers pools MiniLM.
            m.set("bert.pooling_type", GgufValue::U32(1));
            m.set("tokenizer.ggml.token_type_count", u32v(p.type_vocab_size));
        }
        None => {}
    }
    m.set("general.file_type", GgufValue::U32(file_type));
    m.set("general.quantization_version", GgufValue::U32(2));
    if let Some(vocab) = &model.meta.vocab {
        tokenizer::vocab_to_gguf(vocab, &mut m);
    }
    m
}

fn need_u(path: &Path, m: &Metadata, key: &str) -> Result<usize> {
    m.get_u64(key)
        .filter(|&v| v > 0 && v < 1 << 40)
        .map(|v| v as usize)
        .ok_or_else(|| {
            FormatError::invalid(
                path,
                format!("metadata key {key} is missing or not a positive integer"),
            )
        })
}

fn need_f(path: &Path, m: &Metadata, key: &str, default: Option<f32>) -> Result<f32> {
    m.get_f32(key)
        .or(default)
        .filter(|v| v.is_finite())
        .ok_or_else(|| {
            FormatError::invalid(
                path,
                format!("metadata key {key} is missing or not a number"),
            )
        })
}

/// A per-block hyper-parameter: one value for all `layers` blocks, or an
/// array of one per block (`deci`).
fn per_block(path: &Path, m: &Metadata, key: &str, layers: usize) -> Result<Vec<usize>> {
    let bad = || {
        FormatError::invalid(
            path,
            format!(
                "metadata key {key} is missing, or not an integer or an array of {layers} integers"
            ),
        )
    };
    let value = m.get(key).ok_or_else(bad)?;
    let values: Vec<u64> = match value.as_array() {
        Some(items) if items.len() == layers => items
            .iter()
            .map(|v| v.as_u64())
            .collect::<Option<_>>()
            .ok_or_else(bad)?,
        Some(_) => return Err(bad()),
        None => vec![value.as_u64().ok_or_else(bad)?; layers],
    };
    values
        .into_iter()
        .map(|v| usize::try_from(v).ok().filter(|&v| v < 1 << 32))
        .collect::<Option<_>>()
        .ok_or_else(bad)
}

/// Reads the family and hyper-parameters llama.cpp's keys describe.
pub fn family_from_metadata(path: &Path, m: &Metadata, tensors: &[Tensor]) -> Result<Family> {
    let arch = m
        .get_str("general.architecture")
        .ok_or_else(|| FormatError::invalid(path, "no general.architecture"))?;
    match arch {
        "llama" | "qwen2" | "deci" => {
            let variant = if arch == "qwen2" {
                LlamaVariant::Qwen2
            } else {
                LlamaVariant::Llama
            };
            let hidden = need_u(path, m, &format!("{arch}.embedding_length"))?;
            let layers = need_u(path, m, &format!("{arch}.block_count"))?;
            // Every block has tensors: a count past theirs is a lie, not a size to allocate.
            if layers > tensors.len() {
                return Err(FormatError::invalid(
                    path,
                    format!(
                        "block_count {layers} is more than the file's {} tensors",
                        tensors.len()
                    ),
                ));
            }
            let heads = per_block(path, m, &format!("{arch}.attention.head_count"), layers)?;
            let kv = match m.get(&format!("{arch}.attention.head_count_kv")) {
                Some(_) => per_block(path, m, &format!("{arch}.attention.head_count_kv"), layers)?,
                None => heads.clone(),
            };
            let ffn = per_block(path, m, &format!("{arch}.feed_forward_length"), layers)?;
            let mut shapes = Vec::with_capacity(layers);
            for i in 0..layers {
                let (h, k, f) = (heads[i], kv[i], ffn[i]);
                if h == 0 || k == 0 || f == 0 {
                    return Err(FormatError::invalid(
                        path,
                        format!("block {i} has no attention or no feed-forward network (head_count {h}, head_count_kv {k}, feed_forward_length {f}): edgec runs blocks that have both"),
                    ));
                }
                if h % k != 0 {
                    return Err(FormatError::invalid(
                        path,
                        format!("block {i}: head_count {h} is not a multiple of head_count_kv {k}"),
                    ));
                }
                shapes.push(BlockShape {
                    num_heads: h,
                    num_kv_heads: k,
                    intermediate_size: f,
                });
            }
            let head_dim = m
                .get_u64(&format!("{arch}.attention.key_length"))
                .map(|v| v as usize)
                .unwrap_or(hidden / shapes[0].num_heads);
            let embd = tensors.iter().find(|t| t.name == "token_embd.weight");
            let vocab_size = match m.get_u64(&format!("{arch}.vocab_size")) {
                Some(v) => v as usize,
                None => embd
                    .map(|t| t.shape[0])
                    .ok_or_else(|| FormatError::invalid(path, "no token_embd.weight tensor"))?,
            };
            let mut p = LlamaParams {
                variant,
                vocab_size,
                hidden_size: hidden,
                intermediate_size: 0,
                num_layers: layers,
                num_heads: 0,
                num_kv_heads: 0,
                head_dim,
                max_position_embeddings: need_u(path, m, &format!("{arch}.context_length"))?,
                rms_norm_eps: need_f(
                    path,
                    m,
                    &format!("{arch}.attention.layer_norm_rms_epsilon"),
                    None,
                )?,
                rope_theta: need_f(path, m, &format!("{arch}.rope.freq_base"), Some(10000.0))?,
                tie_word_embeddings: !tensors.iter().any(|t| t.name == "output.weight"),
                blocks: None,
            };
            p.set_block_shapes(shapes);
            Ok(Family::Llama(p))
        }
        "bert" => {
            let embd = tensors
                .iter()
                .find(|t| t.name == "token_embd.weight")
                .ok_or_else(|| FormatError::invalid(path, "no token_embd.weight tensor"))?;
            let types = tensors.iter().find(|t| t.name == "token_types.weight");
            Ok(Family::Bert(BertParams {
                vocab_size: embd.shape[0],
                hidden_size: need_u(path, m, "bert.embedding_length")?,
                intermediate_size: need_u(path, m, "bert.feed_forward_length")?,
                num_layers: need_u(path, m, "bert.block_count")?,
                num_heads: need_u(path, m, "bert.attention.head_count")?,
                max_position_embeddings: need_u(path, m, "bert.context_length")?,
                type_vocab_size: types.map(|t| t.shape[0]).unwrap_or(2),
                layer_norm_eps: need_f(path, m, "bert.attention.layer_norm_epsilon", None)?,
            }))
        }
        other => Err(FormatError::invalid(
            path,
            format!(
                "GGUF architecture {other} is not supported; supported: llama, qwen2, deci, bert"
            ),
        )),
    }
}

/// Reads a GGUF model into the IR: HF tensor names, HF rotary row order,
/// quantized tensors kept in their block type.
pub fn read_model(path: &Path) -> Result<Model> {
    let file = reader::read(path)?;
    let family = family_from_metadata(path, &file.metadata, &file.tensors)?;
    let vocab = tokenizer::vocab_from_gguf(&file.metadata, path)?;
    let mut tensors = Vec::with_capacity(file.tensors.len());
    for t in file.tensors {
        let hf = hf_tensor_name(&family, &t.name).ok_or_else(|| {
            FormatError::invalid(
                path,
                format!("tensor {} is not part of a {} model", t.name, family.name()),
            )
        })?;
        let t = match rotary_permute_heads(&family, &hf) {
            Some(n_head) => {
                let rows: usize = t.shape[..t.shape.len() - 1].iter().product();
                if !rows.is_multiple_of(2 * n_head) {
                    return Err(FormatError::invalid(
                        path,
                        format!(
                            "tensor {}: {rows} rows do not split into {n_head} heads",
                            t.name
                        ),
                    ));
                }
                let row_bytes = t.bytes().len() / rows;
                let bytes = permute_rows(t.bytes(), row_bytes, n_head, true);
                Tensor::new(hf, t.shape, t.dtype, TensorData::Owned(Arc::new(bytes)))
                    .map_err(|e| FormatError::invalid(path, e.to_string()))?
            }
            None => Tensor { name: hf, ..t },
        };
        tensors.push(t);
    }
    let name = file
        .metadata
        .get_str("general.name")
        .map(str::to_string)
        .unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    let model = Model {
        meta: ModelMeta {
            name,
            family: Some(family),
            vocab,
        },
        tensors,
        graph: None,
    };
    model
        .check_against_family()
        .map_err(|msg| FormatError::invalid(path, msg))?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotary_permutation_round_trips_and_interleaves() {
        // 2 heads of 4 rows: HF rows [a0 a1 b0 b1] become [a0 b0 a1 b1].
        let rows: Vec<u32> = (0..8).collect();
        let gg = permute_rows(&rows, 1, 2, false);
        assert_eq!(gg, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(permute_rows(&gg, 1, 2, true), rows);
        let wide: Vec<u32> = (0..24).collect();
        assert_eq!(
            permute_rows(&permute_rows(&wide, 2, 3, false), 2, 3, true),
            wide
        );
    }
}
