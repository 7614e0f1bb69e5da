//! The graph interpreter: runs a [`Graph`](crate::Graph) model on candle
//! tensors (CPU, f32 compute for floats), with ONNX semantics for every
//! [`Op`](crate::Op).
//!
//! - [`GraphRuntime`] checks and plans the graph once (constants converted
//!   to candle tensors, and nodes that read only constants, such as the
//!   Cast and Mul that dequantize int8 weights, evaluated at load), then
//!   [`GraphRuntime::run`] evaluates the rest, freeing each intermediate
//!   value after its last use. A [`Hook`] sees every node output under its
//!   value name (calibration's activation ranges).
//! - [`fold_constants`] evaluates what depends only on constants (and on the
//!   shapes of static inputs) and stores the results as tensors.
//! - [`infer_shapes`] gives every value's dtype and shape for concrete input
//!   shapes, by running the graph on zeros.
//!
//! Values are held as candle tensors of three dtypes: f32 for the float
//! types (f16 and bf16 computed in f32, rounded by an explicit Cast), i64
//! for every integer type (so int8 and uint8 arithmetic, saturation and
//! integer matmuls are exact), u8 (0 or 1) for bool. Outputs and hooked
//! values come in that form; [`infer_shapes`] reports the ONNX dtypes.
//!
//! Float ops are candle ops with backward passes (depthwise convolution is
//! a kernel of ours with one), so a model run on `Var` inputs is
//! differentiable with respect to them; integer and quantization ops are
//! not.

mod conv;
mod eval;
mod quant;
mod value;

use std::collections::{HashMap, HashSet};

use candle_core::{DType as CDType, Device, Tensor};

use self::value::{from_model_tensor, is_float, is_int, storage, to_model_tensor, Value};
use super::{Hook, RuntimeError};
use crate::{DType, Dim, Graph, Model, Node, Op, ValueInfo};

/// A folded value larger than this is only stored when its inputs were
/// larger still (folding must not grow the model much).
const FOLD_LIMIT_BYTES: usize = 16 << 20;

/// What sees each node output during a run.
type Observer<'a> = dyn FnMut(&str, &Value) + 'a;

/// One node, planned: value ids of its inputs (`None` = absent) and
/// outputs, and the values that die after it.
struct Step {
    node: Node,
    inputs: Vec<Option<usize>>,
    outputs: Vec<Option<usize>>,
    free: Vec<usize>,
}

/// The generic interpreter of [`Model::graph`].
pub struct GraphRuntime {
    names: Vec<String>,
    /// Constants by value id.
    consts: Vec<Option<Value>>,
    inputs: Vec<(usize, ValueInfo)>,
    outputs: Vec<(usize, ValueInfo)>,
    steps: Vec<Step>,
    /// Node outputs computed at load from constants alone, in node order
    /// (the hook sees them on every run too).
    precomputed: Vec<usize>,
    hook: Option<Hook>,
}

impl std::fmt::Debug for GraphRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphRuntime")
            .field("nodes", &self.steps.len())
            .field("values", &self.names.len())
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

fn no_graph() -> RuntimeError {
    RuntimeError::Model("the model has no graph".into())
}

fn node_error(node: &Node, msg: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Model(format!(
        "node \"{}\" ({}): {msg}",
        node.name,
        node.op.onnx_name().0
    ))
}

