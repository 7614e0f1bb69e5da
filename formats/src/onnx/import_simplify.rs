//! Import-time simplifications that need no evaluator: BatchNormalization
//! folded into the Conv before it, and the LayerNorm that torch exports as
//! nine elementwise nodes recognised as one op.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use edgec_core::{DType, Graph, Node, Op, Tensor};

use super::import_ops::Shape;
use super::import_tensor::Consts;
use crate::{FormatError, Result};

/// Who reads each value: (node index) once per input slot, plus graph outputs.
struct Uses<'a> {
    readers: HashMap<&'a str, Vec<usize>>,
    outputs: HashSet<&'a str>,
}

impl<'a> Uses<'a> {
    fn new(g: &'a Graph) -> Self {
        let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in g.nodes.iter().enumerate() {
            for inp in n.inputs.iter().filter(|s| !s.is_empty()) {
                readers.entry(inp).or_default().push(i);
            }
        }
        Uses {
            readers,
            outputs: g.outputs.iter().map(|v| v.name.as_str()).collect(),
        }
    }

    /// The one node reading `value` (once), when nothing else does.
    fn only(&self, value: &str) -> Option<usize> {
        if self.outputs.contains(value) {
            return None;
        }
        match self.readers.get(value).map(Vec::as_slice) {
            Some([i]) => Some(*i),
            _ => None,
        }
    }
}

/// Dense float values of a constant.
fn floats(t: &Tensor) -> Option<Vec<f32>> {
    matches!(t.dtype, DType::F32 | DType::F16 | DType::Bf16)
        .then(|| t.to_f32().ok())
        .flatten()
}

fn scalar(consts: &Consts, name: &str) -> Option<f32> {
    let t = consts.get(name)?;
    if t.numel() != 1 || matches!(t.dtype, DType::Ggml(_)) {
        return None;
    }
    t.to_f32().ok()?.first().copied()
}

/// A value name not used yet, from `base`.
fn fresh(taken: &mut HashSet<String>, base: &str) -> String {
    let mut name = base.to_string();
    let mut k = 1;
    while taken.contains(&name) {
        name = format!("{base}_{k}");
        k += 1;
    }
    taken.insert(name.clone());
    name
}

fn value_names(g: &Graph, consts: &Consts) -> HashSet<String> {
    let mut s: HashSet<String> = consts.list.iter().map(|t| t.name.clone()).collect();
    s.extend(g.inputs.iter().map(|v| v.name.clone()));
    s.extend(g.nodes.iter().flat_map(|n| n.outputs.iter().cloned()));
    s
}

/// Folds each BatchNorm whose input is a Conv output read by nothing else,
/// and whose weight and statistics are constant, into that Conv's weight
/// and bias (new f32 constants). Other BatchNorms stay.
pub(super) fn fold_batchnorm(path: &Path, g: &mut Graph, consts: &mut Consts) -> Result<()> {
    let mut taken = value_names(g, consts);
    let uses = Uses::new(g);
    // (conv index, bn index, new weight, new bias)
    let mut folds = Vec::new();
    for (j, bn) in g.nodes.iter().enumerate() {
        let Op::BatchNorm { epsilon } = bn.op else {
            continue;
        };
        let Some(i) = g
            .nodes
            .iter()
            .position(|n| n.outputs.first() == bn.inputs.first())
        else {
            continue;
        };
        let conv = &g.nodes[i];
        if !matches!(conv.op, Op::Conv { .. })
            || conv.outputs.len() != 1
            || uses.only(&conv.outputs[0]) != Some(j)
        {
            continue;
        }
        let Some(w) = consts.get(&conv.inputs[1]) else {
            continue;
        };
        let m = w.shape.first().copied().unwrap_or(0);
        let Some(wv) = floats(w).filter(|_| m > 0) else {
            continue;
        };
        let channel = |name: &str| consts.get(name).filter(|t| t.numel() == m).and_then(floats);
        let bias = match conv.inputs.get(2).filter(|b| !b.is_empty()) {
            Some(b) => match channel(b) {
                Some(v) => v,
                None => continue,
            },
            None => vec![0.0; m],
        };
        let stats: Option<Vec<Vec<f32>>> = bn.inputs[1..5].iter().map(|s| channel(s)).collect();
        let Some([scale, shift, mean, var]) = stats.and_then(|v| <[_; 4]>::try_from(v).ok()) else {
            continue;
        };
        let per = wv.len() / m;
        let k: Vec<f64> = (0..m)
            .map(|c| scale[c] as f64 / (var[c] as f64 + epsilon as f64).sqrt())
            .collect();
        let new_w: Vec<f32> = wv
            .iter()
            .enumerate()
            .map(|(e, &v)| (v as f64 * k[e / per]) as f32)
            .collect();
        let new_b: Vec<f32> = (0..m)
            .map(|c| ((bias[c] as f64 - mean[c] as f64) * k[c] + shift[c] as f64) as f32)
            .collect();
        let wname = fresh(&mut taken, &format!("{}_bn_weight", bn.name));
        let bname = fresh(&mut taken, &format!("{}_bn_bias", bn.name));
        let to_err = |e: edgec_core::Error| FormatError::invalid(path, e.to_string());
        let wt = Tensor::from_f32(wname, w.shape.clone(), new_w).map_err(to_err)?;
        let bt = Tensor::from_f32(bname, vec![m], new_b).map_err(to_err)?;
        folds.push((i, j, wt, bt));
    }
    let mut removed = HashSet::new();
    for (i, j, wt, bt) in folds {
        let out = g.nodes[j].outputs[0].clone();
        let conv = &mut g.nodes[i];
        conv.inputs = vec![conv.inputs[0].clone(), wt.name.clone(), bt.name.clone()];
        conv.outputs = vec![out];
        consts.insert(wt);
        consts.insert(bt);
        removed.insert(j);
    }
    remove_nodes(g, &removed);
    Ok(())
}

