//! ONNX nodes into IR ops: attributes parsed and checked per op and opset,
//! constant axes inputs resolved into fields, `auto_pad` made explicit; and
//! the static shapes that needs, propagated through the ops where it is easy.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use edgec_core::{DType, Node, Op, PadMode, Tensor, Window};

use super::import_tensor::{dtype_of, ints_of, onnx_type_name, Consts, TensorReader};
use super::proto::{attribute_type as at, AttributeProto, NodeProto, TensorProto};
use crate::{FormatError, Result};

/// A value's shape where it is known statically: the rank, with `None` for
/// the dimensions that are not.
pub(super) type Shape = Vec<Option<usize>>;

/// Window sizes, strides and the like above this are refused: far beyond
/// any real model, and it keeps the window arithmetic from overflowing.
const MAX_WINDOW: i64 = u32::MAX as i64;

pub(super) struct Ctx<'a> {
    pub path: &'a Path,
    /// The default domain's opset.
    pub opset: i64,
    pub consts: &'a Consts,
    pub reader: &'a TensorReader<'a>,
    pub shapes: &'a HashMap<String, Shape>,
    /// Values that some node or graph output reads.
    pub used: &'a HashSet<String>,
    /// Every imported domain's opset, for messages.
    pub domains: &'a HashMap<String, i64>,
}

impl Ctx<'_> {
    pub fn shape(&self, name: &str) -> Option<Shape> {
        if let Some(t) = self.consts.get(name) {
            return Some(t.shape.iter().map(|&d| Some(d)).collect());
        }
        self.shapes.get(name).cloned()
    }
}

/// One node being converted: for error messages and input lookups.
struct Nx<'a> {
    ctx: &'a Ctx<'a>,
    p: &'a NodeProto,
    name: &'a str,
    /// Inputs with trailing absent ones dropped.
    inputs: Vec<String>,
}

impl Nx<'_> {
    fn err(&self, msg: impl std::fmt::Display) -> FormatError {
        FormatError::invalid(
            self.ctx.path,
            format!("node \"{}\" ({}): {msg}", self.name, self.p.op_type),
        )
    }

    /// Checks the input count and that required inputs are present.
    fn arity(&self, min: usize, max: usize) -> Result<()> {
        let n = self.inputs.len();
        if n < min || n > max {
            let want = if min == max {
                format!("{min}")
            } else if max == usize::MAX {
                format!("at least {min}")
            } else {
                format!("{min} to {max}")
            };
            return Err(self.err(format!("takes {want} inputs, has {n}")));
        }
        if let Some(i) = self.inputs[..min].iter().position(|s| s.is_empty()) {
            return Err(self.err(format!("required input {i} is empty")));
        }
        Ok(())
    }

    fn input(&self, i: usize) -> Option<&str> {
        self.inputs
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    fn shape(&self, i: usize) -> Option<Shape> {
        self.input(i).and_then(|n| self.ctx.shape(n))
    }

    fn rank(&self, i: usize) -> Option<usize> {
        self.shape(i).map(|s| s.len())
    }

    /// The constant at input `i`, or an error saying it must be one.
    fn constant(&self, i: usize, what: &str) -> Result<&Tensor> {
        let name = self.input(i).unwrap_or_default();
        self.ctx.consts.get(name).ok_or_else(|| {
            self.err(format!(
                "the {what} input {name:?} must be a constant (edgec resolves it at import)"
            ))
        })
    }

    fn const_ints(&self, i: usize, what: &str) -> Result<Vec<i64>> {
        let t = self.constant(i, what)?;
        match ints_of(t) {
            Some(v) if t.shape.len() <= 1 => Ok(v),
            _ => Err(self.err(format!(
                "the {what} input {} must be a 1-D INT64 tensor, is {} {:?}",
                t.name, t.dtype, t.shape
            ))),
        }
    }

    fn need_opset(&self, min: i64) -> Result<()> {
        if self.ctx.opset < min {
            return Err(self.err(format!(
                "{} needs opset {min}, the model declares {}",
                self.p.op_type, self.ctx.opset
            )));
        }
        Ok(())
    }
}

/// A node's attributes; each must be read (or explicitly ignored) by the
/// op's conversion, so that an attribute edgec does not know is an error
/// rather than silently changed semantics.
struct Attrs<'a> {
    list: &'a [AttributeProto],
    used: Vec<bool>,
}

impl<'a> Attrs<'a> {
    fn new(n: &Nx<'a>) -> Result<Self> {
        let list = &n.p.attribute[..];
        let mut seen = HashSet::new();
        for a in list {
            if !seen.insert(a.name.as_str()) {
                return Err(n.err(format!("attribute {} is given twice", a.name)));
            }
            if !a.ref_attr_name.is_empty() {
                return Err(n.err(format!(
                    "attribute {} refers to a function attribute ({}), which only function \
                     bodies may do",
                    a.name, a.ref_attr_name
                )));
            }
            if a.r#type == at::GRAPH
                || a.r#type == at::GRAPHS
                || a.g.is_some()
                || !a.graphs.is_empty()
            {
                return Err(n.err(format!(
                    "attribute {} holds a subgraph, which edgec does not import",
                    a.name
                )));
            }
        }
        Ok(Attrs {
            list,
            used: vec![false; list.len()],
        })
    }