fn describe(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Named(s) => s.clone(),
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

impl GraphRuntime {
    /// Plans `model`'s graph: every value read must be a graph input, a
    /// constant (a model tensor of that name) or an earlier node's output.
    /// Nodes that read only constants (weight dequantization, shape
    /// arithmetic) are evaluated here, once, instead of on every run.
    pub fn new(model: &Model) -> Result<GraphRuntime, RuntimeError> {
        Self::build(model, true)
    }

    fn build(model: &Model, precompute: bool) -> Result<GraphRuntime, RuntimeError> {
        super::keep_candle_pool_inline();
        let graph = model.graph.as_ref().ok_or_else(no_graph)?;
        let tensors: HashMap<&str, &crate::Tensor> =
            model.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut names: Vec<String> = Vec::new();
        let mut consts: Vec<Option<Value>> = Vec::new();
        let new_id = |name: &str, names: &mut Vec<String>, consts: &mut Vec<Option<Value>>| {
            names.push(name.to_string());
            consts.push(None);
            names.len() - 1
        };

        let mut inputs = Vec::with_capacity(graph.inputs.len());
        let mut input_ids = HashMap::new();
        for vi in &graph.inputs {
            if input_ids.contains_key(vi.name.as_str()) {
                return Err(RuntimeError::Model(format!(
                    "graph input {} is listed twice",
                    vi.name
                )));
            }
            let id = new_id(&vi.name, &mut names, &mut consts);
            // an initializer listed as an input is its default
            if let Some(t) = tensors.get(vi.name.as_str()) {
                consts[id] = Some(load_const(t)?);
            }
            input_ids.insert(vi.name.clone(), id);
            inputs.push((id, vi.clone()));
        }

        let mut steps = Vec::with_capacity(graph.nodes.len());
        let mut lookup: HashMap<String, usize> = input_ids.clone();
        for node in &graph.nodes {
            let mut ins = Vec::with_capacity(node.inputs.len());
            for name in &node.inputs {
                if name.is_empty() {
                    ins.push(None);
                    continue;
                }
                let id = match lookup.get(name) {
                    Some(&id) => id,
                    None => match tensors.get(name.as_str()) {
                        Some(t) => {
                            let id = new_id(name, &mut names, &mut consts);
                            consts[id] = Some(load_const(t).map_err(|e| node_error(node, e))?);
                            lookup.insert(name.clone(), id);
                            id
                        }
                        None => {
                            return Err(node_error(
                                node,
                                format!(
                                    "reads {name}, which is no graph input, constant \
                                     nor output of an earlier node"
                                ),
                            ))
                        }
                    },
                };
                ins.push(Some(id));
            }
            let mut outs = Vec::with_capacity(node.outputs.len());
            for name in &node.outputs {
                if name.is_empty() {
                    outs.push(None);
                    continue;
                }
                if lookup.contains_key(name) || tensors.contains_key(name.as_str()) {
                    return Err(node_error(
                        node,
                        format!("writes {name}, which already has a value"),
                    ));
                }
                let id = new_id(name, &mut names, &mut consts);
                lookup.insert(name.clone(), id);
                outs.push(Some(id));
            }
            steps.push(Step {
                node: node.clone(),
                inputs: ins,
                outputs: outs,
                free: Vec::new(),
            });
        }

        let mut outputs = Vec::with_capacity(graph.outputs.len());
        for vi in &graph.outputs {
            let id = match lookup.get(&vi.name) {
                Some(&id) => id,
                None => match tensors.get(vi.name.as_str()) {
                    Some(t) => {
                        let id = new_id(&vi.name, &mut names, &mut consts);
                        consts[id] = Some(load_const(t)?);
                        lookup.insert(vi.name.clone(), id);
                        id
                    }
                    None => {
                        return Err(RuntimeError::Model(format!(
                            "graph output {} is never produced",
                            vi.name
                        )))
                    }
                },
            };
            outputs.push((id, vi.clone()));
        }

        let keep: HashSet<usize> = outputs.iter().map(|(id, _)| *id).collect();
        let mut precomputed = Vec::new();
        if precompute {
            let overridable: HashSet<usize> = inputs.iter().map(|(id, _)| *id).collect();
            (steps, precomputed) = precompute_constants(steps, &mut consts, &overridable);
            // model constants only the precomputed nodes read (e.g. int8
            // weights, held as i64) are not needed any more
            let mut read: HashSet<usize> = keep.clone();
            read.extend(overridable);
            read.extend(precomputed.iter().copied());
            for s in &steps {
                read.extend(s.inputs.iter().flatten().copied());
            }
            for (id, c) in consts.iter_mut().enumerate() {
                if !read.contains(&id) {
                    *c = None;
                }
            }
        }

        // free every computed value after its last reader (or at once when
        // nothing reads it), unless it is a graph output
        let mut last = vec![None; names.len()];
        for (i, s) in steps.iter().enumerate() {
            for id in s.inputs.iter().flatten() {
                last[*id] = Some(i);
            }
            for id in s.outputs.iter().flatten() {
                last[*id].get_or_insert(i);
            }
        }
        for (id, l) in last.iter().enumerate() {
            if let Some(i) = *l {
                if consts[id].is_none() && !keep.contains(&id) {
                    steps[i].free.push(id);
                }
            }
        }
        Ok(GraphRuntime {
            names,
            consts,
            inputs,
            outputs,
            steps,
            precomputed,
            hook: None,
        })
    }

    /// Sets the hook that sees every node output (value name, value) as it
    /// is computed.
    pub fn set_hook(&mut self, hook: Option<Hook>) {
        self.hook = hook;
    }

    /// The graph's inputs.
    pub fn inputs(&self) -> impl Iterator<Item = &ValueInfo> {
        self.inputs.iter().map(|(_, vi)| vi)
    }

    /// The graph's outputs.
    pub fn outputs(&self) -> impl Iterator<Item = &ValueInfo> {
        self.outputs.iter().map(|(_, vi)| vi)
    }

    /// Runs the graph on named inputs (every graph input without a default
    /// constant must be given; floats of any float dtype, integers of any
    /// integer dtype, bool as u8 or integers); returns the graph outputs in
    /// order: floats as f32, integers as i64, bool as u8.
    pub fn run(&self, inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        let mut observe = |name: &str, v: &Value| {
            if let Some(h) = &self.hook {
                h(name, &v.t);
            }
        };
        let hook: Option<&mut Observer<'_>> = if self.hook.is_some() {
            Some(&mut observe)
        } else {
            None
        };
        let out = self.execute(inputs, hook)?;
        Ok(out.into_iter().map(|(n, v)| (n, v.t)).collect())
    }

    /// Checks and converts the inputs, runs every step and returns the graph
    /// outputs; `observe` sees each node output.
    fn execute(
        &self,
        inputs: &[(&str, Tensor)],
        mut observe: Option<&mut Observer<'_>>,
    ) -> Result<Vec<(String, Value)>, RuntimeError> {
        for (name, _) in inputs {
            if !self.inputs.iter().any(|(_, vi)| vi.name == *name) {
                return Err(RuntimeError::Input(format!(
                    "the graph has no input named {name}"
                )));
            }
        }
        if let Some(f) = observe.as_mut() {
            for &id in &self.precomputed {
                if let Some(v) = &self.consts[id] {
                    f(&self.names[id], v);
                }
            }
        }
        let mut env: Vec<Option<Value>> = vec![None; self.names.len()];
        for (id, vi) in &self.inputs {
            let given: Vec<&Tensor> = inputs
                .iter()
                .filter(|(n, _)| *n == vi.name)
                .map(|(_, t)| t)
                .collect();
            match given.as_slice() {
                [t] => env[*id] = Some(check_input(vi, t)?),
                [] if self.consts[*id].is_some() => {}
                [] => {
                    return Err(RuntimeError::Input(format!(
                        "missing input {} {} {}",
                        vi.name,
                        vi.dtype,
                        describe(&vi.shape)
                    )))
                }
                _ => {
                    return Err(RuntimeError::Input(format!(
                        "input {} given more than once",
                        vi.name
                    )))
                }
            }
        }
        for step in &self.steps {
            let ins: Vec<Option<&Value>> = step
                .inputs
                .iter()
                .map(|id| id.map(|id| self.value(&env, id)).transpose())
                .collect::<Result<_, _>>()
                .map_err(|e| node_error(&step.node, e))?;
            let outs = eval::eval(&step.node.op, &ins, step.outputs.len())
                .map_err(|e| node_error(&step.node, e.0))?;
            if outs.len() < step.outputs.iter().flatten().count() {
                return Err(node_error(
                    &step.node,
                    format!(
                        "has {} outputs, the op gives {}",
                        step.outputs.len(),
                        outs.len()
                    ),
                ));
            }
            for (id, v) in step.outputs.iter().zip(outs) {
                if let Some(id) = id {
                    if let Some(f) = observe.as_mut() {
                        f(&self.names[*id], &v);
                    }
                    env[*id] = Some(v);
                }
            }
            for id in &step.free {
                env[*id] = None;
            }
        }
        self.outputs
            .iter()
            .map(|(id, vi)| Ok((vi.name.clone(), self.value(&env, *id)?.clone())))
            .collect::<Result<_, String>>()
            .map_err(RuntimeError::Model)
    }

    fn value<'a>(&'a self, env: &'a [Option<Value>], id: usize) -> Result<&'a Value, String> {
        env[id]
            .as_ref()
            .or(self.consts[id].as_ref())
            .ok_or_else(|| format!("value {} is not available", self.names[id]))
    }
}

