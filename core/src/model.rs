//! A model: its tensors plus what a writer needs to describe it (family,
//! hyper-parameters, tokenizer).

use crate::tensor::Tensor;
use crate::vocab::Vocab;

/// Decoder-only transformers that llama.cpp runs with its `llama` graph
/// (plus Qwen2, which llama.cpp names on its own because of the q/k/v biases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlamaVariant {
    Llama,
    Mistral,
    Qwen2,
}

impl LlamaVariant {
    /// The GGUF `general.architecture` llama.cpp uses for this variant.
    pub fn gguf_arch(self) -> &'static str {
        match self {
            LlamaVariant::Llama | LlamaVariant::Mistral => "llama",
            LlamaVariant::Qwen2 => "qwen2",
        }
    }

    /// The Hugging Face `architectures[0]` for this variant.
    pub fn hf_architecture(self) -> &'static str {
        match self {
            LlamaVariant::Llama => "LlamaForCausalLM",
            LlamaVariant::Mistral => "MistralForCausalLM",
            LlamaVariant::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    pub fn hf_model_type(self) -> &'static str {
        match self {
            LlamaVariant::Llama => "llama",
            LlamaVariant::Mistral => "mistral",
            LlamaVariant::Qwen2 => "qwen2",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaParams {
    pub variant: LlamaVariant,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub tie_word_embeddings: bool,
    /// Each block's widths where they differ between blocks (after
    /// non-uniform structured pruning); `None`: every block has the widths
    /// above. When set, the widths above are the largest of any block.
    pub blocks: Option<Vec<BlockShape>>,
}

/// One decoder block's widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub intermediate_size: usize,
}

impl LlamaParams {
    /// Block `i`'s widths.
    pub fn block(&self, i: usize) -> BlockShape {
        match &self.blocks {
            Some(b) => b[i],
            None => BlockShape {
                num_heads: self.num_heads,
                num_kv_heads: self.num_kv_heads,
                intermediate_size: self.intermediate_size,
            },
        }
    }

    /// Every block's widths, in order.
    pub fn block_shapes(&self) -> Vec<BlockShape> {
        (0..self.num_layers).map(|i| self.block(i)).collect()
    }

    /// Sets every block's widths (one per layer): the model stays uniform
    /// when they are all equal, and the global widths become the largest.
    pub fn set_block_shapes(&mut self, shapes: Vec<BlockShape>) {
        self.num_layers = shapes.len();
        let max = |f: fn(&BlockShape) -> usize| shapes.iter().map(f).max().unwrap_or(0);
        self.num_heads = max(|b| b.num_heads);
        self.num_kv_heads = max(|b| b.num_kv_heads);
        self.intermediate_size = max(|b| b.intermediate_size);
        let uniform = shapes.windows(2).all(|w| w[0] == w[1]);
        self.blocks = (!uniform).then_some(shapes);
    }

    /// Whether every block has the same widths.
    pub fn is_uniform(&self) -> bool {
        self.blocks.is_none()
    }

    /// llama.cpp's architecture for these parameters: blocks of different
    /// widths need `deci`, which reads each block's head counts and FFN width.
    pub fn gguf_arch(&self) -> &'static str {
        if self.is_uniform() {
            self.variant.gguf_arch()
        } else {
            "deci"
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BertParams {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Family {
    Llama(LlamaParams),
    Bert(BertParams),
}

impl Family {
    pub fn name(&self) -> &'static str {
        match self {
            Family::Llama(p) => p.variant.hf_model_type(),
            Family::Bert(_) => "bert",
        }
    }

    pub fn num_layers(&self) -> usize {
        match self {
            Family::Llama(p) => p.num_layers,
            Family::Bert(p) => p.num_layers,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ModelMeta {
    /// A human name (`general.name`), from the folder or file name.
    pub name: String,
    pub family: Option<Family>,
    pub vocab: Option<Vocab>,
}

/// Tensors use Hugging Face names and layouts throughout the IR; each format
/// maps names and layouts at its border.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub meta: ModelMeta,
    pub tensors: Vec<Tensor>,
    /// The dataflow graph of a model with no known family (e.g. an imported
    /// ONNX classifier); its constants are `tensors`.
    pub graph: Option<crate::Graph>,
}

impl Model {
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn total_bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.bytes().len()).sum()
    }

    pub fn total_params(&self) -> usize {
        self.tensors.iter().map(Tensor::numel).sum()
    }
}

impl Family {
    /// Every tensor a model of this family must have, with its HF name and
    /// shape. Readers check models against it; the runtime relies on it.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = Vec::new();
        match self {
            Family::Llama(p) => {
                v.push((
                    "model.embed_tokens.weight".into(),
                    vec![p.vocab_size, p.hidden_size],
                ));
                for i in 0..p.num_layers {
                    let b = p.block(i);
                    let (h, kv) = (b.num_heads * p.head_dim, b.num_kv_heads * p.head_dim);
                    let l = format!("model.layers.{i}");
                    v.push((format!("{l}.input_layernorm.weight"), vec![p.hidden_size]));
                    v.push((
                        format!("{l}.self_attn.q_proj.weight"),
                        vec![h, p.hidden_size],
                    ));
                    v.push((
                        format!("{l}.self_attn.k_proj.weight"),
                        vec![kv, p.hidden_size],
                    ));
                    v.push((
                        format!("{l}.self_attn.v_proj.weight"),
                        vec![kv, p.hidden_size],
                    ));
                    if p.variant == LlamaVariant::Qwen2 {
                        v.push((format!("{l}.self_attn.q_proj.bias"), vec![h]));
                        v.push((format!("{l}.self_attn.k_proj.bias"), vec![kv]));
                        v.push((format!("{l}.self_attn.v_proj.bias"), vec![kv]));
                    }
                    v.push((
                        format!("{l}.self_attn.o_proj.weight"),
                        vec![p.hidden_size, h],
                    ));
                    v.push((
                        format!("{l}.post_attention_layernorm.weight"),
                        vec![p.hidden_size],
                    ));
                    v.push((
                        format!("{l}.mlp.gate_proj.weight"),
                        vec![b.intermediate_size, p.hidden_size],
                    ));
                    v.push((
                        format!("{l}.mlp.up_proj.weight"),
                        vec![b.intermediate_size, p.hidden_size],
                    ));
                    v.push((
                        format!("{l}.mlp.down_proj.weight"),
                        vec![p.hidden_size, b.intermediate_size],
                    ));
                }
                v.push(("model.norm.weight".into(), vec![p.hidden_size]));
                if !p.tie_word_embeddings {
                    v.push(("lm_head.weight".into(), vec![p.vocab_size, p.hidden_size]));
                }
            }
            Family::Bert(p) => {
                let d = p.hidden_size;
                v.push((
                    "embeddings.word_embeddings.weight".into(),
                    vec![p.vocab_size, d],
                ));
                v.push((
                    "embeddings.position_embeddings.weight".into(),
                    vec![p.max_position_embeddings, d],
                ));
                v.push((
                    "embeddings.token_type_embeddings.weight".into(),
                    vec![p.type_vocab_size, d],
                ));
                v.push(("embeddings.LayerNorm.weight".into(), vec![d]));
                v.push(("embeddings.LayerNorm.bias".into(), vec![d]));
                for i in 0..p.num_layers {
                    let l = format!("encoder.layer.{i}");
                    for (part, rows, cols) in [
                        ("attention.self.query", d, d),
                        ("attention.self.key", d, d),
                        ("attention.self.value", d, d),
                        ("attention.output.dense", d, d),
                        ("intermediate.dense", p.intermediate_size, d),
                        ("output.dense", d, p.intermediate_size),
                    ] {
                        v.push((format!("{l}.{part}.weight"), vec![rows, cols]));
                        v.push((format!("{l}.{part}.bias"), vec![rows]));
                    }
                    for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
                        v.push((format!("{l}.{norm}.weight"), vec![d]));
                        v.push((format!("{l}.{norm}.bias"), vec![d]));
                    }
                }
            }
        }
        v
    }
}

impl Model {
    /// Checks that the model has exactly the tensors its family needs, with
    /// the right shapes. Returns a message naming the first problem.
    pub fn check_against_family(&self) -> Result<(), String> {
        let Some(family) = &self.meta.family else {
            return Ok(());
        };
        let expected = family.expected_tensors();
        for (name, shape) in &expected {
            match self.tensor(name) {
                None => {
                    return Err(format!(
                        "missing tensor {name} (a {} model needs it)",
                        family.name()
                    ))
                }
                Some(t) if &t.shape != shape => {
                    return Err(format!(
                        "tensor {name} has shape {:?}, the config implies {shape:?}",
                        t.shape
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = self
            .tensors
            .iter()
            .find(|t| !expected.iter().any(|(n, _)| *n == t.name))
        {
            return Err(format!(
                "unexpected tensor {} for a {} model",
                extra.name,
                family.name()
            ));
        }
        Ok(())
    }
}
