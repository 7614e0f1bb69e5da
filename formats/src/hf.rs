//! Hugging Face model folders: `config.json`, weights in safetensors (one
//! file or sharded), `tokenizer.json` and `tokenizer_config.json`.

use std::path::{Path, PathBuf};

use edgec_core::{
    BertParams, BlockShape, DType, Family, LlamaParams, LlamaVariant, Model, ModelMeta, Tensor,
};
use serde_json::{json, Value};

use crate::error::{FormatError, Result};
use crate::safetensors::{self as st, LazyTensor};
use crate::tokenizer;

/// The architectures edgec reads from `config.json`.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "DeciLMForCausalLM",
    "BertModel",
];

/// Where the parts of an HF model live.
struct Layout {
    dir: PathBuf,
    weights: Weights,
}

enum Weights {
    Single(PathBuf),
    Sharded(PathBuf),
}

fn layout(path: &Path) -> Result<Layout> {
    if path.is_dir() {
        let single = path.join("model.safetensors");
        let index = path.join("model.safetensors.index.json");
        let weights = if single.is_file() {
            Weights::Single(single)
        } else if index.is_file() {
            Weights::Sharded(index)
        } else {
            return Err(FormatError::invalid(
                path,
                "no model.safetensors or model.safetensors.index.json in this folder",
            ));
        };
        return Ok(Layout {
            dir: path.to_path_buf(),
            weights,
        });
    }
    if !path.exists() {
        return Err(FormatError::invalid(path, "no such file or folder"));
    }
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let weights = if path.to_string_lossy().ends_with(".index.json") {
        Weights::Sharded(path.to_path_buf())
    } else {
        Weights::Single(path.to_path_buf())
    };
    Ok(Layout { dir, weights })
}

/// Reads a model folder, or a `.safetensors` file (with its folder's
/// `config.json` when there is one; without it the model has tensors only).
pub fn read(path: &Path) -> Result<Model> {
    let layout = layout(path)?;
    let mut tensors = match &layout.weights {
        Weights::Single(p) => st::read_file(p)?,
        Weights::Sharded(p) => st::read_sharded(p)?,
    };
    let config_path = layout.dir.join("config.json");
    let name = model_name(path);
    if !config_path.is_file() {
        if path.is_dir() {
            return Err(FormatError::invalid(
                path,
                "no config.json in this model folder",
            ));
        }
        return Ok(Model {
            meta: ModelMeta {
                name,
                family: None,
                vocab: None,
            },
            tensors,
            graph: None,
        });
    }
    let family = parse_config(&config_path)?;
    tensors = normalise_names(&family, tensors);
    let tok_json = layout.dir.join("tokenizer.json");
    let tok_cfg = layout.dir.join("tokenizer_config.json");
    let vocab = if tok_json.is_file() {
        Some(tokenizer::vocab_from_hf(
            &tok_json,
            tok_cfg.is_file().then_some(tok_cfg.as_path()),
        )?)
    } else {
        None
    };
    let model = Model {
        meta: ModelMeta {
            name,
            family: Some(family),
            vocab,
        },
        tensors,
        graph: None,
    };
    let weights_path = match &layout.weights {
        Weights::Single(p) | Weights::Sharded(p) => p.clone(),
    };
    model
        .check_against_family()
        .map_err(|msg| FormatError::invalid(&weights_path, msg))?;
    Ok(model)
}

fn model_name(path: &Path) -> String {
    let p = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(path)
    };
    p.file_name()
        .or_else(|| path.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

/// Drops tensors that carry no weights (buffers) and strips the `bert.`
/// prefix that task heads put on BERT encoders.
fn normalise_names(family: &Family, tensors: Vec<Tensor>) -> Vec<Tensor> {
    tensors
        .into_iter()
        .filter_map(|mut t| {
            match family {
                Family::Llama(_) => {
                    if t.name.ends_with("rotary_emb.inv_freq") {
                        return None;
                    }
                }
                Family::Bert(_) => {
                    if let Some(rest) = t.name.strip_prefix("bert.") {
                        t.name = rest.to_string();
                    }
                    // Buffers and the pooler, which mean pooling does not use.
                    if t.name.ends_with("position_ids") || t.name.starts_with("pooler.") {
                        return None;
                    }
                }
            }
            Some(t)
        })
        .collect()
}

fn get<'a>(cfg: &'a Value, key: &str) -> Option<&'a Value> {
    cfg.get(key).filter(|v| !v.is_null())
}

fn req_usize(path: &Path, cfg: &Value, key: &str) -> Result<usize> {
    get(cfg, key)
        .and_then(Value::as_u64)
        .filter(|&v| v > 0 && v < (1 << 40))
        .map(|v| v as usize)
        .ok_or_else(|| FormatError::invalid(path, format!("\"{key}\" must be a positive integer")))
}

