//! Channel dependency groups of a CNN graph, for structured channel pruning.
//!
//! A group is a set of channels that must be removed together: the output
//! channels of the Conv nodes that produce them, followed through ops that
//! keep the channel axis (activations, Clip, BatchNorm, pooling), through
//! depthwise Convs (one filter per channel: they share their producer's
//! channels, and their weights and bias shrink with them), and joined by
//! elementwise ops of two activations (a residual Add, a squeeze-excite
//! Mul: both operands' channels must be the same ones). Consumers that mix
//! channels lose input channels: a Conv's weight columns (axis 1) and,
//! behind GlobalAveragePool → Flatten, a Gemm's input columns.
//!
//! A group reaching anything else (a Reshape, a Concat, a graph output, a
//! grouped but not depthwise Conv, a weight shared by two nodes, a constant
//! operand that is not a scalar or per-channel) is left whole.

use std::collections::{BTreeSet, HashMap};

use edgec_core::graph::Op;
use edgec_core::{DType, Model, Tensor};

/// Channels that are removed together, and every tensor slice that follows.
#[derive(Clone, Debug, Default)]
pub struct Group {
    /// The number of channels.
    pub channels: usize,
    /// The weights of the Convs producing the channels (rows = channels).
    pub producers: Vec<String>,
    /// Constant tensors sliced along an axis when channels go: (name, axis).
    pub slices: Vec<(String, usize)>,
    /// Indices of depthwise Conv nodes whose `group` becomes the kept count.
    pub depthwise: Vec<usize>,
    /// Why the group cannot be pruned, if it cannot.
    pub blocked: Option<String>,
}

impl Group {
    pub fn prunable(&self) -> bool {
        self.blocked.is_none()
    }
}

#[derive(Default)]
struct Sets {
    parent: Vec<usize>,
    groups: Vec<Group>,
}

impl Sets {
    fn new_set(&mut self, g: Group) -> usize {
        self.parent.push(self.parent.len());
        self.groups.push(g);
        self.parent.len() - 1
    }
    fn blocked(&mut self, why: String) -> usize {
        self.new_set(Group {
            blocked: Some(why),
            ..Default::default()
        })
    }
    fn find(&mut self, mut a: usize) -> usize {
        while self.parent[a] != a {
            self.parent[a] = self.parent[self.parent[a]];
            a = self.parent[a];
        }
        a
    }
    fn union(&mut self, a: usize, b: usize) -> usize {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.parent[b] = a;
            let g = std::mem::take(&mut self.groups[b]);
            let t = &mut self.groups[a];
            t.producers.extend(g.producers);
            t.slices.extend(g.slices);
            t.depthwise.extend(g.depthwise);
            if t.blocked.is_none() {
                t.blocked = g.blocked;
            }
        }
        a
    }
    fn block(&mut self, a: usize, why: impl Into<String>) {
        let a = self.find(a);
        if self.groups[a].blocked.is_none() {
            self.groups[a].blocked = Some(why.into());
        }
    }
    fn group(&mut self, a: usize) -> &mut Group {
        let a = self.find(a);
        &mut self.groups[a]
    }
}

/// Ops that apply to each element and keep the channel axis.
fn passes_channels(op: &Op) -> bool {
    matches!(
        op,
        Op::Identity
            | Op::Relu
            | Op::Sigmoid
            | Op::Tanh
            | Op::Erf
            | Op::Exp
            | Op::Log
            | Op::Sqrt
            | Op::Reciprocal
            | Op::Neg
            | Op::Abs
            | Op::Clip
            | Op::HardSigmoid { .. }
            | Op::HardSwish
            | Op::Gelu { .. }
            | Op::GlobalAveragePool
            | Op::AveragePool { .. }
            | Op::MaxPool { .. }
    )
}

