//! IR graph → TFLite operators.
//!
//! The graph is first made static: named input dims get sizes (a dim whose
//! name mentions "batch", or `N`, is 1 unless given), constant subgraphs
//! and shape arithmetic are folded, and every value's shape is inferred.
//!
//! Layout: IR graphs are NCHW (ONNX); TFLite's convolutions and pools are
//! NHWC. In a graph with convolutions or pooling, 4-D float graph inputs
//! become NHWC, and every 4-D value computed from them stays NHWC through
//! convolutions, pooling, elementwise ops (constants are permuted to
//! match), concatenation (axis remapped), padding, spatial means and
//! channel softmax. A TRANSPOSE back to NCHW is inserted only before an op
//! that depends on the NCHW order (Reshape/Flatten of a tensor whose NHWC
//! and NCHW orders differ, Gather, Slice, ...). 4-D outputs that are NHWC
//! stay NHWC. So EfficientNet-Lite0 has no TRANSPOSE at all.
//!
//! Relu and Clip(0, 6) are fused into the preceding CONV_2D,
//! DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, SUB, MUL, DIV, pooling or
//! CONCATENATION; MatMul followed by a constant bias Add becomes one
//! FULLY_CONNECTED; `x·(1 + erf(x/√2))/2` becomes GELU; `1/√x` RSQRT;
//! LayerNorm is decomposed into MEAN, SUB, MUL, ADD and RSQRT.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use edgec_core::runtime::graph::{fold_constants, infer_shapes};
use edgec_core::{DType, Dim, Model, Node, Op, PadMode, Tensor, TensorData, Window};

use super::model::{
    elem_size, tfl_type, transpose_bytes, Act, BuiltinOperator as B, Options, Padding, TensorType,
    TflModel,
};

/// Sizes of named (dynamic) input dimensions, which TFLite needs static.
#[derive(Debug, Clone, Default)]
pub struct LowerOptions {
    pub dims: Vec<(String, usize)>,
}

/// NCHW axis `a` of a 4-D value sits at NHWC axis `NHWC_POS[a]`.
const NHWC_POS: [usize; 4] = [0, 3, 1, 2];
/// NCHW → NHWC data permutation.
const TO_NHWC: [usize; 4] = [0, 2, 3, 1];
/// NHWC → NCHW data permutation.
const TO_NCHW: [usize; 4] = [0, 3, 1, 2];

type Res<T> = std::result::Result<T, String>;

/// Lowers `model`'s graph to a TFLite model.
pub fn lower(model: &Model, opts: &LowerOptions) -> Res<TflModel> {
    let mut m = make_static(model, opts)?;
    fold_constants(&mut m).map_err(|e| format!("folding constants: {e}"))?;
    let shapes = infer_shapes(&m, &[]).map_err(|e| format!("inferring shapes: {e}"))?;
    let graph = m.graph.as_ref().expect("checked in make_static");
    let consts: HashMap<String, Tensor> = m
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    let image = graph.nodes.iter().any(|n| {
        matches!(
            n.op,
            Op::Conv { .. } | Op::MaxPool { .. } | Op::AveragePool { .. } | Op::GlobalAveragePool
        )
    });
    let mut l = Lower {
        consts,
        shapes,
        out: TflModel::default(),
        vals: HashMap::new(),
        const_cache: HashMap::new(),
        to_plain: HashMap::new(),
        to_nhwc: HashMap::new(),
        names: HashSet::new(),
    };
    for vi in &graph.inputs {
        if l.consts.contains_key(&vi.name) {
            continue;
        }
        let (_, shape) = l.shape_of(&vi.name)?;
        let nhwc = image && shape.len() == 4 && vi.dtype == DType::F32;
        let id = l.define(&vi.name, nhwc)?;
        l.out.inputs.push((vi.name.clone(), id));
    }
    let plan = Plan::new(graph, &l);
    for (i, node) in graph.nodes.iter().enumerate() {
        if plan.skip[i] {
            continue;
        }
        l.node(node, i, &plan)
            .map_err(|e| format!("node \"{}\" ({}): {e}", node.name, node.op.onnx_name().0))?;
    }
    for vi in &graph.outputs {
        let v = l.input(&vi.name)?;
        let mut id = v.id;
        // an output must be computed by an op, and named as the graph's
        let produced = l.out.ops.iter().any(|op| op.outputs.contains(&id));
        if !produced || l.out.inputs.iter().any(|(_, t)| *t == id) {
            let shape = l.out.tensors[id].shape.clone();
            let dtype = l.out.tensors[id].dtype;
            let out = l.tensor(&vi.name, shape.clone(), dtype);
            l.reshape_op(id, out, &shape);
            id = out;
        }
        l.out.outputs.push((vi.name.clone(), id));
    }
    Ok(l.out)
}

/// A clone of `model` whose graph inputs have only fixed dims.
fn make_static(model: &Model, opts: &LowerOptions) -> Res<Model> {
    let mut m = model.clone();
    let graph = m
        .graph
        .as_mut()
        .ok_or("the model has no graph to write as TFLite")?;
    for vi in &mut graph.inputs {
        for d in &mut vi.shape {
            if let Dim::Named(name) = d {
                let size = match opts.dims.iter().find(|(n, _)| n == name) {
                    Some((_, s)) => *s,
                    None if name.to_ascii_lowercase().contains("batch") || name == "N" => 1,
                    None => {
                        return Err(format!(
                            "input {} has the dynamic dimension \"{name}\"; TFLite needs static shapes: give its size (--dim {name}=SIZE)",
                            vi.name
                        ))
                    }
                };
                *d = Dim::Fixed(size);
            }
        }
    }
    Ok(m)
}

/// What the pattern pass decided before lowering.
struct Plan {
    skip: Vec<bool>,
    /// Node → activation fused into it, and the activation's output.
    act: HashMap<usize, (Act, String)>,
    /// MatMul node → (bias constant, the Add's output).
    bias: HashMap<usize, (String, String)>,
    /// Last node of an erf-GELU → its input x.
    gelu: HashMap<usize, String>,
    /// Reciprocal, or Div's divisor, computed as RSQRT of this value.
    rsqrt: HashMap<usize, String>,
}