fn opt_usize(path: &Path, cfg: &Value, key: &str, default: usize) -> Result<usize> {
    match get(cfg, key) {
        None => Ok(default),
        Some(_) => req_usize(path, cfg, key),
    }
}

fn opt_f32(path: &Path, cfg: &Value, key: &str, default: f32) -> Result<f32> {
    match get(cfg, key) {
        None => Ok(default),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(|x| x as f32)
            .ok_or_else(|| FormatError::invalid(path, format!("\"{key}\" must be a number"))),
    }
}

/// Parses `config.json` into a family with its hyper-parameters.
pub fn parse_config(path: &Path) -> Result<Family> {
    let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
    let cfg: Value = serde_json::from_str(&text)
        .map_err(|e| FormatError::invalid(path, format!("invalid JSON: {e}")))?;
    let arch = cfg
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .or_else(|| match cfg.get("model_type").and_then(Value::as_str) {
            Some("bert") => Some("BertModel"),
            Some("llama") => Some("LlamaForCausalLM"),
            _ => None,
        })
        .ok_or_else(|| FormatError::invalid(path, "no \"architectures\" entry"))?;
    let variant = match arch {
        "LlamaForCausalLM" | "DeciLMForCausalLM" => LlamaVariant::Llama,
        "MistralForCausalLM" => LlamaVariant::Mistral,
        "Qwen2ForCausalLM" => LlamaVariant::Qwen2,
        "BertModel" | "BertForMaskedLM" | "BertForSequenceClassification" => {
            return parse_bert(path, &cfg);
        }
        other => {
            return Err(FormatError::invalid(
                path,
                format!(
                    "architecture {other} is not supported; supported: {}",
                    SUPPORTED_ARCHITECTURES.join(", ")
                ),
            ))
        }
    };
    if let Some(scaling) = get(&cfg, "rope_scaling") {
        return Err(FormatError::invalid(
            path,
            format!("rope_scaling {scaling} is not supported yet"),
        ));
    }
    let hidden_size = req_usize(path, &cfg, "hidden_size")?;
    let num_heads = req_usize(path, &cfg, "num_attention_heads")?;
    let num_kv_heads = opt_usize(path, &cfg, "num_key_value_heads", num_heads)?;
    if num_heads % num_kv_heads != 0 {
        return Err(FormatError::invalid(
            path,
            format!("num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"),
        ));
    }
    if hidden_size % num_heads != 0 && get(&cfg, "head_dim").is_none() {
        return Err(FormatError::invalid(
            path,
            format!(
                "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}"
            ),
        ));
    }
    let head_dim = opt_usize(path, &cfg, "head_dim", hidden_size / num_heads)?;
    if head_dim % 2 != 0 {
        return Err(FormatError::invalid(
            path,
            format!("head_dim {head_dim} must be even for rotary embeddings"),
        ));
    }
    let tie_default = variant == LlamaVariant::Qwen2;
    let num_layers = req_usize(path, &cfg, "num_hidden_layers")?;
    let blocks = match arch {
        "DeciLMForCausalLM" => Some(deci_blocks(path, &cfg, num_layers, num_heads, hidden_size)?),
        _ => None,
    };
    let mut p = LlamaParams {
        variant,
        vocab_size: req_usize(path, &cfg, "vocab_size")?,
        hidden_size,
        // DeciLM gives each block's width in block_configs instead.
        intermediate_size: match &blocks {
            Some(_) => 0,
            None => req_usize(path, &cfg, "intermediate_size")?,
        },
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        max_position_embeddings: opt_usize(path, &cfg, "max_position_embeddings", 2048)?,
        rms_norm_eps: opt_f32(path, &cfg, "rms_norm_eps", 1e-6)?,
        rope_theta: opt_f32(path, &cfg, "rope_theta", 10000.0)?,
        tie_word_embeddings: get(&cfg, "tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(tie_default),
        blocks: None,
    };
    if let Some(blocks) = blocks {
        p.set_block_shapes(blocks);
    }
    Ok(Family::Llama(p))
}

/// DeciLM's (Nemotron-NAS) FFN width for a multiplier, as its modeling code
/// and llama.cpp's converter compute it: ⌊2·mult·hidden/3⌋ rounded up to a
/// multiple of 256.
fn deci_ffn_width(ffn_mult: f64, hidden: usize) -> usize {
    let width = (2.0 * ffn_mult * hidden as f64 / 3.0) as usize;
    width.div_ceil(256) * 256
}

/// The blocks of a DeciLM config's `block_configs` (query heads
/// `num_attention_heads` in every block, key/value heads
/// `num_attention_heads / n_heads_in_group`, FFN width from `ffn_mult`).
fn deci_blocks(
    path: &Path,
    cfg: &Value,
    layers: usize,
    heads: usize,
    hidden: usize,
) -> Result<Vec<BlockShape>> {
    let configs = get(cfg, "block_configs")
        .and_then(Value::as_array)
        .filter(|c| c.len() == layers)
        .ok_or_else(|| {
            FormatError::invalid(
                path,
                format!("DeciLM's \"block_configs\" must list one block for each of the {layers} layers"),
            )
        })?;
    configs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let bad = |what: &str| {
                FormatError::invalid(path, format!("block_configs[{i}]: {what}"))
            };
            for part in ["attention", "ffn"] {
                for flag in ["no_op", "replace_with_linear"] {
                    if b.pointer(&format!("/{part}/{flag}")).and_then(Value::as_bool) == Some(true) {
                        return Err(bad(&format!("{part}.{flag} blocks are not supported (edgec runs blocks with both attention and a feed-forward network)")));
                    }
                }
            }
            let group = b
                .pointer("/attention/n_heads_in_group")
                .and_then(Value::as_u64)
                .map(|g| g as usize)
                .filter(|&g| g > 0 && heads.is_multiple_of(g))
                .ok_or_else(|| bad(&format!("attention.n_heads_in_group must divide num_attention_heads {heads}")))?;
            let mult = b
                .pointer("/ffn/ffn_mult")
                .and_then(Value::as_f64)
                .filter(|m| m.is_finite() && *m > 0.0 && *m < 1e6)
                .ok_or_else(|| bad("ffn.ffn_mult must be a positive number"))?;
            Ok(BlockShape {
                num_heads: heads,
                num_kv_heads: heads / group,
                intermediate_size: deci_ffn_width(mult, hidden),
            })
        })
        .collect()
}

