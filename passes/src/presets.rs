//! Quantization presets (llama.cpp's "file types": Q4_K_M, Q8_0 ...) and the
//! per-tensor rules that pick each tensor's type, following llama.cpp's
//! `llama_tensor_get_type` so that files of the same preset are comparable.

use edgec_core::GgmlType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// llama.cpp's name, e.g. `Q4_K_M`.
    pub name: &'static str,
    /// The type most weight matrices get.
    pub base: GgmlType,
    /// Every quantizable tensor gets `base` (llama-quantize's `--pure`):
    /// no per-tensor rules, only the fallback for rows `base` cannot hold.
    pub pure: bool,
}

macro_rules! preset {
    ($name:literal, $base:ident) => {
        Preset {
            name: $name,
            base: GgmlType::$base,
            pure: false,
        }
    };
}

pub const PRESETS: &[Preset] = &[
    preset!("F32", F32),
    preset!("F16", F16),
    preset!("BF16", Bf16),
    preset!("Q8_0", Q8_0),
    preset!("Q4_0", Q4_0),
    preset!("Q4_1", Q4_1),
    preset!("Q5_0", Q5_0),
    preset!("Q5_1", Q5_1),
    preset!("IQ4_NL", Iq4Nl),
    preset!("Q2_K", Q2K),
    preset!("Q3_K_S", Q3K),
    preset!("Q3_K_M", Q3K),
    preset!("Q3_K_L", Q3K),
    preset!("Q4_K_S", Q4K),
    preset!("Q4_K_M", Q4K),
    preset!("Q5_K_S", Q5K),
    preset!("Q5_K_M", Q5K),
    preset!("Q6_K", Q6K),
];

impl Preset {
    pub fn by_name(name: &str) -> Option<Preset> {
        let upper = name.to_ascii_uppercase();
        // Bare k-quant type names mean their usual preset (Q4_K → Q4_K_M).
        let canonical = match upper.as_str() {
            "Q3_K" => "Q3_K_M",
            "Q4_K" => "Q4_K_M",
            "Q5_K" => "Q5_K_M",
            u => u,
        };
        PRESETS.iter().copied().find(|p| p.name == canonical)
    }

    /// `--bits N`: the preset most people mean by N bits.
    pub fn by_bits(bits: u32) -> Option<Preset> {
        let name = match bits {
            2 => "Q2_K",
            3 => "Q3_K_M",
            4 => "Q4_K_M",
            5 => "Q5_K_M",
            6 => "Q6_K",
            8 => "Q8_0",
            16 => "F16",
            32 => "F32",
            _ => return None,
        };
        Preset::by_name(name)
    }

    pub fn is_quantized(&self) -> bool {
        self.base.is_quantized()
    }
}

/// What a tensor is, for the rules (llama.cpp's `tensor_category`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    TokenEmbd,
    Output,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    FfnGate,
    FfnUp,
    FfnDown,
    /// Weights that stay in a float type: norms, biases, position and token-type embeddings.
    Float,
    Other,
}

/// Classifies a tensor by its GGUF name.
pub fn role_of(gguf_name: &str, n_dims: usize) -> Role {
    if n_dims < 2
        || !gguf_name.ends_with("weight")
        || gguf_name.contains("_norm.weight")
        || gguf_name == "position_embd.weight"
        || gguf_name == "token_types.weight"
    {
        return Role::Float;
    }
    let base = gguf_name.strip_suffix(".weight").unwrap_or(gguf_name);
    let leaf = base.rsplit('.').next().unwrap_or(base);
    match (base, leaf) {
        ("token_embd", _) => Role::TokenEmbd,
        ("output", _) => Role::Output,
        (_, "attn_q") => Role::AttnQ,
        (_, "attn_k") => Role::AttnK,
        (_, "attn_v") => Role::AttnV,
        (_, "attn_output") => Role::AttnOutput,
        (_, "ffn_gate") => Role::FfnGate,
        (_, "ffn_up") => Role::FfnUp,
        (_, "ffn_down") => Role::FfnDown,
        _ => Role::Other,
    }
}

/// What the rules need to know about the model.
#[derive(Debug, Clone, Copy)]
pub struct ModelShape {
    pub n_layers: usize,
    /// Query heads per key/value head.
    pub n_gqa: usize,
    /// True when the model has no separate output matrix (tied embeddings).
    pub tied_embeddings: bool,
    /// True when rounding uses importance (an importance matrix or
    /// calibration), which changes a few of llama.cpp's choices.
    pub importance: bool,
}