    fn find(&mut self, n: &Nx, name: &str, ty: i32) -> Result<Option<&'a AttributeProto>> {
        let Some(i) = self.list.iter().position(|a| a.name == name) else {
            return Ok(None);
        };
        self.used[i] = true;
        let a = &self.list[i];
        if a.r#type != ty {
            return Err(n.err(format!(
                "attribute {name} should be of type {}, is {}",
                attr_type_name(ty),
                attr_type_name(a.r#type)
            )));
        }
        Ok(Some(a))
    }

    fn int(&mut self, n: &Nx, name: &str) -> Result<Option<i64>> {
        Ok(self.find(n, name, at::INT)?.map(|a| a.i))
    }

    fn float(&mut self, n: &Nx, name: &str) -> Result<Option<f32>> {
        Ok(self.find(n, name, at::FLOAT)?.map(|a| a.f))
    }

    fn ints(&mut self, n: &Nx, name: &str) -> Result<Option<&'a [i64]>> {
        Ok(self.find(n, name, at::INTS)?.map(|a| &a.ints[..]))
    }

    fn string(&mut self, n: &Nx, name: &str) -> Result<Option<String>> {
        match self.find(n, name, at::STRING)? {
            None => Ok(None),
            Some(a) => String::from_utf8(a.s.clone())
                .map(Some)
                .map_err(|_| n.err(format!("attribute {name} is not UTF-8"))),
        }
    }

    fn tensor(&mut self, n: &Nx, name: &str) -> Result<Option<&'a TensorProto>> {
        match self.find(n, name, at::TENSOR)? {
            None => Ok(None),
            Some(a) => {
                a.t.as_ref()
                    .map(Some)
                    .ok_or_else(|| n.err(format!("attribute {name} has no tensor")))
            }
        }
    }

    /// Attributes accepted that change nothing edgec computes.
    fn ignore(&mut self, names: &[&str]) {
        for (a, u) in self.list.iter().zip(self.used.iter_mut()) {
            if names.contains(&a.name.as_str()) {
                *u = true;
            }
        }
    }

    fn finish(self, n: &Nx) -> Result<()> {
        match self.used.iter().position(|u| !u) {
            Some(i) => Err(n.err(format!(
                "attribute {} is not supported (opset {})",
                self.list[i].name, n.ctx.opset
            ))),
            None => Ok(()),
        }
    }
}

fn attr_type_name(t: i32) -> &'static str {
    match t {
        at::FLOAT => "FLOAT",
        at::INT => "INT",
        at::STRING => "STRING",
        at::TENSOR => "TENSOR",
        at::GRAPH => "GRAPH",
        at::FLOATS => "FLOATS",
        at::INTS => "INTS",
        at::STRINGS => "STRINGS",
        at::TENSORS => "TENSORS",
        at::GRAPHS => "GRAPHS",
        _ => "UNDEFINED",
    }
}

fn flag(v: Option<i64>, default: bool) -> bool {
    v.map_or(default, |v| v != 0)
}