/// DeciLM `block_configs` for blocks of different widths. DeciLM keeps
/// every block's query heads and derives widths from multipliers, so only
/// FFN widths that are multiples of 256 and key/value head counts can vary.
fn deci_block_configs(
    p: &LlamaParams,
    blocks: &[BlockShape],
) -> std::result::Result<Value, String> {
    let configs = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if b.num_heads != p.num_heads {
                return Err(format!(
                    "layer {i} has {} query heads and others {}: DeciLM configs keep every block's query heads (GGUF, as llama.cpp's deci, holds this model)",
                    b.num_heads, p.num_heads
                ));
            }
            let mult = 1.5 * b.intermediate_size as f64 / p.hidden_size as f64;
            if deci_ffn_width(mult, p.hidden_size) != b.intermediate_size {
                return Err(format!(
                    "layer {i}'s FFN width {} cannot be a DeciLM ffn_mult (DeciLM rounds widths up to multiples of 256): prune to multiples of 256, or write GGUF (llama.cpp's deci holds any width)",
                    b.intermediate_size
                ));
            }
            Ok(json!({
                "attention": {
                    "n_heads_in_group": b.num_heads / b.num_kv_heads,
                    "no_op": false,
                    "replace_with_linear": false,
                },
                "ffn": { "ffn_mult": mult, "no_op": false, "replace_with_linear": false },
            }))
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    Ok(Value::Array(configs))
}

fn parse_bert(path: &Path, cfg: &Value) -> Result<Family> {
    let hidden_size = req_usize(path, cfg, "hidden_size")?;
    let num_heads = req_usize(path, cfg, "num_attention_heads")?;
    if hidden_size % num_heads != 0 {
        return Err(FormatError::invalid(
            path,
            format!(
                "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}"
            ),
        ));
    }
    if let Some(act) = get(cfg, "hidden_act").and_then(Value::as_str) {
        if act != "gelu" {
            return Err(FormatError::invalid(
                path,
                format!("hidden_act {act} is not supported (gelu is)"),
            ));
        }
    }
    Ok(Family::Bert(BertParams {
        vocab_size: req_usize(path, cfg, "vocab_size")?,
        hidden_size,
        intermediate_size: req_usize(path, cfg, "intermediate_size")?,
        num_layers: req_usize(path, cfg, "num_hidden_layers")?,
        num_heads,
        max_position_embeddings: opt_usize(path, cfg, "max_position_embeddings", 512)?,
        type_vocab_size: opt_usize(path, cfg, "type_vocab_size", 2)?,
        layer_norm_eps: opt_f32(path, cfg, "layer_norm_eps", 1e-12)?,
    }))
}