/// Values computed once at load are kept unless they exceed this and
/// their inputs (as held: int8 weights take 8 bytes an element) together.
const PRECOMPUTE_LIMIT_BYTES: usize = 64 << 20;

/// Evaluates the steps whose inputs are all fixed constants (not graph
/// inputs, whose defaults a caller may override) into `consts`; returns the
/// remaining steps and the ids computed, in order. A step that fails is
/// kept, so that running reports its error.
fn precompute_constants(
    steps: Vec<Step>,
    consts: &mut [Option<Value>],
    overridable: &HashSet<usize>,
) -> (Vec<Step>, Vec<usize>) {
    let held = |v: &Value| v.numel() * v.t.dtype().size_in_bytes();
    let mut kept = Vec::with_capacity(steps.len());
    let mut done = Vec::new();
    for step in steps {
        let fixed = |id: &usize| consts[*id].is_some() && !overridable.contains(id);
        if step.outputs.iter().all(Option::is_none) || !step.inputs.iter().flatten().all(fixed) {
            kept.push(step);
            continue;
        }
        let ins: Vec<Option<&Value>> = step
            .inputs
            .iter()
            .map(|id| id.and_then(|id| consts[id].as_ref()))
            .collect();
        let in_bytes: usize = ins.iter().flatten().map(|v| held(v)).sum();
        let outs = match eval::eval(&step.node.op, &ins, step.outputs.len()) {
            Ok(outs) if outs.len() >= step.outputs.len() => outs,
            _ => {
                kept.push(step);
                continue;
            }
        };
        let out_bytes: usize = outs.iter().map(held).sum();
        if out_bytes > PRECOMPUTE_LIMIT_BYTES && out_bytes > in_bytes {
            kept.push(step);
            continue;
        }
        for (id, v) in step.outputs.iter().zip(outs) {
            if let Some(id) = id {
                consts[*id] = Some(v);
                done.push(*id);
            }
        }
    }
    (kept, done)
}