/// Converts one (non-Constant) node. `name` is the node's name, made up
/// when the file has none.
pub(super) fn convert(ctx: &Ctx, p: &NodeProto, name: &str) -> Result<Node> {
    let mut inputs = p.input.clone();
    while inputs.last().is_some_and(|s| s.is_empty()) {
        inputs.pop();
    }
    let n = Nx {
        ctx,
        p,
        name,
        inputs,
    };
    let op_type = p.op_type.as_str();
    match p.domain.as_str() {
        "" | "ai.onnx" => {}
        "com.microsoft" if op_type == "MatMulNBits" => {}
        d => {
            let opset = match ctx.domains.get(d) {
                Some(v) => format!("opset {v}"),
                None => "not imported by the model".into(),
            };
            return Err(FormatError::invalid(
                ctx.path,
                format!("unsupported op {op_type} in node \"{name}\" (domain {d}, {opset})"),
            ));
        }
    }
    if matches!(op_type, "If" | "Loop" | "Scan") {
        return Err(n.err(format!(
            "{op_type} carries subgraphs, which edgec does not import (ops with subgraphs: \
             If, Loop, Scan)"
        )));
    }
    let mut a = Attrs::new(&n)?;
    let mut inputs = n.inputs.clone();
    // How many outputs the IR op has; further ones must be unused.
    let mut n_out = 1;
    let op = match op_type {
        "Identity" | "Relu" | "Sigmoid" | "Tanh" | "Erf" | "Exp" | "Log" | "Sqrt"
        | "Reciprocal" | "Neg" | "Abs" | "IsNaN" | "Not" | "HardSwish" => {
            n.arity(1, 1)?;
            match op_type {
                "Identity" => Op::Identity,
                "Relu" => Op::Relu,
                "Sigmoid" => Op::Sigmoid,
                "Tanh" => Op::Tanh,
                "Erf" => Op::Erf,
                "Exp" => Op::Exp,
                "Log" => Op::Log,
                "Sqrt" => Op::Sqrt,
                "Reciprocal" => Op::Reciprocal,
                "Neg" => Op::Neg,
                "Abs" => Op::Abs,
                "IsNaN" => Op::IsNaN,
                "Not" => Op::Not,
                _ => {
                    n.need_opset(14)?;
                    Op::HardSwish
                }
            }
        }
        "Dropout" => {
            // Inference: the identity, as long as training mode is off.
            n.arity(1, 3)?;
            if n.input(2).is_some() {
                let t = n.constant(2, "training_mode")?;
                if t.bytes().iter().any(|&b| b != 0) {
                    return Err(n.err("training_mode is true; edgec imports inference graphs"));
                }
            }
            // ratio is an attribute at opset 11 and scales nothing at inference.
            a.ignore(&["seed", "ratio"]);
            inputs.truncate(1);
            Op::Identity
        }
        "Clip" => {
            n.arity(1, 3)?;
            for (i, what) in [(1, "min"), (2, "max")] {
                if n.input(i).is_some() {
                    let t = n.constant(i, what)?;
                    if t.numel() != 1 {
                        return Err(n.err(format!(
                            "the {what} input {} must be a scalar, has shape {:?}",
                            t.name, t.shape
                        )));
                    }
                }
            }
            Op::Clip
        }
        "HardSigmoid" => {
            n.arity(1, 1)?;
            Op::HardSigmoid {
                alpha: a.float(&n, "alpha")?.unwrap_or(0.2),
                beta: a.float(&n, "beta")?.unwrap_or(0.5),
            }
        }
        "Gelu" => {
            n.need_opset(20)?;
            n.arity(1, 1)?;
            let tanh = match a.string(&n, "approximate")?.as_deref() {
                None | Some("none") => false,
                Some("tanh") => true,
                Some(s) => return Err(n.err(format!("unknown approximate {s:?}"))),
            };
            Op::Gelu { tanh }
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Equal" | "Greater" | "Less" | "GreaterOrEqual"
        | "LessOrEqual" | "And" | "Or" => {
            n.arity(2, 2)?;
            match op_type {
                "Add" => Op::Add,
                "Sub" => Op::Sub,
                "Mul" => Op::Mul,
                "Div" => Op::Div,
                "Pow" => Op::Pow,
                "Equal" => Op::Equal,
                "Greater" => Op::Greater,
                "Less" => Op::Less,
                "GreaterOrEqual" => Op::GreaterOrEqual,
                "LessOrEqual" => Op::LessOrEqual,
                "And" => Op::And,
                _ => Op::Or,
            }
        }
        "Max" | "Min" => {
            n.arity(1, usize::MAX)?;
            if n.inputs.iter().any(String::is_empty) {
                return Err(n.err("an input is empty"));
            }
            if op_type == "Max" {
                Op::Max
            } else {
                Op::Min
            }
        }
        // Sum of one or two inputs is Identity or Add.
        "Sum" => {
            n.arity(1, 2)?;
            if n.inputs.len() == 1 {
                Op::Identity
            } else {
                Op::Add
            }
        }
        "Where" => {
            n.arity(3, 3)?;
            Op::Where
        }
        "MatMul" => {
            n.arity(2, 2)?;
            Op::MatMul
        }
        "Gemm" => {
            n.arity(2, 3)?;
            Op::Gemm {
                alpha: a.float(&n, "alpha")?.unwrap_or(1.0),
                beta: a.float(&n, "beta")?.unwrap_or(1.0),
                trans_a: flag(a.int(&n, "transA")?, false),
                trans_b: flag(a.int(&n, "transB")?, false),
            }
        }
        "Conv" => {
            n.arity(2, 3)?;
            let group = a.int(&n, "group")?.unwrap_or(1);
            if !(1..=MAX_WINDOW).contains(&group) {
                return Err(n.err(format!("group {group} is out of range")));
            }
            let group = group as usize;
            let w = n.shape(1);
            let window = window(&n, &mut a, true)?;
            if let (Some(w), Some(x)) = (&w, n.shape(0)) {
                if let (Some(Some(c)), Some(Some(wc))) = (x.get(1), w.get(1)) {
                    if wc.checked_mul(group) != Some(*c) {
                        return Err(n.err(format!(
                            "the input has {c} channels, the weight {wc} per group × {group} groups"
                        )));
                    }
                }
            }
            if let Some(Some(m)) = w.as_ref().and_then(|w| w.first()) {
                if m % group != 0 {
                    return Err(n.err(format!(
                        "{m} output channels do not divide into {group} groups"
                    )));
                }
            }
            Op::Conv { window, group }
        }
        "BatchNormalization" => {
            n.arity(5, 5)?;
            if flag(a.int(&n, "training_mode")?, false) {
                return Err(n.err("training_mode is set; edgec imports inference graphs"));
            }
            a.ignore(&["momentum"]);
            Op::BatchNorm {
                epsilon: a.float(&n, "epsilon")?.unwrap_or(1e-5),
            }
        }
        "LayerNormalization" => {
            n.need_opset(17)?;
            n.arity(2, 3)?;
            // stash_type is the precision of the mean and variance; edgec
            // computes them in f32 at least either way.
            a.ignore(&["stash_type"]);
            Op::LayerNorm {
                axis: a.int(&n, "axis")?.unwrap_or(-1),
                epsilon: a.float(&n, "epsilon")?.unwrap_or(1e-5),
            }
        }
        "Softmax" => {
            n.arity(1, 1)?;
            softmax(&n, &mut a)?
        }
        "GlobalAveragePool" => {
            n.arity(1, 1)?;
            Op::GlobalAveragePool
        }
        "AveragePool" | "MaxPool" => {
            n.arity(1, 1)?;
            let count_include_pad = if op_type == "AveragePool" {
                flag(a.int(&n, "count_include_pad")?, false)
            } else {
                // storage_order only shapes the Indices output, unused here.
                a.ignore(&["storage_order"]);
                false
            };
            let mut window = window(&n, &mut a, false)?;
            if flag(a.int(&n, "ceil_mode")?, false) {
                ceil_mode(&n, &mut window, count_include_pad)?;
            }
            if op_type == "AveragePool" {
                Op::AveragePool {
                    window,
                    count_include_pad,
                }
            } else {
                Op::MaxPool { window }
            }
        }
        "ReduceMean" | "ReduceSum" => {
            let since = if op_type == "ReduceMean" { 18 } else { 13 };
            match reduce(&n, &mut a, &mut inputs, since)? {
                None => Op::Identity,
                Some((axes, keep_dims)) if op_type == "ReduceMean" => {
                    Op::ReduceMean { axes, keep_dims }
                }
                Some((axes, keep_dims)) => Op::ReduceSum { axes, keep_dims },
            }
        }
        "Reshape" => {
            n.arity(2, 2)?;
            Op::Reshape {
                allow_zero: flag(a.int(&n, "allowzero")?, false),
            }
        }
        "Flatten" => {
            n.arity(1, 1)?;
            Op::Flatten {
                axis: a.int(&n, "axis")?.unwrap_or(1),
            }
        }
        "Transpose" => {
            n.arity(1, 1)?;
            let rank = n.rank(0);
            let perm: Vec<usize> = match a.ints(&n, "perm")? {
                Some(p) => {
                    let mut seen = vec![false; p.len()];
                    for &v in p {
                        let ok = usize::try_from(v).ok().filter(|&i| i < p.len());
                        match ok {
                            Some(i) if !seen[i] => seen[i] = true,
                            _ => return Err(n.err(format!("perm {p:?} is not a permutation"))),
                        }
                    }
                    if rank.is_some_and(|r| r != p.len()) {
                        return Err(n.err(format!(
                            "perm {p:?} does not match the input's rank {}",
                            rank.unwrap_or_default()
                        )));
                    }
                    p.iter().map(|&v| v as usize).collect()
                }
                None => match rank {
                    Some(r) => (0..r).rev().collect(),
                    None => {
                        return Err(n.err(
                            "perm is absent and the input's rank is unknown (the default \
                             reverses the dimensions)",
                        ))
                    }
                },
            };
            Op::Transpose { perm }
        }
        "Concat" => {
            n.arity(1, usize::MAX)?;
            if n.inputs.iter().any(String::is_empty) {
                return Err(n.err("an input is empty"));
            }
            let axis = a
                .int(&n, "axis")?
                .ok_or_else(|| n.err("attribute axis is required"))?;
            Op::Concat { axis }
        }
        "Unsqueeze" | "Squeeze" => {
            let axes = if ctx.opset >= 13 {
                if op_type == "Unsqueeze" {
                    n.arity(2, 2)?;
                } else {
                    n.arity(1, 2)?;
                }
                let axes = match n.input(1) {
                    Some(_) => n.const_ints(1, "axes")?,
                    None => vec![],
                };
                inputs.truncate(1);
                axes
            } else {
                n.arity(1, 1)?;
                let axes = a.ints(&n, "axes")?;
                if op_type == "Unsqueeze" && axes.is_none() {
                    return Err(n.err("attribute axes is required"));
                }
                axes.unwrap_or_default().to_vec()
            };
            if op_type == "Unsqueeze" {
                if axes.is_empty() {
                    return Err(n.err("axes is empty"));
                }
                Op::Unsqueeze { axes }
            } else {
                Op::Squeeze { axes }
            }
        }
        "Shape" => {
            n.arity(1, 1)?;
            Op::Shape {
                start: a.int(&n, "start")?.unwrap_or(0),
                end: a.int(&n, "end")?,
            }
        }
        "Gather" => {
            n.arity(2, 2)?;
            Op::Gather {
                axis: a.int(&n, "axis")?.unwrap_or(0),
            }
        }
        "GatherND" => {
            n.arity(2, 2)?;
            let b = a.int(&n, "batch_dims")?.unwrap_or(0);
            let batch_dims =
                usize::try_from(b).map_err(|_| n.err(format!("batch_dims {b} is negative")))?;
            Op::GatherND { batch_dims }
        }
        "Slice" => {
            n.arity(3, 5)?;
            Op::Slice
        }
        "Expand" => {
            n.arity(2, 2)?;
            Op::Expand
        }
        "Range" => {
            n.arity(3, 3)?;
            Op::Range
        }
        "Cast" => {
            n.arity(1, 1)?;
            let to = a
                .int(&n, "to")?
                .ok_or_else(|| n.err("attribute to is required"))?;
            a.ignore(&["saturate"]);
            let code = i32::try_from(to).unwrap_or(-1);
            let to = dtype_of(code).ok_or_else(|| {
                n.err(format!("Cast to {} is not supported", onnx_type_name(code)))
            })?;
            Op::Cast { to }
        }
        "Pad" => {
            n.arity(2, 4)?;
            if n.input(3).is_some() {
                return Err(n.err("the axes input of Pad is not supported"));
            }
            let mode = match a.string(&n, "mode")?.as_deref() {
                None | Some("constant") => PadMode::Constant,
                Some("reflect") => PadMode::Reflect,
                Some("edge") => PadMode::Edge,
                Some(m) => return Err(n.err(format!("pad mode {m:?} is not supported"))),
            };
            Op::Pad { mode }
        }
        "ConstantOfShape" => {
            n.arity(1, 1)?;
            let (dtype, value) = match a.tensor(&n, "value")? {
                None => (DType::F32, 0.0),
                Some(t) => {
                    let t = ctx.reader.read(t, None, &format!("{name}.value"))?;
                    match scalar_f64(&t) {
                        Some(v) if t.numel() == 1 => (t.dtype, v),
                        _ => {
                            return Err(n.err(format!(
                                "value must hold one element, has shape {:?}",
                                t.shape
                            )))
                        }
                    }
                }
            };
            Op::ConstantOfShape { dtype, value }
        }
        "QuantizeLinear" => {
            n.arity(2, 3)?;
            a.ignore(&["saturate"]);
            let axis = a.int(&n, "axis")?.unwrap_or(1);
            let block_size = block_size(&n, &mut a)?;
            let mut out = DType::U8;
            if let Some(code) = a.int(&n, "output_dtype")? {
                n.need_opset(21)?;
                if code != 0 {
                    let code = i32::try_from(code).unwrap_or(-1);
                    out = dtype_of(code).ok_or_else(|| {
                        n.err(format!(
                            "output_dtype {} is not supported",
                            onnx_type_name(code)
                        ))
                    })?;
                }
            }
            if let Some(zp) = n.input(2).and_then(|z| ctx.consts.get(z)) {
                out = zp.dtype;
            }
            if !matches!(out, DType::U8 | DType::I8) {
                return Err(n.err(format!("quantizing to {out} is not supported")));
            }
            Op::QuantizeLinear {
                axis,
                block_size,
                out,
            }
        }
        "DequantizeLinear" => {
            n.arity(2, 3)?;
            Op::DequantizeLinear {
                axis: a.int(&n, "axis")?.unwrap_or(1),
                block_size: block_size(&n, &mut a)?,
            }
        }
        "DynamicQuantizeLinear" => {
            n.arity(1, 1)?;
            n_out = 3;
            Op::DynamicQuantizeLinear
        }
        "MatMulInteger" => {
            n.arity(2, 4)?;
            Op::MatMulInteger
        }
        "MatMulNBits" => matmul_nbits(&n, &mut a)?,
        _ => {
            return Err(FormatError::invalid(
                ctx.path,
                format!(
                    "unsupported op {op_type} in node \"{name}\" (opset {})",
                    ctx.opset
                ),
            ))
        }
    };
    a.finish(&n)?;
    let outputs = outputs(&n, n_out)?;
    Ok(Node {
        name: name.to_string(),
        op,
        inputs,
        outputs,
    })
}

/// The node's outputs, up to the `n_out` the IR op has: further ones (a
/// BatchNorm's running statistics, a LayerNorm's mean, a MaxPool's indices,
/// a Dropout's mask) are dropped when nothing reads them.
fn outputs(n: &Nx, n_out: usize) -> Result<Vec<String>> {
    let mut outs = n.p.output.clone();
    while outs.last().is_some_and(|s| s.is_empty()) {
        outs.pop();
    }
    if outs.first().is_none_or(|o| o.is_empty()) {
        return Err(n.err("has no output"));
    }
    if outs.len() > n_out {
        if let Some(extra) = outs[n_out..]
            .iter()
            .find(|o| !o.is_empty() && n.ctx.used.contains(*o))
        {
            return Err(n.err(format!(
                "output {extra:?} is read by the graph, but edgec supports only the first {n_out} \
                 output(s) of {}",
                n.p.op_type
            )));
        }
        outs.truncate(n_out);
    }
    Ok(outs)
}

fn softmax(n: &Nx, a: &mut Attrs) -> Result<Op> {
    if n.ctx.opset >= 13 {
        return Ok(Op::Softmax {
            axis: a.int(n, "axis")?.unwrap_or(-1),
        });
    }
    // Before opset 13 Softmax flattens to 2-D at `axis` and normalises the
    // whole trailing block: the same as the later op only over the last axis.
    let axis = a.int(n, "axis")?.unwrap_or(1);
    let rank = n.rank(0);
    let last = axis == -1 || rank.is_some_and(|r| r >= 1 && (axis == r as i64 - 1));
    if !last {
        return Err(n.err(format!(
            "Softmax before opset 13 normalises over all dimensions from axis {axis} on; edgec \
             supports it only when that is the last axis (input rank {})",
            rank.map_or("unknown".into(), |r| r.to_string())
        )));
    }
    Ok(Op::Softmax { axis })
}

/// Axes and keepdims of a reduction; None when it is a no-op
/// (`noop_with_empty_axes` with no axes). `since` is the opset from which
/// axes are an input.
fn reduce(
    n: &Nx,
    a: &mut Attrs,
    inputs: &mut Vec<String>,
    since: i64,
) -> Result<Option<(Vec<i64>, bool)>> {
    let keep_dims = flag(a.int(n, "keepdims")?, true);
    if n.ctx.opset < since {
        n.arity(1, 1)?;
        let axes = a.ints(n, "axes")?.unwrap_or_default().to_vec();
        return Ok(Some((axes, keep_dims)));
    }
    n.arity(1, 2)?;
    let noop = flag(a.int(n, "noop_with_empty_axes")?, false);
    let axes = match n.input(1) {
        Some(_) => n.const_ints(1, "axes")?,
        None => vec![],
    };
    inputs.truncate(1);
    if axes.is_empty() && noop {
        return Ok(None);
    }
    Ok(Some((axes, keep_dims)))
}

fn block_size(n: &Nx, a: &mut Attrs) -> Result<usize> {
    match a.int(n, "block_size")? {
        None | Some(0) => Ok(0),
        Some(b) => {
            n.need_opset(21)?;
            if !(1..=MAX_WINDOW).contains(&b) {
                return Err(n.err(format!("block_size {b} is out of range")));
            }
            Ok(b as usize)
        }
    }
}

fn matmul_nbits(n: &Nx, a: &mut Attrs) -> Result<Op> {
    n.arity(3, 6)?;
    if n.input(4).is_some() || n.input(5).is_some() {
        return Err(n.err("the g_idx and bias inputs of MatMulNBits are not supported"));
    }
    a.ignore(&["accuracy_level"]);
    let mut get = |name: &str| -> Result<usize> {
        let v = a
            .int(n, name)?
            .ok_or_else(|| n.err(format!("attribute {name} is required")))?;
        if !(1..=MAX_WINDOW).contains(&v) {
            return Err(n.err(format!("attribute {name} = {v} is out of range")));
        }
        Ok(v as usize)
    };
    let (k, cols, block_size) = (get("K")?, get("N")?, get("block_size")?);
    let bits = match a.int(n, "bits")? {
        None => 4,
        Some(b @ 2..=8) => b as usize,
        Some(b) => return Err(n.err(format!("bits {b} is not supported (2 to 8)"))),
    };
    if block_size < 16 || !block_size.is_power_of_two() {
        return Err(n.err(format!(
            "block_size {block_size} is not a power of two of at least 16"
        )));
    }
    if let Some(b) = n.input(1).and_then(|b| n.ctx.consts.get(b)) {
        let want = [cols, k.div_ceil(block_size), block_size * bits / 8];
        if b.dtype != DType::U8 || b.shape != want {
            return Err(n.err(format!(
                "packed weight {} is {} {:?}, K={k} N={cols} bits={bits} block_size={block_size} \
                 need U8 {want:?}",
                b.name, b.dtype, b.shape
            )));
        }
    }
    Ok(Op::MatMulNBits {
        k,
        n: cols,
        bits,
        block_size,
    })
}

fn scalar_f64(t: &Tensor) -> Option<f64> {
    let b = t.bytes();
    Some(match t.dtype {
        DType::I64 => i64::from_le_bytes(b.get(..8)?.try_into().ok()?) as f64,
        DType::I32 => i32::from_le_bytes(b.get(..4)?.try_into().ok()?) as f64,
        DType::Ggml(_) => return None,
        _ => *t.to_f32().ok()?.first()? as f64,
    })
}

/// A non-negative window attribute value.
fn win_value(n: &Nx, what: &str, v: i64, min: i64) -> Result<usize> {
    if !(min..=MAX_WINDOW).contains(&v) {
        return Err(n.err(format!("{what} value {v} is out of range")));
    }
    Ok(v as usize)
}

fn win_list(
    n: &Nx,
    a: &mut Attrs,
    what: &str,
    len: usize,
    min: i64,
    default: usize,
) -> Result<Vec<usize>> {
    match a.ints(n, what)? {
        None => Ok(vec![default; len]),
        Some(v) if v.len() != len => Err(n.err(format!(
            "{what} {v:?} should have {len} values, one per spatial dimension{}",
            if what == "pads" { " begin and end" } else { "" }
        ))),
        Some(v) => v.iter().map(|&x| win_value(n, what, x, min)).collect(),
    }
}

/// The window of a Conv (kernel from the weight when not given) or pool,
/// with `auto_pad` resolved into explicit pads.
fn window(n: &Nx, a: &mut Attrs, conv: bool) -> Result<Window> {
    let weight_kernel = if conv {
        n.shape(1)
            .filter(|w| w.len() >= 3)
            .and_then(|w| w[2..].iter().copied().collect::<Option<Vec<usize>>>())
    } else {
        None
    };
    let kernel: Vec<usize> = match (a.ints(n, "kernel_shape")?, weight_kernel) {
        (Some(k), w) => {
            let k = k
                .iter()
                .map(|&v| win_value(n, "kernel_shape", v, 1))
                .collect::<Result<Vec<_>>>()?;
            if let Some(w) = w {
                if w != k {
                    return Err(n.err(format!(
                        "kernel_shape {k:?} does not match the weight's kernel {w:?}"
                    )));
                }
            }
            k
        }
        (None, Some(w)) => w,
        (None, None) if conv => {
            return Err(n.err("kernel_shape is absent and the weight's shape is unknown"))
        }
        (None, None) => return Err(n.err("attribute kernel_shape is required")),
    };
    let dims = kernel.len();
    if dims == 0 || kernel.contains(&0) {
        return Err(n.err(format!("kernel {kernel:?} is empty")));
    }
    let x = n.shape(0);
    if let Some(x) = &x {
        if x.len() != dims + 2 {
            return Err(n.err(format!(
                "a {dims}-D window needs a rank-{} input, the input has rank {}",
                dims + 2,
                x.len()
            )));
        }
    }
    let strides = win_list(n, a, "strides", dims, 1, 1)?;
    let dilations = win_list(n, a, "dilations", dims, 1, 1)?;
    let given_pads = a.ints(n, "pads")?.is_some();
    let pads = win_list(n, a, "pads", 2 * dims, 0, 0)?;
    let auto_pad = a.string(n, "auto_pad")?.unwrap_or_else(|| "NOTSET".into());
    let pads = match auto_pad.as_str() {
        "NOTSET" => pads,
        "VALID" | "SAME_UPPER" | "SAME_LOWER" if given_pads && pads.iter().any(|&p| p != 0) => {
            return Err(n.err(format!("pads and auto_pad {auto_pad} are both given")))
        }
        "VALID" => vec![0; 2 * dims],
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut p = vec![0; 2 * dims];
            for i in 0..dims {
                let eff = (kernel[i] - 1) * dilations[i] + 1;
                // With stride 1 the output is as large as the input whatever
                // its size; otherwise the padding depends on that size.
                let total = if strides[i] == 1 {
                    eff - 1
                } else {
                    let size = x.as_ref().and_then(|x| x[2 + i]).ok_or_else(|| {
                        n.err(format!(
                            "auto_pad {auto_pad} with stride {} needs the input's spatial size, \
                             which is not known statically",
                            strides[i]
                        ))
                    })?;
                    let out = size.div_ceil(strides[i]);
                    ((out.max(1) - 1).saturating_mul(strides[i]))
                        .saturating_add(eff)
                        .saturating_sub(size)
                };
                let small = total / 2;
                let (begin, end) = if auto_pad == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                p[i] = begin;
                p[dims + i] = end;
            }
            p
        }
        other => return Err(n.err(format!("unknown auto_pad {other:?}"))),
    };
    let w = Window {
        kernel,
        strides,
        pads,
        dilations,
    };
    if let Some(x) = &x {
        for i in 0..dims {
            if let Some(size) = x[2 + i] {
                let eff = (w.kernel[i] - 1) * w.dilations[i] + 1;
                let padded = size.saturating_add(w.pads[i] + w.pads[dims + i]);
                if padded < eff {
                    return Err(n.err(format!(
                        "the window ({eff} wide) is larger than the padded input ({padded} wide) \
                         in spatial dimension {i}"
                    )));
                }
            }
        }
    }
    Ok(w)
}

