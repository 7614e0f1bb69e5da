//! Family models (llama, bert) lowered to graph models, so the graph
//! writers (ONNX, TFLite) and the graph passes serve them too.
//!
//! The graphs take `input_ids` and `attention_mask` (`[batch, sequence]`,
//! int64; bert also `token_type_ids`) and give `logits` `[batch, sequence,
//! vocab]` (llama) or `last_hidden_state` `[batch, sequence, hidden]`
//! (bert), as Hugging Face's own ONNX exports do; no KV cache. Activations
//! run as `[tokens, hidden]` between the attention blocks so that every
//! linear layer is a Gemm with `transB` on the weight as stored (`[out,
//! in]`): no weight is copied or transposed.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::graph::{Dim, Graph, Node, Op, ValueInfo};
use crate::{BertParams, DType, Error, Family, LlamaParams, Model, Result, Tensor, TensorData};

/// The graph form of a llama- or bert-family model. Tensors are shared with
/// `model` (no copies), plus a few small constants.
pub fn to_graph(model: &Model) -> Result<Model> {
    let mut b = Builder {
        model,
        tensors: model.tensors.clone(),
        nodes: vec![],
        next: 0,
    };
    let (inputs, outputs) = match &model.meta.family {
        Some(Family::Llama(p)) => b.llama(p)?,
        Some(Family::Bert(p)) => b.bert(p)?,
        None => {
            return Err(Error::Shape(
                "the model has no family (llama or bert) to lower to a graph".into(),
            ))
        }
    };
    let mut meta = model.meta.clone();
    meta.family = None;
    Ok(Model {
        meta,
        tensors: b.tensors,
        graph: Some(Graph {
            inputs,
            outputs,
            nodes: b.nodes,
        }),
    })
}

/// The shape constants of one (query heads, kv heads) pair.
struct HeadShapes {
    q: String,
    kv: String,
    expand: String,
    merged: String,
}

struct Builder<'a> {
    model: &'a Model,
    tensors: Vec<Tensor>,
    nodes: Vec<Node>,
    next: usize,
}

fn ids_input(name: &str) -> ValueInfo {
    ValueInfo {
        name: name.into(),
        dtype: DType::I64,
        shape: vec![Dim::Named("batch".into()), Dim::Named("sequence".into())],
    }
}

fn float_output(name: &str, last: usize) -> ValueInfo {
    ValueInfo {
        name: name.into(),
        dtype: DType::F32,
        shape: vec![
            Dim::Named("batch".into()),
            Dim::Named("sequence".into()),
            Dim::Fixed(last),
        ],
    }
}