/// `config.json` for a family, as transformers writes it; blocks of
/// different widths as DeciLM (Nemotron-NAS) `block_configs`, which
/// llama.cpp's converter and DeciLM's modeling code read. An error says why a
/// model's widths cannot be written so.
pub fn config_json(family: &Family, dtype: DType) -> std::result::Result<Value, String> {
    let torch_dtype = match dtype {
        DType::F16 => "float16",
        DType::Bf16 => "bfloat16",
        _ => "float32",
    };
    Ok(match family {
        Family::Llama(p) if !p.is_uniform() => {
            if p.variant == LlamaVariant::Qwen2 {
                return Err(
                    "qwen2 blocks of different widths have no HF config (DeciLM is llama-only)"
                        .into(),
                );
            }
            let blocks = p.blocks.as_deref().unwrap_or_default();
            json!({
                "architectures": ["DeciLMForCausalLM"],
                "model_type": "nemotron-nas",
                "vocab_size": p.vocab_size,
                "hidden_size": p.hidden_size,
                "num_hidden_layers": p.num_layers,
                "num_attention_heads": p.num_heads,
                "head_dim": p.head_dim,
                "block_configs": deci_block_configs(p, blocks)?,
                "hidden_act": "silu",
                "max_position_embeddings": p.max_position_embeddings,
                "rms_norm_eps": p.rms_norm_eps,
                "rope_theta": p.rope_theta,
                "tie_word_embeddings": p.tie_word_embeddings,
                "attention_bias": false,
                "mlp_bias": false,
                "torch_dtype": torch_dtype,
            })
        }
        Family::Llama(p) => json!({
            "architectures": [p.variant.hf_architecture()],
            "model_type": p.variant.hf_model_type(),
            "vocab_size": p.vocab_size,
            "hidden_size": p.hidden_size,
            "intermediate_size": p.intermediate_size,
            "num_hidden_layers": p.num_layers,
            "num_attention_heads": p.num_heads,
            "num_key_value_heads": p.num_kv_heads,
            "head_dim": p.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": p.max_position_embeddings,
            "rms_norm_eps": p.rms_norm_eps,
            "rope_theta": p.rope_theta,
            "tie_word_embeddings": p.tie_word_embeddings,
            "attention_bias": p.variant == LlamaVariant::Qwen2,
            "torch_dtype": torch_dtype,
        }),
        Family::Bert(p) => json!({
            "architectures": ["BertModel"],
            "model_type": "bert",
            "vocab_size": p.vocab_size,
            "hidden_size": p.hidden_size,
            "intermediate_size": p.intermediate_size,
            "num_hidden_layers": p.num_layers,
            "num_attention_heads": p.num_heads,
            "max_position_embeddings": p.max_position_embeddings,
            "type_vocab_size": p.type_vocab_size,
            "layer_norm_eps": p.layer_norm_eps,
            "hidden_act": "gelu",
            "torch_dtype": torch_dtype,
        }),
    })
}

/// Writes `model` as an HF folder into `dir` (which must exist and be
/// empty; callers write into a temporary folder and rename it), converting
/// every floating tensor to `dtype` (F32, F16 or BF16), dequantizing block types.
pub fn write(model: &Model, dir: &Path, dtype: DType) -> Result<()> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::Bf16) {
        return Err(FormatError::invalid(
            dir,
            format!("HF folders are written as F32, F16 or BF16, not {dtype}"),
        ));
    }
    let family = model.meta.family.as_ref().ok_or_else(|| {
        FormatError::invalid(
            dir,
            "the model has no architecture to write a config.json for",
        )
    })?;
    let config = config_json(family, dtype).map_err(|e| FormatError::invalid(dir, e))?;
    let config = serde_json::to_string_pretty(&config).expect("JSON value serialises");
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config + "\n").map_err(|e| FormatError::io(&config_path, e))?;
    let weights_path = dir.join("model.safetensors");
    let lazy: Vec<LazyTensor> = model
        .tensors
        .iter()
        .map(|t| {
            let out = match t.dtype {
                DType::F32 | DType::F16 | DType::Bf16 | DType::Ggml(_) | DType::I4 | DType::U4 => {
                    dtype
                }
                other => other,
            };
            let produce: Box<dyn Fn() -> Vec<u8>> = Box::new(move || encode_float(t, out));
            LazyTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                dtype: out,
                produce,
            }
        })
        .collect();
    st::write_file(&weights_path, &lazy)?;
    if let Some(vocab) = &model.meta.vocab {
        tokenizer::write_hf_tokenizer(vocab, dir)?;
    }
    Ok(())
}

/// The tensor's values in a float dtype. Tensors were validated when read,
/// so decoding cannot fail here.
fn encode_float(t: &Tensor, dtype: DType) -> Vec<u8> {
    if t.dtype == dtype {
        return t.bytes().to_vec();
    }
    let values = t.to_f32().expect("tensor validated when read");
    match dtype {
        DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        DType::Bf16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        _ => t.bytes().to_vec(),
    }
}