/// `ceil_mode`: the output rounds up. Expressed as extra end padding, which
/// a max pool ignores and an average pool that excludes padding does too.
fn ceil_mode(n: &Nx, w: &mut Window, count_include_pad: bool) -> Result<()> {
    let dims = w.kernel.len();
    let x = n.shape(0);
    for i in 0..dims {
        let size = x.as_ref().and_then(|x| x[2 + i]).ok_or_else(|| {
            n.err("ceil_mode needs the input's spatial size, which is not known statically")
        })?;
        let eff = (w.kernel[i] - 1) * w.dilations[i] + 1;
        let padded = size.saturating_add(w.pads[i] + w.pads[dims + i]);
        let s = w.strides[i];
        let mut out = padded.saturating_sub(eff).div_ceil(s) + 1;
        // A window may not start in the end padding.
        if out > 1 && (out - 1).saturating_mul(s) >= size.saturating_add(w.pads[i]) {
            out -= 1;
        }
        let extra = ((out - 1).saturating_mul(s))
            .saturating_add(eff)
            .saturating_sub(padded);
        if extra > 0 {
            if count_include_pad {
                return Err(n.err(
                    "ceil_mode with count_include_pad changes the divisor of the last windows, \
                     which edgec does not represent",
                ));
            }
            w.pads[dims + i] += extra;
        }
    }
    Ok(())
}