fn load_const(t: &crate::Tensor) -> Result<Value, RuntimeError> {
    from_model_tensor(t).map_err(|e| RuntimeError::Model(format!("constant {}: {}", t.name, e.0)))
}

/// Checks a given input against its declaration and converts it to the
/// interpreter's storage.
fn check_input(vi: &ValueInfo, t: &Tensor) -> Result<Value, RuntimeError> {
    let bad = |msg: String| {
        RuntimeError::Input(format!(
            "input {} (declared {} {}): {msg}",
            vi.name,
            vi.dtype,
            describe(&vi.shape)
        ))
    };
    let dims = t.dims();
    if dims.len() != vi.shape.len() {
        return Err(bad(format!("got shape {dims:?}")));
    }
    for (i, (d, want)) in dims.iter().zip(&vi.shape).enumerate() {
        if let Dim::Fixed(w) = want {
            if w != d {
                return Err(bad(format!("got shape {dims:?}, dim {i} must be {w}")));
            }
        }
    }
    let is_float_t = matches!(
        t.dtype(),
        CDType::F16 | CDType::BF16 | CDType::F32 | CDType::F64
    );
    let is_int_t = matches!(
        t.dtype(),
        CDType::U8 | CDType::U32 | CDType::I16 | CDType::I32 | CDType::I64
    );
    let conv = |r: candle_core::Result<Tensor>| r.map_err(|e| bad(e.to_string()));
    let v = match vi.dtype {
        d if is_float(d) && is_float_t => Value::new(conv(t.to_dtype(CDType::F32))?, d),
        d if is_int(d) && is_int_t => {
            let t = conv(t.to_dtype(CDType::I64))?;
            let (lo, hi) = value::int_range(d).map_err(|e| bad(e.0))?;
            if d != DType::I64 && t.elem_count() > 0 {
                let flat = conv(t.flatten_all())?;
                let min = conv(flat.min(0))?
                    .to_scalar::<i64>()
                    .map_err(|e| bad(e.to_string()))?;
                let max = conv(flat.max(0))?
                    .to_scalar::<i64>()
                    .map_err(|e| bad(e.to_string()))?;
                if min < lo || max > hi {
                    return Err(bad(format!("values {min}..={max} do not fit {d}")));
                }
            }
            Value::new(t, d)
        }
        DType::Bool if is_int_t => Value::bool(conv(t.ne(0f64))?),
        d => {
            return Err(bad(format!("got a {:?} tensor for a {d} input", t.dtype())));
        }
    };
    Ok(v)
}