impl Plan {
    fn new(graph: &edgec_core::Graph, l: &Lower) -> Plan {
        let n = graph.nodes.len();
        let mut uses: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, node) in graph.nodes.iter().enumerate() {
            for v in &node.inputs {
                uses.entry(v.as_str()).or_default().push(i);
            }
        }
        let outputs: HashSet<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
        let producer: HashMap<&str, usize> = graph
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.outputs.iter().map(move |o| (o.as_str(), i)))
            .collect();
        // the one node reading `v`, when nothing else (graph outputs included) does
        let sole = |v: &str| -> Option<usize> {
            match uses.get(v).map(|u| u.as_slice()) {
                Some([j]) if !outputs.contains(v) => Some(*j),
                _ => None,
            }
        };
        let scalar = |v: &str| l.scalar(v);
        let mut plan = Plan {
            skip: vec![false; n],
            act: HashMap::new(),
            bias: HashMap::new(),
            gelu: HashMap::new(),
            rsqrt: HashMap::new(),
        };
        let near = |v: Option<f32>, want: f32| v.is_some_and(|v| (v - want).abs() < 1e-5);

        for (i, node) in graph.nodes.iter().enumerate() {
            match &node.op {
                // erf-GELU: Div(x, √2) | Mul(x, 1/√2) → Erf → Add 1 → Mul x → Mul 0.5
                Op::Erf => {
                    let Some(&d) = producer.get(node.inputs[0].as_str()) else {
                        continue;
                    };
                    let dn = &graph.nodes[d];
                    let x = match dn.op {
                        Op::Div if near(scalar(&dn.inputs[1]), std::f32::consts::SQRT_2) => {
                            &dn.inputs[0]
                        }
                        Op::Mul if near(scalar(&dn.inputs[1]), std::f32::consts::FRAC_1_SQRT_2) => {
                            &dn.inputs[0]
                        }
                        _ => continue,
                    };
                    if sole(&dn.outputs[0]) != Some(i) {
                        continue;
                    }
                    let Some(a) = sole(&node.outputs[0]) else {
                        continue;
                    };
                    let an = &graph.nodes[a];
                    let other = |n: &Node, v: &str| -> Option<String> {
                        match n.inputs.as_slice() {
                            [p, q] if p == v => Some(q.clone()),
                            [p, q] if q == v => Some(p.clone()),
                            _ => None,
                        }
                    };
                    if an.op != Op::Add
                        || !near(other(an, &node.outputs[0]).and_then(|c| scalar(&c)), 1.0)
                    {
                        continue;
                    }
                    let Some(m1) = sole(&an.outputs[0]) else {
                        continue;
                    };
                    let m1n = &graph.nodes[m1];
                    if m1n.op != Op::Mul {
                        continue;
                    }
                    let Some(o) = other(m1n, &an.outputs[0]) else {
                        continue;
                    };
                    let (last, halves) = if &o == x {
                        // (x·(1+erf))·0.5
                        let Some(m2) = sole(&m1n.outputs[0]) else {
                            continue;
                        };
                        let m2n = &graph.nodes[m2];
                        if m2n.op != Op::Mul
                            || !near(other(m2n, &m1n.outputs[0]).and_then(|c| scalar(&c)), 0.5)
                        {
                            continue;
                        }
                        (m2, None)
                    } else {
                        // (x·0.5)·(1+erf)
                        let Some(&h) = producer.get(o.as_str()) else {
                            continue;
                        };
                        let hn = &graph.nodes[h];
                        if hn.op != Op::Mul
                            || sole(&o) != Some(m1)
                            || other(hn, x)
                                .and_then(|c| scalar(&c))
                                .is_none_or(|c| (c - 0.5).abs() > 1e-5)
                        {
                            continue;
                        }
                        (m1, Some(h))
                    };
                    plan.gelu.insert(last, x.clone());
                    for k in [d, i, a, m1].into_iter().chain(halves) {
                        if k != last {
                            plan.skip[k] = true;
                        }
                    }
                }
                Op::Reciprocal | Op::Div => {
                    let v = node.inputs.last().map(String::as_str).unwrap_or("");
                    if let Some(&s) = producer.get(v) {
                        if graph.nodes[s].op == Op::Sqrt && sole(v) == Some(i) {
                            plan.rsqrt.insert(i, graph.nodes[s].inputs[0].clone());
                            plan.skip[s] = true;
                        }
                    }
                }
                _ => {}
            }
        }
        for (i, node) in graph.nodes.iter().enumerate() {
            if plan.skip[i] || node.outputs.len() != 1 {
                continue;
            }
            let out = node.outputs[0].as_str();
            // MatMul + constant bias → FULLY_CONNECTED with bias
            let mut fused_out = out.to_string();
            if node.op == Op::MatMul && l.is_fc_matmul(node) {
                if let Some(a) = sole(out) {
                    let an = &graph.nodes[a];
                    let b = match an.inputs.as_slice() {
                        [p, q] if p == out => q,
                        [p, q] if q == out => p,
                        _ => "",
                    };
                    let n = l
                        .shape_of(out)
                        .map(|(_, s)| *s.last().unwrap_or(&0))
                        .unwrap_or(0);
                    let ok = an.op == Op::Add
                        && !plan.skip[a]
                        && l.consts.get(b).is_some_and(|t| {
                            t.dtype == DType::F32 && t.numel() == n && t.shape.last() == Some(&n)
                        });
                    if ok {
                        plan.bias.insert(i, (b.to_string(), an.outputs[0].clone()));
                        plan.skip[a] = true;
                        fused_out = an.outputs[0].clone();
                    }
                }
            }
            let fusable = match &node.op {
                Op::Conv { .. } | Op::Add | Op::Sub | Op::Mul | Op::Div | Op::MaxPool { .. } => {
                    true
                }
                Op::AveragePool { .. } | Op::Concat { .. } | Op::Gemm { .. } => true,
                Op::MatMul => l.is_fc_matmul(node),
                _ => false,
            } && !plan.rsqrt.contains_key(&i)
                && !plan.gelu.contains_key(&i)
                && l.shape_of(&fused_out).is_ok_and(|(d, _)| *d == DType::F32);
            if !fusable {
                continue;
            }
            let Some(a) = sole(&fused_out) else { continue };
            let an = &graph.nodes[a];
            if plan.skip[a] {
                continue;
            }
            let act = match an.op {
                Op::Relu => Act::RELU,
                Op::Clip => match l.clip_bounds(an) {
                    Some((lo, hi)) if lo == 0.0 && hi == 6.0 => Act::RELU6,
                    Some((lo, hi)) if lo == 0.0 && hi == f32::INFINITY => Act::RELU,
                    _ => continue,
                },
                _ => continue,
            };
            plan.act.insert(i, (act, an.outputs[0].clone()));
            plan.skip[a] = true;
        }
        plan
    }
}

#[derive(Debug, Clone, Copy)]
struct Val {
    id: usize,
    /// The tensor holds the NCHW value permuted to NHWC.
    nhwc: bool,
}

struct Lower {
    consts: HashMap<String, Tensor>,
    shapes: HashMap<String, (DType, Vec<usize>)>,
    out: TflModel,
    vals: HashMap<String, Val>,
    const_cache: HashMap<(String, bool), usize>,
    to_plain: HashMap<usize, usize>,
    to_nhwc: HashMap<usize, usize>,
    names: HashSet<String>,
}