impl Builder<'_> {
    fn weight(&self, name: &str) -> Result<String> {
        match self.model.tensor(name) {
            Some(_) => Ok(name.to_string()),
            None => Err(Error::Shape(format!("tensor {name} is missing"))),
        }
    }

    fn constant(
        &mut self,
        base: &str,
        shape: Vec<usize>,
        dtype: DType,
        bytes: Vec<u8>,
    ) -> Result<String> {
        let name = format!("edgec.{base}.{}", self.next);
        self.next += 1;
        self.tensors.push(Tensor::new(
            name.clone(),
            shape,
            dtype,
            TensorData::Owned(Arc::new(bytes)),
        )?);
        Ok(name)
    }

    fn f32s(&mut self, base: &str, shape: Vec<usize>, v: &[f32]) -> Result<String> {
        self.constant(
            base,
            shape,
            DType::F32,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    fn i64s(&mut self, base: &str, v: &[i64]) -> Result<String> {
        let shape = vec![v.len()];
        self.constant(
            base,
            shape,
            DType::I64,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    fn scalar_i64(&mut self, base: &str, v: i64) -> Result<String> {
        self.constant(base, vec![], DType::I64, v.to_le_bytes().to_vec())
    }

    /// Adds a node with one output, named after `base`.
    fn op(&mut self, base: &str, op: Op, inputs: &[&str]) -> String {
        let out = format!("{base}.{}", self.next);
        self.next += 1;
        self.nodes.push(Node {
            name: out.clone(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![out.clone()],
        });
        out
    }

    /// `x·Wᵀ (+ b)` on `[tokens, in]` activations, the weight as stored.
    fn linear(&mut self, x: &str, prefix: &str, bias: bool) -> Result<String> {
        let w = self.weight(&format!("{prefix}.weight"))?;
        let mut inputs = vec![x.to_string(), w];
        if bias {
            inputs.push(self.weight(&format!("{prefix}.bias"))?);
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(self.op(
            prefix,
            Op::Gemm {
                alpha: 1.0,
                beta: 1.0,
                trans_a: false,
                trans_b: true,
            },
            &refs,
        ))
    }

    /// The sequence length as a 0-d and a 1-d int64 value.
    fn sequence_length(&mut self, ids: &str) -> Result<(String, String)> {
        let s1 = self.op(
            "seq_len",
            Op::Shape {
                start: 1,
                end: Some(2),
            },
            &[ids],
        );
        let s0 = self.op("seq_len", Op::Squeeze { axes: vec![0] }, &[&s1]);
        Ok((s0, s1))
    }

    /// `[batch, 1, 1, sequence]` additive mask: 0 where attended, −1e9 where padded.
    fn padding_mask(&mut self, mask: &str) -> Result<String> {
        let m = self.op("mask", Op::Cast { to: DType::F32 }, &[mask]);
        let m = self.op("mask", Op::Unsqueeze { axes: vec![1, 2] }, &[&m]);
        let one = self.f32s("one", vec![], &[1.0])?;
        let big = self.f32s("neg_big", vec![], &[-1e9])?;
        let inv = self.op("mask", Op::Sub, &[&one, &m]);
        Ok(self.op("mask", Op::Mul, &[&inv, &big]))
    }

    /// `[tokens, heads·d]` → `[batch, heads, sequence, d]`, given the batch
    /// and sequence via `like` (`[batch, sequence]`).
    fn split_heads(&mut self, x: &str, shape4: &str, perm: [usize; 4]) -> String {
        let r = self.op("heads", Op::Reshape { allow_zero: false }, &[x, shape4]);
        self.op(
            "heads",
            Op::Transpose {
                perm: perm.to_vec(),
            },
            &[&r],
        )
    }

    /// `[batch, sequence]` → the int64 shape `[batch, sequence, heads, d]`.
    fn heads_shape(&mut self, ids: &str, heads: usize, d: usize) -> Result<String> {
        let bs = self.op(
            "shape",
            Op::Shape {
                start: 0,
                end: None,
            },
            &[ids],
        );
        let hd = self.i64s("heads", &[heads as i64, d as i64])?;
        Ok(self.op("shape", Op::Concat { axis: 0 }, &[&bs, &hd]))
    }

    /// softmax(q·kᵀ + mask)·v for `q` `[b, h, s, d]` and `kt` `[b, h, d, s]`,
    /// back to `[tokens, h·d]`.
    fn attention(
        &mut self,
        q: &str,
        kt: &str,
        v: &str,
        mask: &str,
        width: usize,
    ) -> Result<String> {
        let scores = self.op("scores", Op::MatMul, &[q, kt]);
        let scores = self.op("scores", Op::Add, &[&scores, mask]);
        let probs = self.op("probs", Op::Softmax { axis: -1 }, &[&scores]);
        let ctx = self.op("context", Op::MatMul, &[&probs, v]);
        let ctx = self.op(
            "context",
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[&ctx],
        );
        let flat = self.i64s("tokens_shape", &[-1, width as i64])?;
        Ok(self.op("context", Op::Reshape { allow_zero: false }, &[&ctx, &flat]))
    }

    fn bert(&mut self, p: &BertParams) -> Result<(Vec<ValueInfo>, Vec<ValueInfo>)> {
        let (d, nh) = (p.hidden_size, p.num_heads);
        if nh == 0 || !d.is_multiple_of(nh) {
            return Err(Error::Shape(format!(
                "hidden size {d} does not split into {nh} heads"
            )));
        }
        let hd = d / nh;
        let (ids, mask, types) = ("input_ids", "attention_mask", "token_type_ids");
        let words = self.weight("embeddings.word_embeddings.weight")?;
        let words = self.op("embeddings", Op::Gather { axis: 0 }, &[&words, ids]);
        let (s0, _) = self.sequence_length(ids)?;
        let zero = self.scalar_i64("zero", 0)?;
        let one = self.scalar_i64("one", 1)?;
        let positions = self.op("positions", Op::Range, &[&zero, &s0, &one]);
        let pos = self.weight("embeddings.position_embeddings.weight")?;
        let pos = self.op("embeddings", Op::Gather { axis: 0 }, &[&pos, &positions]);
        let tt = self.weight("embeddings.token_type_embeddings.weight")?;
        let tt = self.op("embeddings", Op::Gather { axis: 0 }, &[&tt, types]);
        let e = self.op("embeddings", Op::Add, &[&words, &pos]);
        let e = self.op("embeddings", Op::Add, &[&e, &tt]);
        let flat = self.i64s("tokens_shape", &[-1, d as i64])?;
        let e = self.op(
            "embeddings",
            Op::Reshape { allow_zero: false },
            &[&e, &flat],
        );
        let mut x = self.layer_norm(&e, "embeddings.LayerNorm", p.layer_norm_eps)?;
        let mask = self.padding_mask(mask)?;
        let shape4 = self.heads_shape(ids, nh, hd)?;
        let scale = self.f32s("scale", vec![], &[1.0 / (hd as f32).sqrt()])?;
        for i in 0..p.num_layers {
            let l = format!("encoder.layer.{i}");
            let q = self.linear(&x, &format!("{l}.attention.self.query"), true)?;
            let q = self.op("q", Op::Mul, &[&q, &scale]);
            let k = self.linear(&x, &format!("{l}.attention.self.key"), true)?;
            let v = self.linear(&x, &format!("{l}.attention.self.value"), true)?;
            let q = self.split_heads(&q, &shape4, [0, 2, 1, 3]);
            let kt = self.split_heads(&k, &shape4, [0, 2, 3, 1]);
            let v = self.split_heads(&v, &shape4, [0, 2, 1, 3]);
            let ctx = self.attention(&q, &kt, &v, &mask, d)?;
            let a = self.linear(&ctx, &format!("{l}.attention.output.dense"), true)?;
            let a = self.op("residual", Op::Add, &[&a, &x]);
            let h = self.layer_norm(
                &a,
                &format!("{l}.attention.output.LayerNorm"),
                p.layer_norm_eps,
            )?;
            let inter = self.linear(&h, &format!("{l}.intermediate.dense"), true)?;
            let g = self.gelu(&inter)?;
            let o = self.linear(&g, &format!("{l}.output.dense"), true)?;
            let o = self.op("residual", Op::Add, &[&o, &h]);
            x = self.layer_norm(&o, &format!("{l}.output.LayerNorm"), p.layer_norm_eps)?;
        }
        let out_shape = self.op(
            "shape",
            Op::Shape {
                start: 0,
                end: None,
            },
            &[ids],
        );
        let dd = self.i64s("hidden", &[d as i64])?;
        let out_shape = self.op("shape", Op::Concat { axis: 0 }, &[&out_shape, &dd]);
        self.finish(&x, &out_shape, "last_hidden_state");
        Ok((
            vec![
                ids_input(ids),
                ids_input("attention_mask"),
                ids_input(types),
            ],
            vec![float_output("last_hidden_state", d)],
        ))
    }

    fn layer_norm(&mut self, x: &str, prefix: &str, eps: f32) -> Result<String> {
        let w = self.weight(&format!("{prefix}.weight"))?;
        let b = self.weight(&format!("{prefix}.bias"))?;
        Ok(self.op(
            prefix,
            Op::LayerNorm {
                axis: -1,
                epsilon: eps,
            },
            &[x, &w, &b],
        ))
    }

    /// gelu(x) = x·(1 + erf(x/√2))/2, as torch exports it (onnxruntime fuses it).
    fn gelu(&mut self, x: &str) -> Result<String> {
        let sqrt2 = self.f32s("sqrt2", vec![], &[std::f32::consts::SQRT_2])?;
        let one = self.f32s("one", vec![], &[1.0])?;
        let half = self.f32s("half", vec![], &[0.5])?;
        let t = self.op("gelu", Op::Div, &[x, &sqrt2]);
        let t = self.op("gelu", Op::Erf, &[&t]);
        let t = self.op("gelu", Op::Add, &[&t, &one]);
        let t = self.op("gelu", Op::Mul, &[x, &t]);
        Ok(self.op("gelu", Op::Mul, &[&t, &half]))
    }

    /// RMSNorm: x / sqrt(mean(x²) + eps) · w.
    fn rms_norm(&mut self, x: &str, weight: &str, eps: f32) -> Result<String> {
        let w = self.weight(weight)?;
        let e = self.f32s("eps", vec![], &[eps])?;
        let sq = self.op("rms", Op::Mul, &[x, x]);
        let mean = self.op(
            "rms",
            Op::ReduceMean {
                axes: vec![-1],
                keep_dims: true,
            },
            &[&sq],
        );
        let t = self.op("rms", Op::Add, &[&mean, &e]);
        let t = self.op("rms", Op::Sqrt, &[&t]);
        let t = self.op("rms", Op::Div, &[x, &t]);
        Ok(self.op("rms", Op::Mul, &[&t, &w]))
    }

    /// Rotary embedding (rotate-half form) of `x` `[b, h, s, d]`:
    /// `x·cos + swap(x)·sin±`, with `swap` exchanging the halves and the sign
    /// of the first half folded into the table.
    fn rope(&mut self, x: &str, cos: &str, sin: &str, d: usize) -> Result<String> {
        let half = (d / 2) as i64;
        let axis = self.i64s("axis", &[-1])?;
        let (z, h, e) = (
            self.i64s("start", &[0])?,
            self.i64s("mid", &[half])?,
            self.i64s("end", &[d as i64])?,
        );
        let lo = self.op("rope", Op::Slice, &[x, &z, &h, &axis]);
        let hi = self.op("rope", Op::Slice, &[x, &h, &e, &axis]);
        let swapped = self.op("rope", Op::Concat { axis: -1 }, &[&hi, &lo]);
        let a = self.op("rope", Op::Mul, &[x, cos]);
        let b = self.op("rope", Op::Mul, &[&swapped, sin]);
        Ok(self.op("rope", Op::Add, &[&a, &b]))
    }

    fn llama(&mut self, p: &LlamaParams) -> Result<(Vec<ValueInfo>, Vec<ValueInfo>)> {
        let (d, hd) = (p.hidden_size, p.head_dim);
        if hd == 0 || !hd.is_multiple_of(2) {
            return Err(Error::Shape(format!(
                "head size {hd} must be even and non-zero"
            )));
        }
        let bias = matches!(p.variant, crate::LlamaVariant::Qwen2);
        let (ids, mask) = ("input_ids", "attention_mask");
        let emb = self.weight("model.embed_tokens.weight")?;
        let x = self.op("embeddings", Op::Gather { axis: 0 }, &[&emb, ids]);
        let flat = self.i64s("tokens_shape", &[-1, d as i64])?;
        let mut x = self.op(
            "embeddings",
            Op::Reshape { allow_zero: false },
            &[&x, &flat],
        );

        // Rotary tables for every position, gathered for 0..sequence.
        let positions = p.max_position_embeddings.max(1);
        let half = hd / 2;
        let mut cos = Vec::with_capacity(positions * hd);
        let mut sin = Vec::with_capacity(positions * hd);
        for pos in 0..positions {
            let (mut c_row, mut s_row) = (vec![0f32; hd], vec![0f32; hd]);
            for i in 0..half {
                let inv = 1.0f32 / p.rope_theta.powf((2 * i) as f32 / hd as f32);
                let (s, c) = (pos as f64 * inv as f64).sin_cos();
                c_row[i] = c as f32;
                c_row[i + half] = c as f32;
                s_row[i] = -s as f32;
                s_row[i + half] = s as f32;
            }
            cos.extend(c_row);
            sin.extend(s_row);
        }
        let cos = self.f32s("rope_cos", vec![positions, hd], &cos)?;
        let sin = self.f32s("rope_sin", vec![positions, hd], &sin)?;
        let (s0, _) = self.sequence_length(ids)?;
        let zero = self.scalar_i64("zero", 0)?;
        let one = self.scalar_i64("one", 1)?;
        let range = self.op("positions", Op::Range, &[&zero, &s0, &one]);
        let cos = self.op("rope_cos", Op::Gather { axis: 0 }, &[&cos, &range]);
        let sin = self.op("rope_sin", Op::Gather { axis: 0 }, &[&sin, &range]);

        // Causal mask [s, s] (−1e9 above the diagonal) plus padding.
        let rows = self.op("causal", Op::Unsqueeze { axes: vec![1] }, &[&range]);
        let cols = self.op("causal", Op::Unsqueeze { axes: vec![0] }, &[&range]);
        let future = self.op("causal", Op::Greater, &[&cols, &rows]);
        let big = self.f32s("neg_big", vec![], &[-1e9])?;
        let zf = self.f32s("zero", vec![], &[0.0])?;
        let causal = self.op("causal", Op::Where, &[&future, &big, &zf]);
        let pad = self.padding_mask(mask)?;
        let mask = self.op("mask", Op::Add, &[&pad, &causal]);

        let scale = self.f32s("scale", vec![], &[1.0 / (hd as f32).sqrt()])?;
        // The shapes for each pair of head counts a block has (blocks of a
        // structurally pruned model may differ).
        let mut head_shapes: BTreeMap<(usize, usize), HeadShapes> = BTreeMap::new();
        for i in 0..p.num_layers {
            let l = format!("model.layers.{i}");
            let b = p.block(i);
            let (nh, nkv) = (b.num_heads, b.num_kv_heads);
            if nkv == 0 || !nh.is_multiple_of(nkv) {
                return Err(Error::Shape(format!(
                    "layer {i}: {nh} query heads cannot share {nkv} kv heads"
                )));
            }
            let rep = nh / nkv;
            if let std::collections::btree_map::Entry::Vacant(e) = head_shapes.entry((nh, nkv)) {
                e.insert(HeadShapes {
                    q: self.heads_shape(ids, nh, hd)?,
                    kv: self.heads_shape(ids, nkv, hd)?,
                    expand: self.i64s("repeat", &[1, 1, rep as i64, 1, 1])?,
                    merged: self.i64s("heads_shape", &[0, nh as i64, -1, hd as i64])?,
                });
            }
            let shapes = &head_shapes[&(nh, nkv)];
            let (q_shape, kv_shape) = (shapes.q.clone(), shapes.kv.clone());
            let (expand, merged) = (shapes.expand.clone(), shapes.merged.clone());
            let h = self.rms_norm(&x, &format!("{l}.input_layernorm.weight"), p.rms_norm_eps)?;
            let q = self.linear(&h, &format!("{l}.self_attn.q_proj"), bias)?;
            let k = self.linear(&h, &format!("{l}.self_attn.k_proj"), bias)?;
            let v = self.linear(&h, &format!("{l}.self_attn.v_proj"), bias)?;
            let q = self.split_heads(&q, &q_shape, [0, 2, 1, 3]);
            let k = self.split_heads(&k, &kv_shape, [0, 2, 1, 3]);
            let v = self.split_heads(&v, &kv_shape, [0, 2, 1, 3]);
            let q = self.rope(&q, &cos, &sin, hd)?;
            let q = self.op("q", Op::Mul, &[&q, &scale]);
            let k = self.rope(&k, &cos, &sin, hd)?;
            let (k, v) = if rep > 1 {
                let mut out = vec![];
                for t in [k, v] {
                    let t = self.op("gqa", Op::Unsqueeze { axes: vec![2] }, &[&t]);
                    let t = self.op("gqa", Op::Expand, &[&t, &expand]);
                    out.push(self.op("gqa", Op::Reshape { allow_zero: false }, &[&t, &merged]));
                }
                let v = out.pop().expect("two");
                (out.pop().expect("two"), v)
            } else {
                (k, v)
            };
            let kt = self.op(
                "k",
                Op::Transpose {
                    perm: vec![0, 1, 3, 2],
                },
                &[&k],
            );
            let ctx = self.attention(&q, &kt, &v, &mask, nh * hd)?;
            let o = self.linear(&ctx, &format!("{l}.self_attn.o_proj"), false)?;
            let x1 = self.op("residual", Op::Add, &[&x, &o]);
            let h = self.rms_norm(
                &x1,
                &format!("{l}.post_attention_layernorm.weight"),
                p.rms_norm_eps,
            )?;
            let g = self.linear(&h, &format!("{l}.mlp.gate_proj"), false)?;
            let u = self.linear(&h, &format!("{l}.mlp.up_proj"), false)?;
            let sg = self.op("silu", Op::Sigmoid, &[&g]);
            let sg = self.op("silu", Op::Mul, &[&g, &sg]);
            let m = self.op("mlp", Op::Mul, &[&sg, &u]);
            let dn = self.linear(&m, &format!("{l}.mlp.down_proj"), false)?;
            x = self.op("residual", Op::Add, &[&x1, &dn]);
        }
        let h = self.rms_norm(&x, "model.norm.weight", p.rms_norm_eps)?;
        let head = if p.tie_word_embeddings {
            "model.embed_tokens.weight".to_string()
        } else {
            self.weight("lm_head.weight")?
        };
        let logits = self.op(
            "lm_head",
            Op::Gemm {
                alpha: 1.0,
                beta: 1.0,
                trans_a: false,
                trans_b: true,
            },
            &[&h, &head],
        );
        let out_shape = self.op(
            "shape",
            Op::Shape {
                start: 0,
                end: None,
            },
            &[ids],
        );
        let v = self.i64s("vocab", &[p.vocab_size as i64])?;
        let out_shape = self.op("shape", Op::Concat { axis: 0 }, &[&out_shape, &v]);
        self.finish(&logits, &out_shape, "logits");
        Ok((
            vec![ids_input(ids), ids_input("attention_mask")],
            vec![float_output("logits", p.vocab_size)],
        ))
    }

    /// Reshapes the `[tokens, n]` result to `shape` under the output name.
    fn finish(&mut self, x: &str, shape: &str, name: &str) {
        self.nodes.push(Node {
            name: name.into(),
            op: Op::Reshape { allow_zero: false },
            inputs: vec![x.into(), shape.into()],
            outputs: vec![name.into()],
        });
    }
}