fn remove_nodes(g: &mut Graph, removed: &HashSet<usize>) {
    let mut k = 0;
    g.nodes.retain(|_| {
        k += 1;
        !removed.contains(&(k - 1))
    });
}

/// Replaces ReduceMean → Sub → Pow(2) → ReduceMean → Add(eps) → Sqrt → Div
/// → Mul(scale) [→ Add(bias)] over the last axis by one LayerNorm.
pub(super) fn fuse_layernorm(g: &mut Graph, consts: &Consts, shapes: &HashMap<String, Shape>) {
    let uses = Uses::new(g);
    let mut claimed = HashSet::new();
    // (nodes to remove, index to put the LayerNorm at, the LayerNorm)
    let mut fusions = Vec::new();
    for r1 in 0..g.nodes.len() {
        if let Some((nodes, ln)) = match_layernorm(g, consts, shapes, &uses, r1) {
            if nodes.iter().all(|i| !claimed.contains(i)) {
                claimed.extend(nodes.iter().copied());
                fusions.push((nodes, ln));
            }
        }
    }
    let mut removed = HashSet::new();
    for (nodes, ln) in fusions {
        let last = *nodes.last().expect("a match has nodes");
        g.nodes[last] = ln;
        removed.extend(nodes[..nodes.len() - 1].iter().copied());
    }
    remove_nodes(g, &removed);
}

/// The last-axis reduction a ReduceMean of the pattern must be.
fn last_axis_mean(op: &Op, rank: Option<usize>) -> bool {
    match op {
        Op::ReduceMean {
            axes,
            keep_dims: true,
        } => match axes.as_slice() {
            [-1] => true,
            [a] => rank.is_some_and(|r| r >= 1 && *a == r as i64 - 1),
            _ => false,
        },
        _ => false,
    }
}

fn match_layernorm(
    g: &Graph,
    consts: &Consts,
    shapes: &HashMap<String, Shape>,
    uses: &Uses,
    r1: usize,
) -> Option<(Vec<usize>, Node)> {
    let nodes = &g.nodes;
    let first = &nodes[r1];
    let x = first.inputs.first()?;
    let rank = shapes.get(x).map(Vec::len);
    if !last_axis_mean(&first.op, rank) {
        return None;
    }
    let out = |i: usize| nodes[i].outputs.first().map(String::as_str);
    // The one reader of node `i`'s output, with op `op`.
    let next = |i: usize, op: Op| {
        let j = uses.only(out(i)?)?;
        (std::mem::discriminant(&nodes[j].op) == std::mem::discriminant(&op)).then_some(j)
    };
    // For a commutative binary node reading `value`: its other input.
    let other = |j: usize, value: &str| -> Option<String> {
        match nodes[j].inputs.as_slice() {
            [a, b] if a == value => Some(b.clone()),
            [a, b] if b == value => Some(a.clone()),
            _ => None,
        }
    };
    let sub = next(r1, Op::Sub)?;
    let mean = out(r1)?;
    if nodes[sub].inputs != [x.as_str(), mean] {
        return None;
    }
    let d = out(sub)?;
    if uses.outputs.contains(d) {
        return None;
    }
    let (pow, div) = match uses.readers.get(d)?.as_slice() {
        [a, b] if nodes[*a].op == Op::Pow => (*a, *b),
        [a, b] => (*b, *a),
        _ => return None,
    };
    if nodes[pow].op != Op::Pow
        || nodes[div].op != Op::Div
        || nodes[pow].inputs.first().map(String::as_str) != Some(d)
        || scalar(consts, nodes[pow].inputs.get(1)?)? != 2.0
    {
        return None;
    }
    let r2 = next(
        pow,
        Op::ReduceMean {
            axes: vec![],
            keep_dims: true,
        },
    )?;
    if !last_axis_mean(&nodes[r2].op, rank) {
        return None;
    }
    let add_eps = next(r2, Op::Add)?;
    let epsilon = scalar(consts, &other(add_eps, out(r2)?)?)?;
    let sqrt = next(add_eps, Op::Sqrt)?;
    if uses.only(out(sqrt)?) != Some(div) || nodes[div].inputs != [d, out(sqrt)?] {
        return None;
    }
    let mul = next(div, Op::Mul)?;
    let scale = other(mul, out(div)?)?;
    let width = consts.get(&scale).filter(|t| t.shape.len() == 1)?.shape[0];
    let mut chain = vec![r1, sub, pow, r2, add_eps, sqrt, div, mul];
    let mut inputs = vec![x.clone(), scale];
    if let Some(add) = next(mul, Op::Add) {
        if let Some(bias) = other(add, out(mul)?) {
            if consts.get(&bias).is_some_and(|t| t.shape == [width]) {
                chain.push(add);
                inputs.push(bias);
            }
        }
    }
    let last_dim = shapes.get(x).and_then(|s| s.last().copied().flatten());
    if last_dim.is_some_and(|d| d != width) {
        return None;
    }
    let last = *chain.last()?;
    let ln = Node {
        name: first.name.clone(),
        op: Op::LayerNorm { axis: -1, epsilon },
        inputs,
        outputs: vec![out(last)?.to_string()],
    };
    // The LayerNorm takes the last node's place (it depends on all the
    // others, so it comes last): its inputs are defined by then, its
    // readers come after.
    chain.sort_unstable();
    (*chain.last()? == last).then_some((chain, ln))
}