/// The dtype and shape of every value (graph inputs, constants the graph
/// reads, node outputs) for concrete shapes of the inputs: the graph is run
/// on zeros. Inputs whose dims are all fixed may be left out.
pub fn infer_shapes(
    model: &Model,
    inputs: &[(&str, Vec<usize>)],
) -> Result<HashMap<String, (DType, Vec<usize>)>, RuntimeError> {
    // nothing precomputed, so that every constant is still there to report
    let rt = GraphRuntime::build(model, false)?;
    let mut feeds = Vec::with_capacity(rt.inputs.len());
    for (_, vi) in &rt.inputs {
        let dims = match inputs.iter().find(|(n, _)| *n == vi.name) {
            Some((_, d)) => d.clone(),
            None => {
                let fixed: Option<Vec<usize>> = vi.fixed_dims().into_iter().collect();
                match fixed {
                    Some(d) => d,
                    None => {
                        return Err(RuntimeError::Input(format!(
                            "no shape given for input {} {}",
                            vi.name,
                            describe(&vi.shape)
                        )))
                    }
                }
            }
        };
        value::check_size(&dims, "input")
            .map_err(|e| RuntimeError::Input(format!("input {}: {}", vi.name, e.0)))?;
        let t = Tensor::zeros(dims, storage(vi.dtype), &Device::Cpu)?;
        feeds.push((vi.name.as_str(), t));
    }
    for (name, _) in inputs {
        if !rt.inputs.iter().any(|(_, vi)| vi.name == *name) {
            return Err(RuntimeError::Input(format!(
                "the graph has no input named {name}"
            )));
        }
    }
    let mut out: HashMap<String, (DType, Vec<usize>)> = HashMap::new();
    for (id, c) in rt.consts.iter().enumerate() {
        if let Some(c) = c {
            out.insert(rt.names[id].clone(), (c.dt, c.dims().to_vec()));
        }
    }
    for ((_, vi), (_, t)) in rt.inputs.iter().zip(&feeds) {
        out.insert(vi.name.clone(), (vi.dtype, t.dims().to_vec()));
    }
    let mut record = |name: &str, v: &Value| {
        out.insert(name.to_string(), (v.dt, v.dims().to_vec()));
    };
    rt.execute(&feeds, Some(&mut record))?;
    Ok(out)
}

/// Inputs of `op` that decide its output's shape (beyond input shapes).
fn shape_args(op: &Op) -> &'static [usize] {
    match op {
        Op::Reshape { .. } | Op::Expand => &[1],
        Op::ConstantOfShape { .. } => &[0],
        Op::Range => &[0, 1, 2],
        Op::Slice => &[1, 2, 3, 4],
        Op::Pad { .. } => &[1, 3],
        _ => &[],
    }
}

fn byte_size(v: &Value) -> usize {
    let elem = match v.dt {
        DType::F32 | DType::I32 => 4,
        DType::F16 | DType::Bf16 => 2,
        DType::I64 => 8,
        _ => 1,
    };
    v.numel() * elem
}