fn bytes_of(v: Vec<u8>) -> TensorData {
    TensorData::Owned(Arc::new(v))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i32s(v: &[usize]) -> Vec<i32> {
    v.iter().map(|&d| d as i32).collect()
}

impl Lower {
    fn shape_of(&self, v: &str) -> Res<&(DType, Vec<usize>)> {
        self.shapes
            .get(v)
            .ok_or_else(|| format!("no shape known for value {v}"))
    }

    fn rank(&self, v: &str) -> Res<usize> {
        Ok(self.shape_of(v)?.1.len())
    }

    fn unique(&mut self, name: &str) -> String {
        let mut n = name.to_string();
        let mut k = 1;
        while self.names.contains(&n) {
            n = format!("{name}_{k}");
            k += 1;
        }
        self.names.insert(n.clone());
        n
    }

    fn tensor(&mut self, name: &str, shape: Vec<usize>, dtype: TensorType) -> usize {
        let name = self.unique(name);
        self.out.add_tensor(name, shape, dtype)
    }

    fn constant(
        &mut self,
        name: &str,
        shape: Vec<usize>,
        dtype: TensorType,
        data: Vec<u8>,
    ) -> usize {
        let name = self.unique(name);
        self.out.add_const(name, shape, dtype, bytes_of(data))
    }

    fn const_i32(&mut self, name: &str, v: &[i32]) -> usize {
        let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.constant(name, vec![v.len()], TensorType::INT32, data)
    }

    fn const_f32(&mut self, name: &str, shape: Vec<usize>, v: &[f32]) -> usize {
        self.constant(name, shape, TensorType::FLOAT32, f32_bytes(v))
    }

    /// The tensor of IR value `v` (produced here, with `nhwc` layout).
    fn define(&mut self, v: &str, nhwc: bool) -> Res<usize> {
        let (dt, shape) = self.shape_of(v)?.clone();
        let dtype = tfl_type(dt).ok_or_else(|| format!("value {v}: {dt} has no TFLite type"))?;
        let shape = if nhwc {
            permute(&shape, &TO_NHWC)
        } else {
            shape
        };
        let id = self.tensor(v, shape, dtype);
        self.vals.insert(v.to_string(), Val { id, nhwc });
        Ok(id)
    }

    fn alias(&mut self, v: &str, to: Val) {
        self.vals.insert(v.to_string(), to);
    }

    /// A scalar constant's value, as f32.
    fn scalar(&self, v: &str) -> Option<f32> {
        let t = self.consts.get(v)?;
        if t.numel() != 1 {
            return None;
        }
        t.to_f32().ok().map(|x| x[0])
    }

    fn ints(&self, v: &str) -> Res<Vec<i64>> {
        let t = self
            .consts
            .get(v)
            .ok_or_else(|| format!("{v} must be a constant"))?;
        let b = t.bytes();
        Ok(match t.dtype {
            DType::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            DType::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                .collect(),
            d => return Err(format!("{v}: expected integers, got {d}")),
        })
    }

    fn clip_bounds(&self, node: &Node) -> Option<(f32, f32)> {
        let bound = |i: usize, default: f32| match node.inputs.get(i).map(String::as_str) {
            None | Some("") => Some(default),
            Some(v) => self.scalar(v),
        };
        Some((bound(1, f32::NEG_INFINITY)?, bound(2, f32::INFINITY)?))
    }

    /// MatMul with a constant 2-D right operand (a FULLY_CONNECTED).
    fn is_fc_matmul(&self, node: &Node) -> bool {
        node.inputs
            .get(1)
            .and_then(|b| self.consts.get(b))
            .is_some_and(|t| t.shape.len() == 2 && t.dtype == DType::F32)
            && node
                .inputs
                .first()
                .is_some_and(|a| !self.consts.contains_key(a) && self.rank(a).is_ok_and(|r| r >= 2))
    }

    fn is_nhwc(&self, v: &str) -> bool {
        self.vals.get(v).is_some_and(|x| x.nhwc)
    }

    fn const_tensor(&mut self, v: &str, nhwc: bool) -> Res<usize> {
        if let Some(&id) = self.const_cache.get(&(v.to_string(), nhwc)) {
            return Ok(id);
        }
        let t = self
            .consts
            .get(v)
            .ok_or_else(|| format!("{v} is not defined"))?
            .clone();
        let dtype = tfl_type(t.dtype)
            .ok_or_else(|| format!("constant {v}: {} has no TFLite type", t.dtype))?;
        let id = if nhwc && t.numel() > 1 {
            if t.shape.len() > 4 {
                return Err(format!(
                    "constant {v} of rank {} broadcast to a 4-D NHWC value",
                    t.shape.len()
                ));
            }
            let mut s4 = vec![1usize; 4 - t.shape.len()];
            s4.extend(&t.shape);
            let elem = elem_size(dtype).expect("dense type");
            let data = transpose_bytes(t.bytes(), &s4, &TO_NHWC, elem);
            self.constant(&format!("{v}/nhwc"), permute(&s4, &TO_NHWC), dtype, data)
        } else {
            let name = self.unique(v);
            self.out
                .add_const(name, t.shape.clone(), dtype, t.data.clone())
        };
        self.const_cache.insert((v.to_string(), nhwc), id);
        Ok(id)
    }

    fn input(&mut self, v: &str) -> Res<Val> {
        if let Some(x) = self.vals.get(v) {
            return Ok(*x);
        }
        if self.consts.contains_key(v) {
            return Ok(Val {
                id: self.const_tensor(v, false)?,
                nhwc: false,
            });
        }
        Err(format!("value {v} is not computed before it is used"))
    }

    /// `v` in the IR's layout.
    fn plain(&mut self, v: &str) -> Res<usize> {
        let x = self.input(v)?;
        if !x.nhwc {
            return Ok(x.id);
        }
        if let Some(&id) = self.to_plain.get(&x.id) {
            return Ok(id);
        }
        let shape = self.shape_of(v)?.1.clone();
        let dtype = self.out.tensors[x.id].dtype;
        let out = self.tensor(&format!("{v}/nchw"), shape, dtype);
        self.transpose_op(x.id, out, &TO_NCHW);
        self.to_plain.insert(x.id, out);
        Ok(out)
    }

    /// `v` (4-D, or a constant broadcast to 4-D) in NHWC.
    fn nhwc(&mut self, v: &str) -> Res<usize> {
        if self.consts.contains_key(v) && !self.vals.contains_key(v) {
            return self.const_tensor(v, true);
        }
        let x = self.input(v)?;
        if x.nhwc {
            return Ok(x.id);
        }
        if let Some(&id) = self.to_nhwc.get(&x.id) {
            return Ok(id);
        }
        let shape = self.shape_of(v)?.1.clone();
        let dtype = self.out.tensors[x.id].dtype;
        let src = if shape.len() < 4 {
            // broadcast operand of lower rank: make it 4-D first
            let mut s4 = vec![1usize; 4 - shape.len()];
            s4.extend(&shape);
            let r = self.tensor(&format!("{v}/4d"), s4.clone(), dtype);
            self.reshape_op(x.id, r, &s4);
            r
        } else if shape.len() == 4 {
            x.id
        } else {
            return Err(format!(
                "value {v} of rank {} meets a 4-D NHWC value",
                shape.len()
            ));
        };
        let s4 = self.out.tensors[src].shape.clone();
        let out = self.tensor(&format!("{v}/nhwc"), permute(&s4, &TO_NHWC), dtype);
        self.transpose_op(src, out, &TO_NHWC);
        self.to_nhwc.insert(x.id, out);
        Ok(out)
    }

    fn transpose_op(&mut self, from: usize, to: usize, perm: &[usize]) {
        let name = format!("{}/perm", self.out.tensors[to].name);
        let p = self.const_i32(&name, &i32s(perm));
        self.out.add_op(
            B::TRANSPOSE,
            vec![Some(from), Some(p)],
            vec![to],
            Options::Empty,
        );
    }

    fn reshape_op(&mut self, from: usize, to: usize, shape: &[usize]) {
        let name = format!("{}/shape", self.out.tensors[to].name);
        let s = self.const_i32(&name, &i32s(shape));
        self.out.add_op(
            B::RESHAPE,
            vec![Some(from), Some(s)],
            vec![to],
            Options::Reshape {
                new_shape: i32s(shape),
            },
        );
    }

    /// Defines the output of `node` (or of the activation fused into it).
    fn def_out(&mut self, node: &Node, i: usize, plan: &Plan, nhwc: bool) -> Res<(usize, Act)> {
        let out = &node.outputs[0];
        match plan.act.get(&i) {
            Some((act, act_out)) => {
                let target = plan
                    .bias
                    .get(&i)
                    .map(|(_, o)| o.clone())
                    .unwrap_or(out.clone());
                let id = self.define(act_out, nhwc)?;
                self.alias(&target, Val { id, nhwc });
                if target != *out {
                    self.alias(out, Val { id, nhwc });
                }
                Ok((id, *act))
            }
            None => {
                let target = plan
                    .bias
                    .get(&i)
                    .map(|(_, o)| o.clone())
                    .unwrap_or(out.clone());
                let id = self.define(&target, nhwc)?;
                if target != *out {
                    self.alias(out, Val { id, nhwc });
                }
                Ok((id, Act::NONE))
            }
        }
    }

    fn node(&mut self, node: &Node, i: usize, plan: &Plan) -> Res<()> {
        if node.outputs.len() != 1 {
            return Err("ops with several outputs are not supported".into());
        }
        let y = node.outputs[0].clone();
        let inp = |k: usize| -> Res<&str> {
            node.inputs
                .get(k)
                .map(String::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("input {k} is missing"))
        };
        if let Some(x) = plan.gelu.get(&i) {
            return self.unary(B::GELU, x, &y, Options::Gelu { approximate: false });
        }
        if let Some(x) = plan.rsqrt.get(&i) {
            let x = x.clone();
            if node.op == Op::Reciprocal {
                return self.unary(B::RSQRT, &x, &y, Options::None);
            }
            // Div(a, Sqrt(x)) = a · rsqrt(x)
            let r = format!("{y}/rsqrt");
            let (dt, shape) = self.shape_of(&x)?.clone();
            self.shapes.insert(r.clone(), (dt, shape));
            self.unary(B::RSQRT, &x, &r, Options::None)?;
            let a = inp(0)?.to_string();
            return self.binary(B::MUL, &[&a, &r], node, i, plan);
        }
        match &node.op {
            Op::Identity => {
                let x = self.input(inp(0)?)?;
                self.alias(&y, x);
                Ok(())
            }
            Op::Relu => self.unary(B::RELU, inp(0)?, &y, Options::None),
            Op::Sigmoid => self.unary(B::LOGISTIC, inp(0)?, &y, Options::None),
            Op::Tanh => self.unary(B::TANH, inp(0)?, &y, Options::None),
            Op::Exp => self.unary(B::EXP, inp(0)?, &y, Options::Empty),
            Op::Log => self.unary(B::LOG, inp(0)?, &y, Options::None),
            Op::Sqrt => self.unary(B::SQRT, inp(0)?, &y, Options::None),
            Op::Neg => self.unary(B::NEG, inp(0)?, &y, Options::Empty),
            Op::Abs => self.unary(B::ABS, inp(0)?, &y, Options::Empty),
            Op::Not => self.unary(B::LOGICAL_NOT, inp(0)?, &y, Options::Empty),
            Op::HardSwish => self.unary(B::HARD_SWISH, inp(0)?, &y, Options::Empty),
            Op::Gelu { tanh } => {
                self.unary(B::GELU, inp(0)?, &y, Options::Gelu { approximate: *tanh })
            }
            Op::Reciprocal => {
                let one = format!("{y}/one");
                self.consts.insert(
                    one.clone(),
                    Tensor::from_f32(one.clone(), vec![], vec![1.0]).map_err(|e| e.to_string())?,
                );
                self.binary(B::DIV, &[&one, inp(0)?], node, i, plan)
            }
            Op::Clip => {
                let (lo, hi) = self
                    .clip_bounds(node)
                    .ok_or("Clip bounds must be constant")?;
                let x = inp(0)?;
                if lo == 0.0 && hi == 6.0 {
                    return self.unary(B::RELU6, x, &y, Options::None);
                }
                if lo == 0.0 && hi == f32::INFINITY {
                    return self.unary(B::RELU, x, &y, Options::None);
                }
                let mut cur = x.to_string();
                let steps: Vec<(B, f32)> = [(B::MAXIMUM, lo), (B::MINIMUM, hi)]
                    .into_iter()
                    .filter(|(_, b)| b.is_finite())
                    .collect();
                if steps.is_empty() {
                    let v = self.input(x)?;
                    self.alias(&y, v);
                    return Ok(());
                }
                for (k, (code, b)) in steps.iter().enumerate() {
                    let c = format!("{y}/bound{k}");
                    self.consts.insert(
                        c.clone(),
                        Tensor::from_f32(c.clone(), vec![], vec![*b]).map_err(|e| e.to_string())?,
                    );
                    let out = if k + 1 == steps.len() {
                        y.clone()
                    } else {
                        format!("{y}/max")
                    };
                    if out != y {
                        let s = self.shape_of(x)?.clone();
                        self.shapes.insert(out.clone(), s);
                    }
                    self.elementwise(*code, &[&cur, &c], &out, Options::Empty, None)?;
                    cur = out;
                }
                Ok(())
            }
            Op::Add => self.binary(B::ADD, &[inp(0)?, inp(1)?], node, i, plan),
            Op::Sub => self.binary(B::SUB, &[inp(0)?, inp(1)?], node, i, plan),
            Op::Mul => self.binary(B::MUL, &[inp(0)?, inp(1)?], node, i, plan),
            Op::Div => self.binary(B::DIV, &[inp(0)?, inp(1)?], node, i, plan),
            Op::Pow => self.elementwise(B::POW, &[inp(0)?, inp(1)?], &y, Options::Empty, None),
            Op::Equal => self.elementwise(B::EQUAL, &[inp(0)?, inp(1)?], &y, Options::Empty, None),
            Op::Greater => {
                self.elementwise(B::GREATER, &[inp(0)?, inp(1)?], &y, Options::Empty, None)
            }
            Op::Less => self.elementwise(B::LESS, &[inp(0)?, inp(1)?], &y, Options::Empty, None),
            Op::GreaterOrEqual => self.elementwise(
                B::GREATER_EQUAL,
                &[inp(0)?, inp(1)?],
                &y,
                Options::Empty,
                None,
            ),
            Op::LessOrEqual => {
                self.elementwise(B::LESS_EQUAL, &[inp(0)?, inp(1)?], &y, Options::Empty, None)
            }
            Op::And => self.elementwise(
                B::LOGICAL_AND,
                &[inp(0)?, inp(1)?],
                &y,
                Options::Empty,
                None,
            ),
            Op::Or => {
                self.elementwise(B::LOGICAL_OR, &[inp(0)?, inp(1)?], &y, Options::Empty, None)
            }
            Op::Max | Op::Min if node.inputs.len() == 2 => {
                let code = if node.op == Op::Max {
                    B::MAXIMUM
                } else {
                    B::MINIMUM
                };
                self.elementwise(code, &[inp(0)?, inp(1)?], &y, Options::Empty, None)
            }
            Op::Where => self.elementwise(
                B::SELECT_V2,
                &[inp(0)?, inp(1)?, inp(2)?],
                &y,
                Options::Empty,
                None,
            ),
            Op::Cast { to } => {
                let x = self.input(inp(0)?)?;
                let from = self.out.tensors[x.id].dtype;
                let to_t =
                    tfl_type(*to).ok_or_else(|| format!("Cast to {to} has no TFLite type"))?;
                let id = self.define(&y, x.nhwc)?;
                self.out.add_op(
                    B::CAST,
                    vec![Some(x.id)],
                    vec![id],
                    Options::Cast { from, to: to_t },
                );
                Ok(())
            }
            Op::Conv { window, group } => self.conv(node, i, plan, window, *group),
            Op::MaxPool { window } => self.pool(node, i, plan, window, None),
            Op::AveragePool {
                window,
                count_include_pad,
            } => self.pool(node, i, plan, window, Some(*count_include_pad)),
            Op::GlobalAveragePool => {
                let x = inp(0)?;
                if self.rank(x)? != 4 {
                    return Err("only 4-D GlobalAveragePool is supported".into());
                }
                let xin = self.nhwc(x)?;
                let axes = self.const_i32(&format!("{y}/axes"), &[1, 2]);
                let id = self.define(&y, true)?;
                self.out.add_op(
                    B::MEAN,
                    vec![Some(xin), Some(axes)],
                    vec![id],
                    Options::Reducer { keep_dims: true },
                );
                Ok(())
            }
            Op::ReduceMean { axes, keep_dims } => self.reduce(B::MEAN, node, axes, *keep_dims),
            Op::ReduceSum { axes, keep_dims } => self.reduce(B::SUM, node, axes, *keep_dims),
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => self.gemm(node, i, plan, *alpha, *beta, *trans_a, *trans_b),
            Op::MatMul => self.matmul(node, i, plan),
            Op::Softmax { axis } => self.softmax(node, *axis),
            Op::LayerNorm { axis, epsilon } => self.layer_norm(node, *axis, *epsilon),
            Op::Reshape { .. } | Op::Flatten { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
                let x = inp(0)?;
                let xs = self.shape_of(x)?.1.clone();
                // NHWC data is in NCHW order too when C = 1 or H·W = 1
                let same_order = xs.len() == 4 && (xs[1] == 1 || xs[2] * xs[3] == 1);
                let src = if self.is_nhwc(x) && same_order {
                    self.input(x)?.id
                } else {
                    self.plain(x)?
                };
                let shape = self.shape_of(&y)?.1.clone();
                let id = self.define(&y, false)?;
                self.reshape_op(src, id, &shape);
                Ok(())
            }
            Op::Transpose { perm } => {
                let x = inp(0)?;
                let (src, perm) = if self.is_nhwc(x) && perm.len() == 4 {
                    let p: Vec<usize> = perm.iter().map(|&a| NHWC_POS[a]).collect();
                    (self.input(x)?.id, p)
                } else {
                    (self.plain(x)?, perm.clone())
                };
                let id = self.define(&y, false)?;
                self.transpose_op(src, id, &perm);
                Ok(())
            }
            Op::Concat { axis } => {
                let r = self.rank(&y)? as i64;
                let a = norm_axis(*axis, r)?;
                let ins: Vec<&str> = node.inputs.iter().map(String::as_str).collect();
                let nhwc = r == 4 && ins.iter().any(|v| self.is_nhwc(v));
                let mut ids = Vec::with_capacity(ins.len());
                for v in &ins {
                    ids.push(Some(if nhwc { self.nhwc(v)? } else { self.plain(v)? }));
                }
                let (id, act) = self.def_out(node, i, plan, nhwc)?;
                let axis = if nhwc { NHWC_POS[a] } else { a } as i32;
                self.out.add_op(
                    B::CONCATENATION,
                    ids,
                    vec![id],
                    Options::Concatenation { axis, act },
                );
                Ok(())
            }
            Op::Gather { axis } => {
                let data = self.plain(inp(0)?)?;
                let idx = self.plain(inp(1)?)?;
                let a = norm_axis(*axis, self.rank(inp(0)?)? as i64)? as i32;
                let id = self.define(&y, false)?;
                self.out.add_op(
                    B::GATHER,
                    vec![Some(data), Some(idx)],
                    vec![id],
                    Options::Gather {
                        axis: a,
                        batch_dims: 0,
                    },
                );
                Ok(())
            }
            Op::Slice => self.slice(node),
            Op::Pad { mode } => {
                if *mode != PadMode::Constant {
                    return Err(format!(
                        "Pad mode {mode:?} is not supported (only constant)"
                    ));
                }
                if let Some(v) = node.inputs.get(2).filter(|v| !v.is_empty()) {
                    if self.scalar(v) != Some(0.0) {
                        return Err("Pad with a non-zero constant value is not supported".into());
                    }
                }
                let x = inp(0)?;
                let pads = self.ints(inp(1)?)?;
                let r = self.rank(x)?;
                if pads.len() != 2 * r || pads.iter().any(|&p| p < 0) {
                    return Err(format!(
                        "pads {pads:?} for rank {r} (negative pads are not supported)"
                    ));
                }
                let nhwc = self.is_nhwc(x) && r == 4;
                let mut rows = vec![0i32; 2 * r];
                for a in 0..r {
                    let t = if nhwc { NHWC_POS[a] } else { a };
                    rows[2 * t] = pads[a] as i32;
                    rows[2 * t + 1] = pads[a + r] as i32;
                }
                let src = if nhwc { self.nhwc(x)? } else { self.plain(x)? };
                let p = self.constant(
                    &format!("{y}/paddings"),
                    vec![r, 2],
                    TensorType::INT32,
                    rows.iter().flat_map(|v| v.to_le_bytes()).collect(),
                );
                let id = self.define(&y, nhwc)?;
                self.out
                    .add_op(B::PAD, vec![Some(src), Some(p)], vec![id], Options::Empty);
                Ok(())
            }
            Op::Erf => {
                Err("Erf has no TFLite builtin (only the erf form of GELU is recognised)".into())
            }
            other => Err(format!("{} has no TFLite mapping", other.onnx_name().0)),
        }
    }

    /// A one-input op that keeps the layout of its input.
    fn unary(&mut self, code: B, x: &str, y: &str, options: Options) -> Res<()> {
        let v = self.input(x)?;
        let id = self.define(y, v.nhwc)?;
        self.out.add_op(code, vec![Some(v.id)], vec![id], options);
        Ok(())
    }

    fn binary(&mut self, code: B, ins: &[&str], node: &Node, i: usize, plan: &Plan) -> Res<()> {
        let y = node.outputs[0].clone();
        self.elementwise(code, ins, &y, plain_options(code), Some((node, i, plan)))
    }

    /// `code` (an arithmetic op, RSQRT or a MEAN keeping dims) from `ins`
    /// into tensor `out`, with no fused activation.
    fn plain_op(&mut self, code: B, ins: &[usize], out: usize) {
        let ins = ins.iter().map(|&t| Some(t)).collect();
        self.out.add_op(code, ins, vec![out], plain_options(code));
    }

    /// [`Self::plain_op`] into a new f32 tensor `name` of `shape`.
    fn plain_f32(&mut self, code: B, ins: &[usize], name: &str, shape: Vec<usize>) -> usize {
        let out = self.tensor(name, shape, TensorType::FLOAT32);
        self.plain_op(code, ins, out);
        out
    }

    /// A broadcasting elementwise op: NHWC when its output is 4-D and some
    /// computed input is NHWC.
    fn elementwise(
        &mut self,
        code: B,
        ins: &[&str],
        y: &str,
        mut options: Options,
        fuse: Option<(&Node, usize, &Plan)>,
    ) -> Res<()> {
        let r = self.rank(y)?;
        let nhwc = r == 4 && ins.iter().any(|v| self.is_nhwc(v));
        let mut ids = Vec::with_capacity(ins.len());
        for v in ins {
            ids.push(Some(if nhwc { self.nhwc(v)? } else { self.plain(v)? }));
        }
        let id = match fuse {
            Some((node, i, plan)) => {
                let (id, act) = self.def_out(node, i, plan, nhwc)?;
                options.set_act(act);
                id
            }
            None => self.define(y, nhwc)?,
        };
        self.out.add_op(code, ids, vec![id], options);
        Ok(())
    }

    fn conv(
        &mut self,
        node: &Node,
        i: usize,
        plan: &Plan,
        window: &Window,
        group: usize,
    ) -> Res<()> {
        let x = node.inputs[0].as_str();
        let wname = node.inputs.get(1).map(String::as_str).unwrap_or("");
        let w = self
            .consts
            .get(wname)
            .ok_or("the weights must be constant")?
            .clone();
        if w.shape.len() != 4 || window.kernel.len() != 2 || self.rank(x)? != 4 {
            return Err("only 2-D convolutions are supported".into());
        }
        if w.dtype != DType::F32 {
            return Err(format!("{} weights are not supported (f32 only)", w.dtype));
        }
        let xs = self.shape_of(x)?.1.clone();
        let (m, cg, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
        let c = xs[1];
        let depthwise = group > 1 && group == c && cg == 1 && m % c == 0;
        if group != 1 && !depthwise {
            return Err(format!(
                "grouped convolution (group {group} of {c} channels) has no TFLite builtin"
            ));
        }
        let mut src = self.nhwc(x)?;
        let (padding, pre_pad) = padding_of(window, &xs[2..])?;
        if let Some(pads) = pre_pad {
            src = self.pad_nhwc(src, &pads, &format!("{}/pad", node.outputs[0]))?;
        }
        let (wdata, wshape) = if depthwise {
            (
                transpose_bytes(w.bytes(), &w.shape, &[1, 2, 3, 0], 4),
                vec![1, kh, kw, m],
            )
        } else {
            (
                transpose_bytes(w.bytes(), &w.shape, &[0, 2, 3, 1], 4),
                vec![m, kh, kw, cg],
            )
        };
        let wt = self.constant(wname, wshape, TensorType::FLOAT32, wdata);
        let bias = match node.inputs.get(2).filter(|b| !b.is_empty()) {
            Some(b) => {
                let t = self
                    .consts
                    .get(b.as_str())
                    .ok_or("the bias must be constant")?;
                if t.dtype != DType::F32 || t.numel() != m {
                    return Err(format!("bias {b} is not {m} f32 values"));
                }
                self.const_tensor(b, false)?
            }
            None => self.const_f32(&format!("{}/bias", node.outputs[0]), vec![m], &vec![0.0; m]),
        };
        let (id, act) = self.def_out(node, i, plan, true)?;
        let stride = [window.strides[0] as i32, window.strides[1] as i32];
        let dilation = [window.dilations[0] as i32, window.dilations[1] as i32];
        let (code, options) = if depthwise {
            (
                B::DEPTHWISE_CONV_2D,
                Options::DepthwiseConv2D {
                    padding,
                    stride,
                    dilation,
                    depth_multiplier: (m / c) as i32,
                    act,
                },
            )
        } else {
            (
                B::CONV_2D,
                Options::Conv2D {
                    padding,
                    stride,
                    dilation,
                    act,
                },
            )
        };
        self.out.add_op(
            code,
            vec![Some(src), Some(wt), Some(bias)],
            vec![id],
            options,
        );
        Ok(())
    }

    /// PAD of an NHWC tensor by ONNX spatial pads `[top, left, bottom, right]`.
    fn pad_nhwc(&mut self, src: usize, pads: &[usize], name: &str) -> Res<usize> {
        let s = self.out.tensors[src].shape.clone();
        let rows: [i32; 8] = [
            0,
            0,
            pads[0] as i32,
            pads[2] as i32,
            pads[1] as i32,
            pads[3] as i32,
            0,
            0,
        ];
        let p = self.constant(
            &format!("{name}/paddings"),
            vec![4, 2],
            TensorType::INT32,
            rows.iter().flat_map(|v| v.to_le_bytes()).collect(),
        );
        let shape = vec![
            s[0],
            s[1] + pads[0] + pads[2],
            s[2] + pads[1] + pads[3],
            s[3],
        ];
        let dtype = self.out.tensors[src].dtype;
        let out = self.tensor(name, shape, dtype);
        self.out
            .add_op(B::PAD, vec![Some(src), Some(p)], vec![out], Options::Empty);
        Ok(out)
    }

    fn pool(
        &mut self,
        node: &Node,
        i: usize,
        plan: &Plan,
        window: &Window,
        avg: Option<bool>,
    ) -> Res<()> {
        let x = node.inputs[0].as_str();
        if window.kernel.len() != 2 || self.rank(x)? != 4 {
            return Err("only 2-D pooling is supported".into());
        }
        if window.dilations.iter().any(|&d| d != 1) {
            return Err("dilated pooling is not supported".into());
        }
        let xs = self.shape_of(x)?.1.clone();
        let mut src = self.nhwc(x)?;
        let (padding, pre_pad) = padding_of(window, &xs[2..])?;
        let padding = match (pre_pad, avg) {
            (None, Some(true))
                if padding == Padding::SAME && window.pads.iter().any(|&p| p > 0) =>
            {
                // count_include_pad: the padded zeros count, so pad explicitly
                let pads = window.pads.clone();
                src = self.pad_nhwc(src, &pads, &format!("{}/pad", node.outputs[0]))?;
                Padding::VALID
            }
            (None, _) => padding,
            (Some(pads), Some(true)) => {
                src = self.pad_nhwc(src, &pads, &format!("{}/pad", node.outputs[0]))?;
                Padding::VALID
            }
            (Some(_), _) => {
                return Err(format!(
                    "pool pads {:?} are neither TFLite's SAME nor VALID",
                    window.pads
                ))
            }
        };
        let (id, act) = self.def_out(node, i, plan, true)?;
        let code = if avg.is_some() {
            B::AVERAGE_POOL_2D
        } else {
            B::MAX_POOL_2D
        };
        self.out.add_op(
            code,
            vec![Some(src)],
            vec![id],
            Options::Pool2D {
                padding,
                stride: [window.strides[0] as i32, window.strides[1] as i32],
                filter: [window.kernel[0] as i32, window.kernel[1] as i32],
                act,
            },
        );
        Ok(())
    }

    fn reduce(&mut self, code: B, node: &Node, axes: &[i64], keep_dims: bool) -> Res<()> {
        let x = node.inputs[0].as_str();
        let y = node.outputs[0].clone();
        if node.inputs.len() > 1 && node.inputs[1..].iter().any(|s| !s.is_empty()) {
            return Err("reduction axes must be resolved at import".into());
        }
        let r = self.rank(x)?;
        let mut axes: Vec<usize> = if axes.is_empty() {
            (0..r).collect()
        } else {
            axes.iter()
                .map(|&a| norm_axis(a, r as i64))
                .collect::<Res<_>>()?
        };
        axes.sort_unstable();
        axes.dedup();
        let nhwc_in = self.is_nhwc(x) && r == 4;
        // the NHWC reduction keeps NCHW order when the kept dims agree
        let kept_same = |axes: &[usize]| {
            let keep = |order: &[usize]| -> Vec<usize> {
                order
                    .iter()
                    .copied()
                    .filter(|a| !axes.contains(a))
                    .collect()
            };
            keep(&[0, 1, 2, 3]) == keep(&[0, 2, 3, 1])
        };
        let (src, t_axes, out_nhwc) = if nhwc_in && (keep_dims || kept_same(&axes)) {
            let t: Vec<i32> = axes.iter().map(|&a| NHWC_POS[a] as i32).collect();
            (self.input(x)?.id, t, keep_dims)
        } else {
            (
                self.plain(x)?,
                axes.iter().map(|&a| a as i32).collect(),
                false,
            )
        };
        let mut t_axes = t_axes;
        t_axes.sort_unstable();
        let ax = self.const_i32(&format!("{y}/axes"), &t_axes);
        let id = self.define(&y, out_nhwc)?;
        self.out.add_op(
            code,
            vec![Some(src), Some(ax)],
            vec![id],
            Options::Reducer { keep_dims },
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &mut self,
        node: &Node,
        i: usize,
        plan: &Plan,
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    ) -> Res<()> {
        let a = node.inputs[0].as_str();
        let b = node.inputs.get(1).map(String::as_str).unwrap_or("");
        let c = node.inputs.get(2).map(String::as_str).unwrap_or("");
        let mut src = self.plain(a)?;
        if trans_a {
            let s = self.shape_of(a)?.1.clone();
            let t = self.tensor(
                &format!("{a}/t"),
                vec![s[1], s[0]],
                self.out.tensors[src].dtype,
            );
            self.transpose_op(src, t, &[1, 0]);
            src = t;
        }
        let Some(bt) = self.consts.get(b).cloned() else {
            return Err("Gemm with a computed B is not supported".into());
        };
        if bt.shape.len() != 2 || bt.dtype != DType::F32 {
            return Err("Gemm's B must be a 2-D f32 constant".into());
        }
        let n = if trans_b { bt.shape[0] } else { bt.shape[1] };
        let w = if trans_b && alpha == 1.0 {
            self.const_tensor(b, false)?
        } else {
            let mut data = if trans_b {
                bt.to_f32().map_err(|e| e.to_string())?
            } else {
                let t = transpose_bytes(bt.bytes(), &bt.shape, &[1, 0], 4);
                t.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            };
            data.iter_mut().for_each(|v| *v *= alpha);
            let k = data.len() / n.max(1);
            self.const_f32(&format!("{b}/fc"), vec![n, k], &data)
        };
        let bias = if c.is_empty() {
            None
        } else {
            let ct = self
                .consts
                .get(c)
                .cloned()
                .ok_or("Gemm's C must be constant")?;
            if ct.numel() == n && ct.shape.last() == Some(&n) && ct.dtype == DType::F32 {
                let mut v = ct.to_f32().map_err(|e| e.to_string())?;
                if beta == 1.0 && ct.shape.len() == 1 {
                    Some(self.const_tensor(c, false)?)
                } else {
                    v.iter_mut().for_each(|x| *x *= beta);
                    Some(self.const_f32(&format!("{c}/bias"), vec![n], &v))
                }
            } else {
                return Err(format!("Gemm's C {:?} is not a bias of {n}", ct.shape));
            }
        };
        let (id, act) = self.def_out(node, i, plan, false)?;
        self.out.add_op(
            B::FULLY_CONNECTED,
            vec![Some(src), Some(w), bias],
            vec![id],
            Options::FullyConnected {
                act,
                keep_num_dims: false,
                asymmetric_quantize_inputs: false,
            },
        );
        Ok(())
    }

    fn matmul(&mut self, node: &Node, i: usize, plan: &Plan) -> Res<()> {
        let a = node.inputs[0].as_str();
        let b = node.inputs[1].as_str();
        if self.is_fc_matmul(node) {
            let bt = self.consts.get(b).cloned().expect("checked");
            let wdata = transpose_bytes(bt.bytes(), &bt.shape, &[1, 0], 4);
            let w = self.constant(
                &format!("{b}/fc"),
                vec![bt.shape[1], bt.shape[0]],
                TensorType::FLOAT32,
                wdata,
            );
            let src = self.plain(a)?;
            let bias = match plan.bias.get(&i) {
                Some((c, _)) => {
                    let ct = self.consts.get(c).cloned().expect("checked in the plan");
                    let v = ct.to_f32().map_err(|e| e.to_string())?;
                    Some(self.const_f32(&format!("{c}/bias"), vec![v.len()], &v))
                }
                None => None,
            };
            let keep = self.rank(a)? > 2;
            let (id, act) = self.def_out(node, i, plan, false)?;
            self.out.add_op(
                B::FULLY_CONNECTED,
                vec![Some(src), Some(w), bias],
                vec![id],
                Options::FullyConnected {
                    act,
                    keep_num_dims: keep,
                    asymmetric_quantize_inputs: false,
                },
            );
            return Ok(());
        }
        if self.rank(a)? < 2 || self.rank(b)? < 2 {
            return Err("MatMul of 1-D operands is not supported".into());
        }
        let x = self.plain(a)?;
        let w = self.plain(b)?;
        let id = self.define(&node.outputs[0], false)?;
        self.out.add_op(
            B::BATCH_MATMUL,
            vec![Some(x), Some(w)],
            vec![id],
            Options::BatchMatMul {
                adj_x: false,
                adj_y: false,
            },
        );
        Ok(())
    }

    fn softmax(&mut self, node: &Node, axis: i64) -> Res<()> {
        let x = node.inputs[0].as_str();
        let y = node.outputs[0].clone();
        let r = self.rank(x)?;
        let a = norm_axis(axis, r as i64)?;
        if self.is_nhwc(x) && r == 4 && NHWC_POS[a] == 3 {
            let src = self.input(x)?.id;
            let id = self.define(&y, true)?;
            self.out.add_op(
                B::SOFTMAX,
                vec![Some(src)],
                vec![id],
                Options::Softmax { beta: 1.0 },
            );
            return Ok(());
        }
        let src = self.plain(x)?;
        if a + 1 == r {
            let id = self.define(&y, false)?;
            self.out.add_op(
                B::SOFTMAX,
                vec![Some(src)],
                vec![id],
                Options::Softmax { beta: 1.0 },
            );
            return Ok(());
        }
        // move the axis last, softmax, move it back
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(a, r - 1);
        let s = self.shape_of(x)?.1.clone();
        let dtype = self.out.tensors[src].dtype;
        let t = self.tensor(&format!("{y}/t"), permute(&s, &perm), dtype);
        self.transpose_op(src, t, &perm);
        let sm = self.tensor(&format!("{y}/softmax"), permute(&s, &perm), dtype);
        self.out.add_op(
            B::SOFTMAX,
            vec![Some(t)],
            vec![sm],
            Options::Softmax { beta: 1.0 },
        );
        let id = self.define(&y, false)?;
        self.transpose_op(sm, id, &perm);
        Ok(())
    }

    fn layer_norm(&mut self, node: &Node, axis: i64, eps: f32) -> Res<()> {
        let x = node.inputs[0].as_str();
        let y = node.outputs[0].clone();
        let r = self.rank(x)?;
        let a = norm_axis(axis, r as i64)?;
        let s = self.shape_of(x)?.1.clone();
        let src = self.plain(x)?;
        let axes: Vec<i32> = (a..r).map(|v| v as i32).collect();
        let mut reduced = s.clone();
        for d in reduced.iter_mut().skip(a) {
            *d = 1;
        }
        let ax = self.const_i32(&format!("{y}/axes"), &axes);
        let mean = self.plain_f32(B::MEAN, &[src, ax], &format!("{y}/mean"), reduced.clone());
        let d = self.plain_f32(B::SUB, &[src, mean], &format!("{y}/centered"), s.clone());
        let sq = self.plain_f32(B::MUL, &[d, d], &format!("{y}/squared"), s.clone());
        let var = self.plain_f32(
            B::MEAN,
            &[sq, ax],
            &format!("{y}/variance"),
            reduced.clone(),
        );
        let e = self.const_f32(&format!("{y}/epsilon"), vec![], &[eps]);
        let ve = self.plain_f32(
            B::ADD,
            &[var, e],
            &format!("{y}/variance_eps"),
            reduced.clone(),
        );
        let rs = self.plain_f32(B::RSQRT, &[ve], &format!("{y}/rstd"), reduced);
        // then × scale and + bias where given, the last step writing y
        let mut steps: Vec<(B, usize)> = Vec::new();
        for (k, code) in [(1, B::MUL), (2, B::ADD)] {
            if let Some(v) = node.inputs.get(k).filter(|v| !v.is_empty()) {
                steps.push((code, self.plain(v)?));
            }
        }
        let mut cur = (d, rs);
        let mut code = B::MUL;
        for (k, (next, c)) in steps.into_iter().enumerate() {
            let name = if k == 0 { "normalized" } else { "scaled" };
            let t = self.plain_f32(code, &[cur.0, cur.1], &format!("{y}/{name}"), s.clone());
            cur = (t, c);
            code = next;
        }
        let out = self.define(&y, false)?;
        self.plain_op(code, &[cur.0, cur.1], out);
        Ok(())
    }

    fn slice(&mut self, node: &Node) -> Res<()> {
        let x = node.inputs[0].as_str();
        let y = node.outputs[0].clone();
        let xs = self.shape_of(x)?.1.clone();
        let r = xs.len();
        let get = |k: usize| node.inputs.get(k).filter(|v| !v.is_empty()).cloned();
        let starts = self.ints(&get(1).ok_or("Slice needs starts")?)?;
        let ends = self.ints(&get(2).ok_or("Slice needs ends")?)?;
        let axes = match get(3) {
            Some(a) => self.ints(&a)?,
            None => (0..starts.len() as i64).collect(),
        };
        let steps = match get(4) {
            Some(s) => self.ints(&s)?,
            None => vec![1; starts.len()],
        };
        let mut begin = vec![0i32; r];
        let mut end: Vec<i32> = xs.iter().map(|&d| d as i32).collect();
        let mut stride = vec![1i32; r];
        for k in 0..starts.len() {
            let a = norm_axis(axes[k], r as i64)?;
            let dim = xs[a] as i64;
            let step = steps[k];
            if step <= 0 {
                return Err("Slice with steps ≤ 0 is not supported".into());
            }
            let clamp = |v: i64| (if v < 0 { v + dim } else { v }).clamp(0, dim);
            begin[a] = clamp(starts[k]) as i32;
            end[a] = clamp(ends[k]) as i32;
            stride[a] = step as i32;
        }
        let src = self.plain(x)?;
        let b = self.const_i32(&format!("{y}/begin"), &begin);
        let e = self.const_i32(&format!("{y}/end"), &end);
        let s = self.const_i32(&format!("{y}/strides"), &stride);
        let id = self.define(&y, false)?;
        self.out.add_op(
            B::STRIDED_SLICE,
            vec![Some(src), Some(b), Some(e), Some(s)],
            vec![id],
            Options::StridedSlice {
                begin_mask: 0,
                end_mask: 0,
                shrink_axis_mask: 0,
            },
        );
        Ok(())
    }
}

/// The options of an op written without a fused activation.
fn plain_options(code: B) -> Options {
    match code {
        B::ADD => Options::Add { act: Act::NONE },
        B::SUB => Options::Sub { act: Act::NONE },
        B::MUL => Options::Mul { act: Act::NONE },
        B::DIV => Options::Div { act: Act::NONE },
        B::MEAN | B::SUM => Options::Reducer { keep_dims: true },
        _ => Options::None,
    }
}

fn permute(shape: &[usize], perm: &[usize]) -> Vec<usize> {
    perm.iter().map(|&p| shape[p]).collect()
}

fn norm_axis(a: i64, rank: i64) -> Res<usize> {
    let v = if a < 0 { a + rank } else { a };
    if v < 0 || v >= rank.max(1) {
        return Err(format!("axis {a} is out of range for rank {rank}"));
    }
    Ok(v as usize)
}

/// TFLite padding for ONNX window pads on spatial dims `input`: SAME when
/// the pads are SAME's split (the odd pixel at the end), VALID when zero,
/// otherwise VALID after an explicit PAD of these `[top, left, bottom,
/// right]` pads. For pools, SAME averages and maxes over real pixels only.
fn padding_of(w: &Window, input: &[usize]) -> Res<(Padding, Option<Vec<usize>>)> {
    if w.pads.iter().all(|&p| p == 0) {
        return Ok((Padding::VALID, None));
    }
    let mut same = vec![0usize; 4];
    for k in 0..2 {
        let eff = w.kernel[k].saturating_sub(1) * w.dilations[k] + 1;
        let s = w.strides[k].max(1);
        let out = input[k].div_ceil(s);
        let total = (out.saturating_sub(1) * s + eff).saturating_sub(input[k]);
        same[k] = total / 2;
        same[k + 2] = total - total / 2;
    }
    if w.pads == same {
        return Ok((Padding::SAME, None));
    }
    Ok((Padding::VALID, Some(w.pads.clone())))
}