/// The statically known shapes of a node's outputs (None where unknown).
pub(super) fn infer(ctx: &Ctx, node: &Node) -> Vec<Option<Shape>> {
    let s = |i: usize| {
        node.inputs
            .get(i)
            .filter(|n| !n.is_empty())
            .and_then(|n| ctx.shape(n))
    };
    let out0 = match &node.op {
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
        | Op::IsNaN
        | Op::Not
        | Op::Clip
        | Op::HardSigmoid { .. }
        | Op::HardSwish
        | Op::Gelu { .. }
        | Op::BatchNorm { .. }
        | Op::LayerNorm { .. }
        | Op::Softmax { .. }
        | Op::Cast { .. }
        | Op::QuantizeLinear { .. }
        | Op::DequantizeLinear { .. }
        | Op::DynamicQuantizeLinear => s(0),
        Op::Add
        | Op::Sub
        | Op::Mul
        | Op::Div
        | Op::Pow
        | Op::Equal
        | Op::Greater
        | Op::Less
        | Op::GreaterOrEqual
        | Op::LessOrEqual
        | Op::And
        | Op::Or
        | Op::Max
        | Op::Min
        | Op::Where => (0..node.inputs.len())
            .map(s)
            .collect::<Option<Vec<_>>>()
            .and_then(|v| broadcast(&v)),
        Op::MatMul => matmul(s(0), s(1)),
        Op::Gemm {
            trans_a, trans_b, ..
        } => match (s(0), s(1)) {
            (Some(a), Some(b)) if a.len() == 2 && b.len() == 2 => {
                Some(vec![a[usize::from(*trans_a)], b[usize::from(!*trans_b)]])
            }
            _ => None,
        },
        Op::Conv { window, .. } => {
            let m = s(1).and_then(|w| w.first().copied().flatten());
            s(0).map(|x| window_out(&x, window, m))
        }
        Op::AveragePool { window, .. } | Op::MaxPool { window } => {
            s(0).map(|x| window_out(&x, window, x.get(1).copied().flatten()))
        }
        Op::GlobalAveragePool => s(0).filter(|x| x.len() >= 2).map(|x| {
            let mut o = x[..2].to_vec();
            o.resize(x.len(), Some(1));
            o
        }),
        Op::ReduceMean { axes, keep_dims } | Op::ReduceSum { axes, keep_dims } => {
            s(0).and_then(|x| {
                let r = x.len();
                let axes = if axes.is_empty() {
                    (0..r).collect()
                } else {
                    norm_axes(axes, r)?
                };
                Some(
                    x.iter()
                        .enumerate()
                        .filter_map(|(i, &d)| match (axes.contains(&i), keep_dims) {
                            (false, _) => Some(d),
                            (true, true) => Some(Some(1)),
                            (true, false) => None,
                        })
                        .collect(),
                )
            })
        }
        Op::Flatten { axis } => s(0).and_then(|x| {
            let a = norm_axis(*axis, x.len() + 1)?;
            let prod = |d: &[Option<usize>]| {
                d.iter()
                    .try_fold(1usize, |acc, &v| v.and_then(|v| acc.checked_mul(v)))
            };
            Some(vec![prod(&x[..a]), prod(&x[a..])])
        }),
        Op::Transpose { perm } => s(0)
            .filter(|x| x.len() == perm.len())
            .map(|x| perm.iter().map(|&p| x[p]).collect()),
        Op::Concat { axis } => (0..node.inputs.len())
            .map(s)
            .collect::<Option<Vec<_>>>()
            .and_then(|v| {
                let r = v.first()?.len();
                let a = norm_axis(*axis, r)?;
                if v.iter().any(|x| x.len() != r) {
                    return None;
                }
                let mut o = v[0].clone();
                o[a] = v
                    .iter()
                    .try_fold(0usize, |acc, x| x[a].and_then(|d| acc.checked_add(d)));
                Some(o)
            }),
        Op::Unsqueeze { axes } => s(0).and_then(|x| {
            let r = x.len() + axes.len();
            let axes = norm_axes(axes, r)?;
            let mut src = x.into_iter();
            (0..r)
                .map(|i| {
                    if axes.contains(&i) {
                        Some(Some(1))
                    } else {
                        src.next()
                    }
                })
                .collect()
        }),
        Op::Squeeze { axes } => s(0).and_then(|x| {
            if axes.is_empty() {
                return x
                    .iter()
                    .all(Option::is_some)
                    .then(|| x.into_iter().filter(|&d| d != Some(1)).collect());
            }
            let axes = norm_axes(axes, x.len())?;
            Some(
                x.into_iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, d)| d)
                    .collect(),
            )
        }),
        Op::Shape { start, end } => s(0).map(|x| {
            let r = x.len() as i64;
            let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) };
            let (a, b) = (clamp(*start), clamp(end.unwrap_or(r)));
            vec![Some((b - a).max(0) as usize)]
        }),
        Op::Reshape { allow_zero } => reshape(
            s(0),
            node.inputs.get(1).and_then(|n| ctx.consts.get(n)),
            *allow_zero,
        ),
        _ => None,
    };
    let mut outs = vec![out0];
    if matches!(node.op, Op::DynamicQuantizeLinear) {
        outs.push(Some(vec![]));
        outs.push(Some(vec![]));
    }
    outs
}

fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

fn norm_axes(axes: &[i64], rank: usize) -> Option<Vec<usize>> {
    axes.iter().map(|&a| norm_axis(a, rank)).collect()
}

/// Numpy broadcasting of known-rank shapes.
fn broadcast(shapes: &[Shape]) -> Option<Shape> {
    let r = shapes.iter().map(Vec::len).max()?;
    let mut out = vec![Some(1); r];
    for s in shapes {
        let off = r - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            *o = match (*o, d) {
                (Some(1), d) | (d, Some(1)) => d,
                (Some(a), Some(b)) if a == b => Some(a),
                (Some(_), Some(_)) => return None,
                (Some(a), None) | (None, Some(a)) => Some(a),
                (None, None) => None,
            };
        }
    }
    Some(out)
}

fn matmul(a: Option<Shape>, b: Option<Shape>) -> Option<Shape> {
    let (a, b) = (a?, b?);
    match (a.len(), b.len()) {
        (0, _) | (_, 0) => None,
        (1, 1) => Some(vec![]),
        (1, _) => {
            let mut o = b[..b.len() - 2].to_vec();
            o.push(b[b.len() - 1]);
            Some(o)
        }
        (_, 1) => Some(a[..a.len() - 1].to_vec()),
        (ra, rb) => {
            let mut o = broadcast(&[a[..ra - 2].to_vec(), b[..rb - 2].to_vec()])?;
            o.push(a[ra - 2]);
            o.push(b[rb - 1]);
            Some(o)
        }
    }
}