/// Evaluates every node whose inputs are all constants (or absent), and
/// every Shape of a value whose shape is static (a graph input with fixed
/// dims, or, when all inputs are fixed, anything whose shape does not hang
/// on input data), stores the results as model tensors, removes those
/// nodes and the tensors nobody reads any more (graph outputs stay).
/// Returns how many nodes were folded.
///
/// Not folded: nodes that turn an int8/uint8 weight into floats
/// (DequantizeLinear, Cast, Mul … of a quantized tensor, so quantization
/// survives), results over 16 MiB larger than their inputs, and nodes that
/// fail to evaluate (left for the runtime to report).
pub fn fold_constants(model: &mut Model) -> Result<usize, RuntimeError> {
    let graph = model.graph.as_ref().ok_or_else(no_graph)?;
    let input_names: HashSet<&str> = graph.inputs.iter().map(|v| v.name.as_str()).collect();
    let tensors: HashMap<&str, &crate::Tensor> = model
        .tensors
        .iter()
        .filter(|t| !input_names.contains(t.name.as_str()))
        .map(|t| (t.name.as_str(), t))
        .collect();
    let fixed = |vi: &ValueInfo| vi.shape.iter().all(|d| matches!(d, Dim::Fixed(_)));
    let all_fixed = graph.inputs.iter().all(fixed);

    // shapes of every value when the inputs are static and some Shape reads
    // a computed value; a failed run just means fewer folds
    let needs_shapes = graph.nodes.iter().any(|n| {
        matches!(n.op, Op::Shape { .. })
            && n.inputs.first().is_some_and(|x| {
                !tensors.contains_key(x.as_str()) && !input_names.contains(x.as_str())
            })
    });
    let shapes = if all_fixed && needs_shapes {
        infer_shapes(model, &[]).ok()
    } else {
        None
    };

    let mut cache: HashMap<String, Value> = HashMap::new();
    let mut folded_values: Vec<(String, Value)> = Vec::new();
    let mut folded = vec![false; graph.nodes.len()];
    // values whose shape does not depend on input data
    let mut static_shape: HashSet<String> = graph
        .inputs
        .iter()
        .filter(|vi| fixed(vi))
        .map(|vi| vi.name.clone())
        .collect();

    for (i, node) in graph.nodes.iter().enumerate() {
        let is_const = |n: &str, cache: &HashMap<String, Value>| {
            n.is_empty() || cache.contains_key(n) || tensors.contains_key(n)
        };
        let mut result: Option<Vec<Value>> = None;
        if node.inputs.iter().all(|n| is_const(n, &cache)) {
            let mut ins: Vec<Option<Value>> = Vec::with_capacity(node.inputs.len());
            let mut ok = true;
            for n in &node.inputs {
                if n.is_empty() {
                    ins.push(None);
                    continue;
                }
                if !cache.contains_key(n) {
                    match tensors.get(n.as_str()).map(|t| from_model_tensor(t)) {
                        Some(Ok(v)) => {
                            cache.insert(n.clone(), v);
                        }
                        _ => {
                            ok = false;
                            break;
                        }
                    }
                }
                ins.push(cache.get(n).cloned());
            }
            if ok && !dequantizes_weight(node, &ins) {
                let refs: Vec<Option<&Value>> = ins.iter().map(|v| v.as_ref()).collect();
                if let Ok(outs) = eval::eval(&node.op, &refs, node.outputs.len()) {
                    let in_bytes: usize = ins.iter().flatten().map(byte_size).sum();
                    let out_bytes: usize = outs.iter().map(byte_size).sum();
                    let grows = out_bytes > FOLD_LIMIT_BYTES && out_bytes > in_bytes;
                    // a quantized weight stays quantized: no float or wider copy
                    let dequant = has_quantized_weight(&ins)
                        && (outs.iter().any(|v| v.is_float()) || out_bytes > in_bytes);
                    if !grows && !dequant && outs.len() >= node.outputs.len() {
                        result = Some(outs);
                    }
                }
            }
        } else if let Op::Shape { start, end } = node.op {
            result = static_shape_of(node, graph, &static_shape, shapes.as_ref())
                .map(|dims| eval::shape_slice(&dims, start, end))
                .and_then(|dims| {
                    let n = dims.len();
                    value::int_value(
                        dims.into_iter().map(|d| d as i64).collect(),
                        &[n],
                        DType::I64,
                    )
                    .ok()
                })
                .map(|v| vec![v]);
        }
        match result {
            Some(outs) => {
                folded[i] = true;
                for (name, v) in node.outputs.iter().zip(outs) {
                    if !name.is_empty() {
                        cache.insert(name.clone(), v.clone());
                        folded_values.push((name.clone(), v));
                    }
                }
            }
            None => {
                let inputs_static = node
                    .inputs
                    .iter()
                    .all(|n| is_const(n, &cache) || static_shape.contains(n));
                let args_const = shape_args(&node.op)
                    .iter()
                    .all(|&j| node.inputs.get(j).is_none_or(|n| is_const(n, &cache)));
                if inputs_static && args_const {
                    static_shape.extend(node.outputs.iter().cloned());
                }
            }
        }
    }

    let count = folded.iter().filter(|f| **f).count();
    if count == 0 {
        return Ok(0);
    }
    let graph = model.graph.as_mut().expect("checked above");
    let mut candidates: HashSet<String> = HashSet::new();
    let mut kept = Vec::with_capacity(graph.nodes.len() - count);
    for (node, f) in std::mem::take(&mut graph.nodes).into_iter().zip(&folded) {
        if *f {
            candidates.extend(node.inputs.iter().filter(|n| !n.is_empty()).cloned());
        } else {
            kept.push(node);
        }
    }
    graph.nodes = kept;
    let mut read: HashSet<&str> = graph
        .nodes
        .iter()
        .flat_map(|n| n.inputs.iter().map(String::as_str))
        .collect();
    read.extend(graph.outputs.iter().map(|o| o.name.as_str()));
    let mut new_tensors = Vec::new();
    for (name, v) in &folded_values {
        if read.contains(name.as_str()) {
            new_tensors.push(
                to_model_tensor(name, v)
                    .map_err(|e| RuntimeError::Model(format!("folded value {name}: {}", e.0)))?,
            );
        }
    }
    let drop: HashSet<String> = candidates
        .into_iter()
        .filter(|n| !read.contains(n.as_str()))
        .collect();
    model.tensors.retain(|t| !drop.contains(&t.name));
    model.tensors.extend(new_tensors);
    Ok(count)
}