/// One tensor to type.
#[derive(Debug, Clone, Copy)]
pub struct TensorDesc<'a> {
    pub gguf_name: &'a str,
    pub n_dims: usize,
    /// Length of a row (the innermost dimension).
    pub row_len: usize,
    pub layer: Option<usize>,
}

fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as isize - (n / 8) as isize).rem_euclid(3) == 2
}

/// The type of one tensor under `preset`.
pub fn tensor_type(preset: &Preset, model: &ModelShape, t: &TensorDesc) -> GgmlType {
    let role = role_of(t.gguf_name, t.n_dims);
    if t.n_dims < 2 {
        return GgmlType::F32;
    }
    // Norms, biases, position and token-type embeddings stay F32: llama.cpp
    // adds BERT's token-type row to F32 activations directly and has no
    // mixed F32+F16 add on the CPU.
    if role == Role::Float {
        return GgmlType::F32;
    }
    if !preset.is_quantized() {
        return preset.base;
    }
    if preset.pure {
        return fallback(preset.base, t.row_len);
    }
    let name = preset.name;
    let layer = t.layer.unwrap_or(0);
    let n = model.n_layers.max(1);
    let mut ty = preset.base;
    let is_output = role == Role::Output || (model.tied_embeddings && role == Role::TokenEmbd);
    if is_output {
        ty = if !t.row_len.is_multiple_of(ty.block_size()) {
            GgmlType::Q8_0
        } else if ty != GgmlType::Q8_0 {
            GgmlType::Q6K
        } else {
            ty
        };
    } else {
        match role {
            Role::AttnV => {
                ty = match name {
                    "Q2_K" if model.n_gqa >= 4 => GgmlType::Q4K,
                    "Q2_K" => GgmlType::Q3K,
                    "Q3_K_M" if layer < 2 => GgmlType::Q5K,
                    "Q3_K_M" => GgmlType::Q4K,
                    "Q3_K_L" => GgmlType::Q5K,
                    "IQ4_NL" if model.n_gqa >= 4 => GgmlType::Q5K,
                    "Q4_K_M" | "Q5_K_M" if use_more_bits(layer, n) => GgmlType::Q6K,
                    "Q4_K_S" if layer < 4 => GgmlType::Q5K,
                    _ => ty,
                }
            }
            Role::FfnDown => {
                ty = match name {
                    "Q2_K" => GgmlType::Q3K,
                    "Q3_K_M" if layer < n / 16 => GgmlType::Q5K,
                    "Q3_K_M" => GgmlType::Q4K,
                    "Q3_K_L" => GgmlType::Q5K,
                    "Q4_K_M" | "Q5_K_M" if use_more_bits(layer, n) => GgmlType::Q6K,
                    "Q4_K_S" if layer < n / 8 => GgmlType::Q5K,
                    "IQ4_NL" if layer < n / 8 && !model.importance => GgmlType::Q5K,
                    // llama.cpp guards the first ffn_down layers of Q4_0/Q5_0
                    // when (and only when) it has an imatrix
                    "Q4_0" if layer < n / 8 && model.importance => GgmlType::Q4_1,
                    "Q5_0" if layer < n / 8 && model.importance => GgmlType::Q5_1,
                    _ => ty,
                }
            }
            Role::AttnOutput => {
                ty = match name {
                    "Q2_K" => GgmlType::Q3K,
                    "Q3_K_M" => GgmlType::Q4K,
                    "Q3_K_L" => GgmlType::Q5K,
                    _ => ty,
                }
            }
            _ => {}
        }
    }
    fallback(ty, t.row_len)
}