/// The output shape of a windowed op over `x`, with `channels` out.
fn window_out(x: &Shape, w: &Window, channels: Option<usize>) -> Shape {
    let dims = w.kernel.len();
    let mut o = vec![x.first().copied().flatten(), channels];
    for i in 0..dims {
        let size = x.get(2 + i).copied().flatten();
        o.push(size.and_then(|size| {
            let eff = (w.kernel[i] - 1) * w.dilations[i] + 1;
            let padded = size.checked_add(w.pads[i] + w.pads[dims + i])?;
            padded.checked_sub(eff).map(|d| d / w.strides[i] + 1)
        }));
    }
    o
}

fn reshape(x: Option<Shape>, shape: Option<&Tensor>, allow_zero: bool) -> Option<Shape> {
    let target = ints_of(shape?)?;
    let mut o: Shape = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &d) in target.iter().enumerate() {
        o.push(match d {
            0 if !allow_zero => x.as_ref()?.get(i).copied().flatten(),
            -1 if infer.is_none() => {
                infer = Some(i);
                None
            }
            d if d >= 0 => Some(d as usize),
            _ => return None,
        });
    }
    if let (Some(i), Some(x)) = (infer, &x) {
        let total = x
            .iter()
            .try_fold(1usize, |acc, &v| v.and_then(|v| acc.checked_mul(v)));
        let rest = o
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .try_fold(1usize, |acc, (_, &v)| v.and_then(|v| acc.checked_mul(v)));
        if let (Some(t), Some(r)) = (total, rest) {
            if r > 0 && t % r == 0 {
                o[i] = Some(t / r);
            }
        }
    }
    Some(o)
}