/// The static shape of Shape's input, when known.
fn static_shape_of(
    node: &Node,
    graph: &Graph,
    static_shape: &HashSet<String>,
    shapes: Option<&HashMap<String, (DType, Vec<usize>)>>,
) -> Option<Vec<usize>> {
    let x = node.inputs.first()?;
    if let Some(vi) = graph.inputs.iter().find(|vi| &vi.name == x) {
        // a graph input: the dims Shape takes must be fixed
        let Op::Shape { start, end } = node.op else {
            return None;
        };
        let r = vi.shape.len() as i64;
        let norm = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
        let (s, e) = (norm(start), norm(end.unwrap_or(r)));
        if s < e && vi.shape[s..e].iter().any(|d| matches!(d, Dim::Named(_))) {
            return None;
        }
        // named dims outside the range stand in as 0 (never read)
        return Some(
            vi.shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n,
                    Dim::Named(_) => 0,
                })
                .collect(),
        );
    }
    if !static_shape.contains(x) {
        return None;
    }
    shapes?.get(x).map(|(_, d)| d.clone())
}

/// Whether some input is an int8/uint8 tensor of more than one element (a
/// quantized weight rather than a zero point).
fn has_quantized_weight(ins: &[Option<Value>]) -> bool {
    ins.iter()
        .flatten()
        .any(|v| matches!(v.dt, DType::I8 | DType::U8) && v.numel() > 1)
}

/// Nodes known to widen a quantized weight (dequantize it, or cast it to a
/// wider type), skipped before evaluating them.
fn dequantizes_weight(node: &Node, ins: &[Option<Value>]) -> bool {
    has_quantized_weight(ins)
        && match node.op {
            Op::DequantizeLinear { .. } => true,
            Op::Cast { to } => !matches!(to, DType::I8 | DType::U8 | DType::Bool),
            _ => false,
        }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<GraphRuntime>();
}