/// The channel dependency groups of `model`'s graph (empty without one).
/// Every group has at least one producing Conv; groups without one are
/// dropped.
pub fn find_groups(model: &Model) -> Vec<Group> {
    let Some(graph) = &model.graph else {
        return vec![];
    };
    let consts: HashMap<&str, &Tensor> =
        model.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &graph.nodes {
        for i in &n.inputs {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    let mut sets = Sets::default();
    // value -> (set, spatial dims are 1 (after a global pool))
    let mut values: HashMap<String, (usize, bool)> = HashMap::new();
    for i in &graph.inputs {
        let s = sets.blocked(format!("reaches graph input {}", i.name));
        values.insert(i.name.clone(), (s, false));
    }
    for (idx, node) in graph.nodes.iter().enumerate() {
        let name = &node.name;
        let input = |i: usize| node.inputs.get(i).and_then(|v| values.get(v)).copied();
        // a fresh blocked set for each output, the inputs' sets blocked
        let opaque = |sets: &mut Sets, values: &mut HashMap<String, (usize, bool)>, why: &str| {
            for v in &node.inputs {
                if let Some(&(s, _)) = values.get(v) {
                    sets.block(s, format!("read by {} ({why})", node.name));
                }
            }
            for o in &node.outputs {
                let s = sets.blocked(format!("made by {} ({why})", node.name));
                values.insert(o.clone(), (s, false));
            }
        };
        let out = node.outputs.first().cloned().unwrap_or_default();
        match &node.op {
            Op::Conv { group, .. } => {
                let w = node.inputs.get(1).and_then(|w| consts.get(w.as_str()));
                let Some(w) = w.filter(|w| w.shape.len() >= 3 && w.dtype == DType::F32) else {
                    opaque(
                        &mut sets,
                        &mut values,
                        "a conv without a constant f32 weight",
                    );
                    continue;
                };
                let bias = node.inputs.get(2).filter(|b| !b.is_empty()).cloned();
                let shared = uses.get(w.name.as_str()).copied().unwrap_or(0) > 1
                    || bias
                        .as_ref()
                        .is_some_and(|b| uses.get(b.as_str()).copied().unwrap_or(0) > 1);
                let m = w.shape[0];
                let x = input(0);
                if *group == 1 {
                    if let Some((s, _)) = x {
                        sets.group(s).slices.push((w.name.clone(), 1));
                        if shared {
                            sets.block(s, format!("{name}: weight shared"));
                        }
                    }
                    let mut g = Group {
                        channels: m,
                        producers: vec![w.name.clone()],
                        slices: vec![(w.name.clone(), 0)],
                        ..Default::default()
                    };
                    if let Some(b) = &bias {
                        g.slices.push((b.clone(), 0));
                    }
                    if shared {
                        g.blocked = Some(format!("{name}: weight shared"));
                    }
                    let s = sets.new_set(g);
                    values.insert(out, (s, false));
                } else if w.shape[1] == 1 && *group == m {
                    // depthwise, multiplier 1: the channels go through
                    let Some((s, _)) = x else {
                        opaque(&mut sets, &mut values, "depthwise on a non-channel value");
                        continue;
                    };
                    let g = sets.group(s);
                    g.slices.push((w.name.clone(), 0));
                    if let Some(b) = &bias {
                        g.slices.push((b.clone(), 0));
                    }
                    g.depthwise.push(idx);
                    if shared {
                        sets.block(s, format!("{name}: weight shared"));
                    }
                    values.insert(out, (s, false));
                } else {
                    opaque(&mut sets, &mut values, "a grouped conv");
                }
            }
            Op::BatchNorm { .. } => {
                let Some((s, flat)) = input(0) else {
                    opaque(&mut sets, &mut values, "BatchNorm");
                    continue;
                };
                for p in node.inputs.iter().skip(1).filter(|p| !p.is_empty()) {
                    sets.group(s).slices.push((p.clone(), 0));
                    if !consts.contains_key(p.as_str()) || uses.get(p.as_str()) != Some(&1) {
                        sets.block(s, format!("{name}: parameter {p} not a private constant"));
                    }
                }
                values.insert(out, (s, flat));
            }
            op if passes_channels(op) => {
                let Some((s, flat)) = input(0) else {
                    opaque(&mut sets, &mut values, "an op on a non-channel value");
                    continue;
                };
                // Clip's bounds: scalars
                for extra in node.inputs.iter().skip(1).filter(|v| !v.is_empty()) {
                    if consts.get(extra.as_str()).is_none_or(|t| t.numel() != 1) {
                        sets.block(s, format!("{name}: non-scalar operand {extra}"));
                    }
                }
                values.insert(out, (s, flat || matches!(op, Op::GlobalAveragePool)));
            }
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Max | Op::Min => {
                let mut joined: Option<usize> = None;
                let mut flat = true;
                let mut pending: Vec<(String, usize)> = Vec::new();
                let mut why: Option<String> = None;
                for v in &node.inputs {
                    if let Some(&(s, f)) = values.get(v) {
                        flat &= f;
                        joined = Some(match joined {
                            Some(j) => sets.union(j, s),
                            None => s,
                        });
                    } else if let Some(t) = consts.get(v.as_str()) {
                        if t.numel() == 1 {
                            continue;
                        }
                        // per-channel: [C, 1, 1] or [1, C, 1, 1]
                        let axis = match t.shape.as_slice() {
                            [_, 1, 1] => Some(0),
                            [1, _, 1, 1] => Some(1),
                            _ => None,
                        };
                        match axis {
                            Some(a)
                                if t.dtype == DType::F32 && uses.get(v.as_str()) == Some(&1) =>
                            {
                                pending.push((v.clone(), a))
                            }
                            _ => why = Some(format!("{name}: constant operand {v}")),
                        }
                    } else {
                        why = Some(format!("{name}: operand {v} without channels"));
                    }
                }
                let Some(s) = joined else {
                    opaque(&mut sets, &mut values, "constants only");
                    continue;
                };
                sets.group(s).slices.extend(pending);
                if let Some(w) = why {
                    sets.block(s, w);
                }
                values.insert(out, (s, flat));
            }
            Op::Flatten { axis: 1 } if input(0).is_some_and(|(_, flat)| flat) => {
                let (s, _) = input(0).expect("checked");
                values.insert(out, (s, true));
            }
            Op::Gemm {
                trans_a: false,
                trans_b,
                ..
            } if input(0).is_some_and(|(_, flat)| flat)
                && node
                    .inputs
                    .get(1)
                    .and_then(|b| consts.get(b.as_str()))
                    .is_some_and(|b| b.shape.len() == 2 && b.dtype == DType::F32) =>
            {
                let (s, _) = input(0).expect("checked");
                let b = &node.inputs[1];
                sets.group(s)
                    .slices
                    .push((b.clone(), if *trans_b { 1 } else { 0 }));
                if uses.get(b.as_str()) != Some(&1) {
                    sets.block(s, format!("{name}: weight shared"));
                }
                let o = sets.blocked(format!("made by {name} (Gemm)"));
                values.insert(out, (o, false));
            }
            _ => {
                let (n, _) = node.op.onnx_name();
                opaque(&mut sets, &mut values, n);
            }
        }
    }
    for o in &graph.outputs {
        if let Some(&(s, _)) = values.get(&o.name) {
            sets.block(s, format!("reaches graph output {}", o.name));
        }
    }
    // the roots, in order of their first set
    let roots: BTreeSet<usize> = (0..sets.parent.len()).map(|i| sets.find(i)).collect();
    let mut out = Vec::new();
    for r in roots {
        let mut g = std::mem::take(&mut sets.groups[r]);
        if g.producers.is_empty() {
            continue;
        }
        g.slices.sort();
        g.slices.dedup();
        g.depthwise.sort_unstable();
        g.depthwise.dedup();
        g.channels = consts[g.producers[0].as_str()].shape[0];
        if g.blocked.is_none() {
            for (t, axis) in &g.slices {
                let ok = consts.get(t.as_str()).is_some_and(|c| {
                    c.dtype == DType::F32 && c.shape.get(*axis) == Some(&g.channels)
                });
                if !ok {
                    g.blocked = Some(format!(
                        "{t}: axis {axis} is not the group's {} channels",
                        g.channels
                    ));
                    break;
                }
            }
        }
        out.push(g);
    }
    out
}

/// Data-free importance of each channel of a group: the sum over the
/// producing Convs of the L2 norm of the channel's filter.
pub fn channel_scores(model: &Model, group: &Group) -> Vec<f32> {
    let mut scores = vec![0f64; group.channels];
    for p in &group.producers {
        let Some(w) = model.tensor(p) else { continue };
        let Ok(v) = w.to_f32() else { continue };
        let row = v.len() / group.channels.max(1);
        for (c, s) in scores.iter_mut().enumerate() {
            *s += v[c * row..(c + 1) * row]
                .iter()
                .map(|x| (*x as f64) * (*x as f64))
                .sum::<f64>()
                .sqrt();
        }
    }
    scores.into_iter().map(|s| s as f32).collect()
}

/// How many of `channels` to keep when removing `fraction` of them: at
/// least one; a multiple of 8 (at least 8) when there are 16 or more, so
/// vector kernels stay full.
pub fn keep_count(channels: usize, fraction: f64) -> usize {
    let remove = (fraction * channels as f64).round() as usize;
    let keep = channels.saturating_sub(remove).max(1);
    if channels >= 16 {
        (((keep as f64) / 8.0).round() as usize * 8).clamp(8, channels)
    } else {
        keep
    }
}

/// `t` keeping only `keep` (sorted indices) along `axis`.
pub fn slice_axis(t: &Tensor, axis: usize, keep: &[usize]) -> edgec_core::Result<Tensor> {
    let v = t.to_f32()?;
    let outer: usize = t.shape[..axis].iter().product();
    let dim = t.shape[axis];
    let inner: usize = t.shape[axis + 1..].iter().product();
    let mut out = Vec::with_capacity(outer * keep.len() * inner);
    for o in 0..outer {
        for &k in keep {
            let start = (o * dim + k) * inner;
            out.extend_from_slice(&v[start..start + inner]);
        }
    }
    let mut shape = t.shape.clone();
    shape[axis] = keep.len();
    Tensor::from_f32(t.name.clone(), shape, out)
}

/// Removes every channel of `group` not in `keep` (sorted indices) from
/// `model`: the sliced tensors shrink, depthwise Convs' groups follow.
pub fn apply(model: &mut Model, group: &Group, keep: &[usize]) -> edgec_core::Result<()> {
    for (name, axis) in &group.slices {
        if let Some(t) = model.tensors.iter_mut().find(|t| &t.name == name) {
            *t = slice_axis(t, *axis, keep)?;
        }
    }
    if let Some(graph) = &mut model.graph {
        for &i in &group.depthwise {
            if let Op::Conv { group: g, .. } = &mut graph.nodes[i].op {
                *g = keep.len();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_counts() {
        assert_eq!(keep_count(10, 0.25), 7);
        assert_eq!(keep_count(4, 0.99), 1);
        assert_eq!(keep_count(32, 0.25), 24);
        assert_eq!(keep_count(16, 0.5), 8);
        assert_eq!(keep_count(16, 0.9), 8);
        assert_eq!(keep_count(96, 0.3), 64);
    }

    #[test]
    fn slices_an_axis() {
        let t = Tensor::from_f32("t", vec![2, 3, 2], (0..12).map(|v| v as f32).collect()).unwrap();
        let s = slice_axis(&t, 1, &[0, 2]).unwrap();
        assert_eq!(s.shape, vec![2, 2, 2]);
        assert_eq!(s.to_f32().unwrap(), vec![0., 1., 4., 5., 6., 7., 10., 11.]);
    }
}