/// A type whose block fits a row of `row_len` when `ty`'s does not. Rows of
/// small models (SmolLM2's 576) are often not a multiple of 256. The same
/// size class as llama.cpp's choice, except that 2- and 3-bit k-quants fall
/// back to IQ4_NL, which measures better than Q4_0 at the same 4.5 bits.
pub fn fallback(ty: GgmlType, row_len: usize) -> GgmlType {
    if row_len.is_multiple_of(ty.block_size()) {
        return ty;
    }
    let alt = match ty {
        GgmlType::Q2K | GgmlType::Q3K => GgmlType::Iq4Nl,
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        other => other,
    };
    if row_len.is_multiple_of(alt.block_size()) {
        alt
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(name: &str, row_len: usize, layer: Option<usize>) -> TensorDesc<'_> {
        TensorDesc {
            gguf_name: name,
            n_dims: 2,
            row_len,
            layer,
        }
    }

    #[test]
    fn q4_k_m_follows_llama_cpp_rules() {
        let p = Preset::by_name("Q4_K_M").unwrap();
        let m = ModelShape {
            n_layers: 32,
            n_gqa: 1,
            tied_embeddings: false,
            importance: false,
        };
        assert_eq!(
            tensor_type(&p, &m, &desc("output.weight", 4096, None)),
            GgmlType::Q6K
        );
        assert_eq!(
            tensor_type(&p, &m, &desc("token_embd.weight", 4096, None)),
            GgmlType::Q4K
        );
        // use_more_bits: first and last eighth, then every third layer.
        let down: Vec<_> = (0..32)
            .map(|i| {
                tensor_type(
                    &p,
                    &m,
                    &desc(&format!("blk.{i}.ffn_down.weight"), 4096, Some(i)),
                )
            })
            .collect();
        assert_eq!(down[0], GgmlType::Q6K);
        assert_eq!(down[4], GgmlType::Q4K);
        assert_eq!(down[6], GgmlType::Q6K);
        assert_eq!(down[31], GgmlType::Q6K);
        assert_eq!(
            tensor_type(&p, &m, &desc("blk.5.attn_q.weight", 4096, Some(5))),
            GgmlType::Q4K
        );
        assert_eq!(
            tensor_type(&p, &m, &desc("token_types.weight", 4096, None)),
            GgmlType::F32
        );
    }

    #[test]
    fn rows_that_are_not_whole_super_blocks_fall_back() {
        let p = Preset::by_name("Q4_K_M").unwrap();
        let m = ModelShape {
            n_layers: 30,
            n_gqa: 3,
            tied_embeddings: true,
            importance: false,
        };
        assert_eq!(
            tensor_type(&p, &m, &desc("blk.3.attn_q.weight", 576, Some(3))),
            GgmlType::Q5_0
        );
        assert_eq!(
            tensor_type(&p, &m, &desc("token_embd.weight", 576, None)),
            GgmlType::Q8_0
        );
        assert_eq!(fallback(GgmlType::Q3K, 576), GgmlType::Iq4Nl);
        assert_eq!(fallback(GgmlType::Q6K, 576), GgmlType::Q8_0);
        assert_eq!(fallback(GgmlType::Q8_0, 20), GgmlType::F16);
    }

    #[test]
    fn pure_presets_skip_the_rules_but_not_the_fallback() {
        let p = Preset {
            pure: true,
            ..Preset::by_name("Q2_K").unwrap()
        };
        let m = ModelShape {
            n_layers: 30,
            n_gqa: 3,
            tied_embeddings: true,
            importance: false,
        };
        assert_eq!(
            tensor_type(&p, &m, &desc("blk.0.ffn_down.weight", 1536, Some(0))),
            GgmlType::Q2K
        );
        assert_eq!(
            tensor_type(&p, &m, &desc("token_embd.weight", 1536, None)),
            GgmlType::Q2K
        );
        assert_eq!(
            tensor_type(&p, &m, &desc("blk.0.ffn_up.weight", 576, Some(0))),
            GgmlType::Iq4Nl
        );
    }

    #[test]
    fn importance_changes_the_first_ffn_down_layers_as_llama_cpp_does() {
        let m = |importance| ModelShape {
            n_layers: 30,
            n_gqa: 3,
            tied_embeddings: true,
            importance,
        };
        let down = |p: &str, importance, layer| {
            tensor_type(
                &Preset::by_name(p).unwrap(),
                &m(importance),
                &desc(&format!("blk.{layer}.ffn_down.weight"), 1536, Some(layer)),
            )
        };
        assert_eq!(down("Q4_0", false, 0), GgmlType::Q4_0);
        assert_eq!(down("Q4_0", true, 0), GgmlType::Q4_1);
        assert_eq!(down("Q4_0", true, 3), GgmlType::Q4_0);
        assert_eq!(down("IQ4_NL", false, 2), GgmlType::Q5K);
        assert_eq!(down("IQ4_NL", true, 2), GgmlType::Iq4Nl);
    }

    #[test]
    fn bits_map_to_presets() {
        assert_eq!(Preset::by_bits(4).unwrap().name, "Q4_K_M");
        assert_eq!(Preset::by_bits(8).unwrap().name, "Q8_0");
        assert!(Preset::by_bits(7).is_none());
        assert_eq!(Preset::by_name("q4_k").unwrap().name, "Q4_K_M");
    }
}
