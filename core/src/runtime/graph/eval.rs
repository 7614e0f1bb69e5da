//! One op on values: ONNX semantics on candle tensors. Float ops are candle
//! ops with backward passes; integer arithmetic is done here in i64 with
//! wrapping (candle's integer kernels panic on overflow in debug builds and
//! on unary ops), which is cheap as integers are mostly shape arithmetic.

use candle_core::{DType as CDType, Device, Tensor};

use super::conv::{conv, pool, Pool};
use super::quant;
use super::value::{
    axis, broadcast_shape, broadcast_to, check_size, contiguous, fail, full, int_value, is_float,
    is_int, select, wrap, OpError, OpResult, Value,
};
use crate::{DType, Op, PadMode};

/// The inputs of a node: `None` for an absent optional one.
pub(crate) type Inputs<'a> = [Option<&'a Value>];

fn get<'a>(ins: &Inputs<'a>, i: usize, what: &str) -> OpResult<&'a Value> {
    match ins.get(i).copied().flatten() {
        Some(v) => Ok(v),
        None => fail!("missing input {i} ({what})"),
    }
}

fn opt<'a>(ins: &Inputs<'a>, i: usize) -> Option<&'a Value> {
    ins.get(i).copied().flatten()
}

fn float<'a>(ins: &Inputs<'a>, i: usize, what: &str) -> OpResult<&'a Value> {
    let v = get(ins, i, what)?;
    if !v.is_float() {
        fail!("{what} must be a float tensor, is {}", v.dt)
    }
    Ok(v)
}

/// Evaluates `op` on `ins`; returns `n_out` outputs (ops with optional
/// extra outputs compute the ones asked for).
pub(crate) fn eval(op: &Op, ins: &Inputs<'_>, n_out: usize) -> OpResult<Vec<Value>> {
    let one = |v: Value| Ok(vec![v]);
    let x = || get(ins, 0, "x");
    match op {
        Op::Identity => one(x()?.clone()),
        Op::Relu => {
            let x = x()?;
            if x.is_int() {
                return one(int_map(x, |v| v.max(0))?);
            }
            one(fmap(x, |t| t.relu())?)
        }
        Op::Neg => {
            let x = x()?;
            if x.is_int() {
                return one(int_map(x, i64::wrapping_neg)?);
            }
            one(fmap(x, |t| t.neg())?)
        }
        Op::Abs => {
            let x = x()?;
            if x.is_int() {
                return one(int_map(x, i64::wrapping_abs)?);
            }
            one(fmap(x, |t| t.abs())?)
        }
        Op::Sigmoid => one(fmap(x()?, candle_nn::ops::sigmoid)?),
        Op::Tanh => one(fmap(x()?, |t| t.tanh())?),
        Op::Erf => one(fmap(x()?, |t| t.erf())?),
        Op::Exp => one(fmap(x()?, |t| t.exp())?),
        Op::Log => one(fmap(x()?, |t| t.log())?),
        Op::Sqrt => one(fmap(x()?, |t| t.sqrt())?),
        Op::Reciprocal => one(fmap(x()?, |t| t.recip())?),
        Op::Gelu { tanh } => one(fmap(x()?, |t| if *tanh { t.gelu() } else { t.gelu_erf() })?),
        Op::HardSigmoid { alpha, beta } => one(fmap(x()?, |t| {
            t.affine(*alpha as f64, *beta as f64)?.clamp(0f32, 1f32)
        })?),
        Op::HardSwish => one(fmap(x()?, |t| {
            t.mul(&t.affine(1.0 / 6.0, 0.5)?.clamp(0f32, 1f32)?)
        })?),
        Op::IsNaN => {
            let x = float(ins, 0, "x")?;
            one(Value::bool(x.t.ne(&x.t)?))
        }
        Op::Not => {
            let x = x()?;
            if x.dt != DType::Bool {
                fail!("Not needs a bool input, got {}", x.dt)
            }
            one(Value::bool(x.t.eq(0u8)?))
        }
        Op::Clip => one(clip(x()?, opt(ins, 1), opt(ins, 2))?),
        Op::Add | Op::Sub | Op::Mul | Op::Div => {
            one(arith(op, get(ins, 0, "a")?, get(ins, 1, "b")?)?)
        }
        Op::Pow => one(pow(get(ins, 0, "x")?, get(ins, 1, "y")?)?),
        Op::Equal | Op::Greater | Op::Less | Op::GreaterOrEqual | Op::LessOrEqual => {
            one(compare(op, get(ins, 0, "a")?, get(ins, 1, "b")?)?)
        }
        Op::And | Op::Or => {
            let (a, b) = (get(ins, 0, "a")?, get(ins, 1, "b")?);
            if a.dt != DType::Bool || b.dt != DType::Bool {
                fail!("needs bool inputs, got {} and {}", a.dt, b.dt)
            }
            let t = match op {
                Op::And => a.t.broadcast_minimum(&b.t)?,
                _ => a.t.broadcast_maximum(&b.t)?,
            };
            one(Value::bool(t))
        }
        Op::Max | Op::Min => {
            let first = get(ins, 0, "x")?;
            let mut acc = first.t.clone();
            for (i, v) in ins.iter().enumerate().skip(1) {
                let v = v.ok_or_else(|| OpError(format!("missing input {i}")))?;
                same_class(first, v)?;
                acc = match op {
                    Op::Max => acc.broadcast_maximum(&v.t)?,
                    _ => acc.broadcast_minimum(&v.t)?,
                };
            }
            one(Value::new(acc, first.dt))
        }
        Op::Where => {
            let c = get(ins, 0, "condition")?;
            let (a, b) = (get(ins, 1, "x")?, get(ins, 2, "y")?);
            if c.dt != DType::Bool {
                fail!("the condition must be bool, is {}", c.dt)
            }
            same_class(a, b)?;
            let dims = broadcast_shape(&broadcast_shape(c.dims(), a.dims())?, b.dims())?;
            let t = broadcast_to(&c.t, &dims)?
                .where_cond(&broadcast_to(&a.t, &dims)?, &broadcast_to(&b.t, &dims)?)?;
            one(Value::new(t, a.dt))
        }
        Op::MatMul => {
            let (a, b) = (get(ins, 0, "a")?, get(ins, 1, "b")?);
            same_class(a, b)?;
            if a.is_int() {
                let y = matmul(&a.t.to_dtype(CDType::F64)?, &b.t.to_dtype(CDType::F64)?)?;
                let v = y.flatten_all()?.to_vec1::<f64>()?;
                let v = v.into_iter().map(|f| wrap(f as i64, a.dt)).collect();
                return one(int_value(v, y.dims(), a.dt)?);
            }
            if !a.is_float() {
                fail!("MatMul needs numbers, got {}", a.dt)
            }
            one(Value::new(matmul(&a.t, &b.t)?, a.dt))
        }
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => one(gemm(
            float(ins, 0, "a")?,
            float(ins, 1, "b")?,
            opt(ins, 2),
            (*alpha, *beta, *trans_a, *trans_b),
        )?),
        Op::Conv { window, group } => one(conv(
            get(ins, 0, "x")?,
            get(ins, 1, "w")?,
            opt(ins, 2),
            window,
            *group,
        )?),
        Op::BatchNorm { epsilon } => one(batch_norm(ins, *epsilon)?),
        Op::LayerNorm { axis: a, epsilon } => layer_norm(ins, *a, *epsilon, n_out),
        Op::Softmax { axis: a } => {
            let x = float(ins, 0, "x")?;
            if x.rank() == 0 {
                fail!("Softmax of a scalar")
            }
            let a = axis(*a, x.rank(), 0)?;
            one(Value::new(candle_nn::ops::softmax(&x.t, a)?, x.dt))
        }
        Op::GlobalAveragePool => {
            let x = float(ins, 0, "x")?;
            if x.rank() < 3 {
                fail!(
                    "GlobalAveragePool needs [N, C, spatial…], got {:?}",
                    x.dims()
                )
            }
            let dims: Vec<usize> = (2..x.rank()).collect();
            one(Value::new(x.t.mean_keepdim(dims)?, x.dt))
        }
        Op::AveragePool {
            window,
            count_include_pad,
        } => one(pool(
            x()?,
            window,
            Pool::Avg {
                count_include_pad: *count_include_pad,
            },
        )?),
        Op::MaxPool { window } => {
            if n_out > 1 {
                fail!("MaxPool's indices output is not supported")
            }
            one(pool(x()?, window, Pool::Max)?)
        }
        Op::ReduceMean { axes, keep_dims } => one(reduce(x()?, axes, *keep_dims, true)?),
        Op::ReduceSum { axes, keep_dims } => one(reduce(x()?, axes, *keep_dims, false)?),
        Op::Reshape { allow_zero } => {
            let x = x()?;
            let shape = get(ins, 1, "shape")?.ints_1d("shape")?;
            let dims = reshape_dims(x.dims(), &shape, *allow_zero)?;
            one(Value::new(x.t.reshape(dims)?, x.dt))
        }
        Op::Flatten { axis: a } => {
            let x = x()?;
            let a = axis(*a, x.rank(), 1)?;
            let outer: usize = x.dims()[..a].iter().product();
            let inner: usize = x.dims()[a..].iter().product();
            one(Value::new(x.t.reshape((outer, inner))?, x.dt))
        }
        Op::Transpose { perm } => {
            let x = x()?;
            let perm: Vec<usize> = if perm.is_empty() {
                (0..x.rank()).rev().collect()
            } else {
                perm.clone()
            };
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted.iter().enumerate().any(|(i, &p)| i != p) || perm.len() != x.rank() {
                fail!("perm {perm:?} is not a permutation of rank {}", x.rank())
            }
            one(Value::new(x.t.permute(perm)?, x.dt))
        }
        Op::Concat { axis: a } => one(concat(ins, *a)?),
        Op::Unsqueeze { axes } => {
            let x = x()?;
            let out_rank = x.rank() + axes.len();
            let mut ax: Vec<usize> = axes
                .iter()
                .map(|&a| axis(a, out_rank, 0))
                .collect::<OpResult<_>>()?;
            ax.sort_unstable();
            if ax.windows(2).any(|w| w[0] == w[1]) {
                fail!("repeated axes {axes:?}")
            }
            let mut dims = Vec::with_capacity(out_rank);
            let mut src = x.dims().iter();
            for i in 0..out_rank {
                if ax.binary_search(&i).is_ok() {
                    dims.push(1);
                } else {
                    dims.push(*src.next().expect("rank counted"));
                }
            }
            one(Value::new(x.t.reshape(dims)?, x.dt))
        }
        Op::Squeeze { axes } => {
            let x = x()?;
            let ax: Vec<usize> = axes
                .iter()
                .map(|&a| axis(a, x.rank(), 0))
                .collect::<OpResult<_>>()?;
            for &a in &ax {
                if x.dims()[a] != 1 {
                    fail!("cannot squeeze axis {a} of {:?}", x.dims())
                }
            }
            let dims: Vec<usize> = x
                .dims()
                .iter()
                .enumerate()
                .filter(|(i, &d)| {
                    if ax.is_empty() {
                        d != 1
                    } else {
                        !ax.contains(i)
                    }
                })
                .map(|(_, &d)| d)
                .collect();
            one(Value::new(x.t.reshape(dims)?, x.dt))
        }
        Op::Shape { start, end } => {
            let x = x()?;
            let dims = shape_slice(x.dims(), *start, *end);
            let n = dims.len();
            one(int_value(
                dims.into_iter().map(|d| d as i64).collect(),
                &[n],
                DType::I64,
            )?)
        }
        Op::Gather { axis: a } => one(gather(x()?, get(ins, 1, "indices")?, *a)?),
        Op::GatherND { batch_dims } => one(gather_nd(x()?, get(ins, 1, "indices")?, *batch_dims)?),
        Op::Slice => one(slice(ins)?),
        Op::Expand => {
            let x = x()?;
            let shape = get(ins, 1, "shape")?.ints_1d("shape")?;
            let shape: Vec<usize> = shape
                .iter()
                .map(|&d| usize::try_from(d).map_err(|_| OpError(format!("bad dim {d}"))))
                .collect::<OpResult<_>>()?;
            let dims = broadcast_shape(x.dims(), &shape)?;
            check_size(&dims, "Expand's output")?;
            one(Value::new(broadcast_to(&x.t, &dims)?, x.dt))
        }
        Op::Cast { to } => one(cast(x()?, *to)?),
        Op::Pad { mode } => one(pad(ins, *mode)?),
        Op::ConstantOfShape { dtype, value } => {
            let shape = get(ins, 0, "shape")?.ints_1d("shape")?;
            let dims: Vec<usize> = shape
                .iter()
                .map(|&d| usize::try_from(d).map_err(|_| OpError(format!("bad dim {d}"))))
                .collect::<OpResult<_>>()?;
            one(full(*value, &dims, *dtype)?)
        }
        Op::Range => one(range(ins)?),
        Op::QuantizeLinear {
            axis: a,
            block_size,
            out,
        } => one(quant::quantize_linear(
            x()?,
            get(ins, 1, "scale")?,
            opt(ins, 2),
            *a,
            *block_size,
            *out,
        )?),
        Op::DequantizeLinear {
            axis: a,
            block_size,
        } => one(quant::dequantize_linear(
            x()?,
            get(ins, 1, "scale")?,
            opt(ins, 2),
            *a,
            *block_size,
        )?),
        Op::DynamicQuantizeLinear => quant::dynamic_quantize_linear(x()?),
        Op::MatMulInteger => one(quant::matmul_integer(
            get(ins, 0, "a")?,
            get(ins, 1, "b")?,
            opt(ins, 2),
            opt(ins, 3),
        )?),
        Op::MatMulNBits {
            k,
            n,
            bits,
            block_size,
        } => one(quant::matmul_nbits(
            get(ins, 0, "a")?,
            get(ins, 1, "b")?,
            get(ins, 2, "scales")?,
            opt(ins, 3),
            opt(ins, 4),
            opt(ins, 5),
            (*k, *n, *bits, *block_size),
        )?),
    }
}

/// A float op on a float value, keeping its dtype tag.
fn fmap(x: &Value, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> OpResult<Value> {
    if !x.is_float() {
        fail!("needs a float input, got {}", x.dt)
    }
    Ok(Value::new(f(&x.t)?, x.dt))
}

/// An integer map, wrapped to the value's type.
fn int_map(x: &Value, f: impl Fn(i64) -> i64) -> OpResult<Value> {
    let v = x.to_i64s()?.into_iter().map(|v| wrap(f(v), x.dt)).collect();
    int_value(v, x.dims(), x.dt)
}

/// Both floats, both integers or both bool.
fn same_class(a: &Value, b: &Value) -> OpResult<()> {
    let class = |d: DType| (is_float(d), is_int(d));
    if class(a.dt) != class(b.dt) {
        fail!("input types {} and {} differ", a.dt, b.dt)
    }
    Ok(())
}

/// Both operands broadcast to one shape, as flat i64s.
fn int_pair(a: &Value, b: &Value) -> OpResult<(Vec<i64>, Vec<i64>, Vec<usize>)> {
    let dims = broadcast_shape(a.dims(), b.dims())?;
    let flat = |v: &Value| -> OpResult<Vec<i64>> {
        Value::new(broadcast_to(&v.t, &dims)?, v.dt).to_i64s()
    };
    Ok((flat(a)?, flat(b)?, dims))
}

fn arith(op: &Op, a: &Value, b: &Value) -> OpResult<Value> {
    same_class(a, b)?;
    if a.is_float() {
        let t = match op {
            Op::Add => a.t.broadcast_add(&b.t)?,
            Op::Sub => a.t.broadcast_sub(&b.t)?,
            Op::Mul => a.t.broadcast_mul(&b.t)?,
            _ => a.t.broadcast_div(&b.t)?,
        };
        return Ok(Value::new(t, a.dt));
    }
    if !a.is_int() {
        fail!("arithmetic on {}", a.dt)
    }
    let (x, y, dims) = int_pair(a, b)?;
    let mut out = Vec::with_capacity(x.len());
    for (p, q) in x.into_iter().zip(y) {
        let v = match op {
            Op::Add => p.wrapping_add(q),
            Op::Sub => p.wrapping_sub(q),
            Op::Mul => p.wrapping_mul(q),
            _ if q == 0 => fail!("integer division by zero"),
            _ => p.wrapping_div(q),
        };
        out.push(wrap(v, a.dt));
    }
    int_value(out, &dims, a.dt)
}

fn pow(x: &Value, y: &Value) -> OpResult<Value> {
    if !(x.is_float() || x.is_int()) || !(y.is_float() || y.is_int()) {
        fail!("Pow needs numbers, got {} and {}", x.dt, y.dt)
    }
    if x.is_float() && y.numel() == 1 {
        let e = y.scalar_f64("exponent")?;
        // powf keeps gradients and handles negative bases with integer exponents
        let t = match e {
            1.0 => x.t.clone(),
            2.0 => x.t.sqr()?,
            0.5 => x.t.sqrt()?,
            _ => x.t.powf(e)?,
        };
        return Ok(Value::new(t, x.dt));
    }
    let dims = broadcast_shape(x.dims(), y.dims())?;
    let flat = |v: &Value| Value::new(broadcast_to(&v.t, &dims)?, v.dt).to_f64s();
    let (bx, by) = (flat(x)?, flat(y)?);
    let v: Vec<f64> = bx.iter().zip(&by).map(|(b, e)| b.powf(*e)).collect();
    if x.is_int() {
        return int_value(
            v.into_iter().map(|f| wrap(f as i64, x.dt)).collect(),
            &dims,
            x.dt,
        );
    }
    let v = v.into_iter().map(|f| f as f32).collect();
    Ok(Value::new(Tensor::from_vec(v, dims, &Device::Cpu)?, x.dt))
}

fn compare(op: &Op, a: &Value, b: &Value) -> OpResult<Value> {
    same_class(a, b)?;
    let t = match op {
        Op::Equal => a.t.broadcast_eq(&b.t)?,
        Op::Greater => a.t.broadcast_gt(&b.t)?,
        Op::Less => a.t.broadcast_lt(&b.t)?,
        Op::GreaterOrEqual => a.t.broadcast_ge(&b.t)?,
        _ => a.t.broadcast_le(&b.t)?,
    };
    Ok(Value::bool(t))
}

fn clip(x: &Value, lo: Option<&Value>, hi: Option<&Value>) -> OpResult<Value> {
    if !(x.is_float() || x.is_int()) {
        fail!("Clip needs numbers, got {}", x.dt)
    }
    let mut t = x.t.clone();
    for (bound, is_min) in [(lo, true), (hi, false)] {
        let Some(b) = bound else { continue };
        same_class(x, b)?;
        t = if b.numel() == 1 {
            let v = b.t.flatten_all()?.get(0)?;
            if is_min {
                t.broadcast_maximum(&v)?
            } else {
                t.broadcast_minimum(&v)?
            }
        } else if is_min {
            t.broadcast_maximum(&b.t)?
        } else {
            t.broadcast_minimum(&b.t)?
        };
    }
    if t.dims() != x.dims() {
        fail!("Clip bounds change the shape {:?}", x.dims())
    }
    Ok(Value::new(t, x.dt))
}

/// numpy's matmul: batch dims broadcast, 1-D operands promoted and the
/// added dim removed again.
pub(crate) fn matmul(a: &Tensor, b: &Tensor) -> OpResult<Tensor> {
    if a.rank() == 0 || b.rank() == 0 {
        fail!("MatMul of a scalar")
    }
    let a1 = a.rank() == 1;
    let b1 = b.rank() == 1;
    let a = if a1 { a.unsqueeze(0)? } else { a.clone() };
    let b = if b1 { b.unsqueeze(1)? } else { b.clone() };
    let (ra, rb) = (a.rank(), b.rank());
    let (m, k) = (a.dims()[ra - 2], a.dims()[ra - 1]);
    let (k2, n) = (b.dims()[rb - 2], b.dims()[rb - 1]);
    if k != k2 {
        fail!(
            "MatMul of {:?} and {:?}: inner dims differ",
            a.dims(),
            b.dims()
        )
    }
    let y = if rb == 2 {
        // [..., M, K] · [K, N]: one matmul over all rows
        let lead = &a.dims()[..ra - 2];
        let rows: usize = lead.iter().product::<usize>() * m;
        let y = a.reshape((rows, k))?.matmul(&b)?;
        let mut dims = lead.to_vec();
        dims.extend([m, n]);
        y.reshape(dims)?
    } else {
        let batch = broadcast_shape(&a.dims()[..ra - 2], &b.dims()[..rb - 2])?;
        let mut da = batch.clone();
        da.extend([m, k]);
        let mut db = batch.clone();
        db.extend([k, n]);
        let aa = contiguous(&broadcast_to(&a, &da)?)?;
        let bb = contiguous(&broadcast_to(&b, &db)?)?;
        aa.matmul(&bb)?
    };
    let r = y.rank();
    let y = if b1 { y.squeeze(r - 1)? } else { y };
    Ok(if a1 {
        y.squeeze(y.rank() - if b1 { 1 } else { 2 })?
    } else {
        y
    })
}

fn gemm(
    a: &Value,
    b: &Value,
    c: Option<&Value>,
    (alpha, beta, ta, tb): (f32, f32, bool, bool),
) -> OpResult<Value> {
    if a.rank() != 2 || b.rank() != 2 {
        fail!(
            "Gemm needs 2-D a and b, got {:?} and {:?}",
            a.dims(),
            b.dims()
        )
    }
    let at = if ta { a.t.t()? } else { a.t.clone() };
    let bt = if tb { b.t.t()? } else { b.t.clone() };
    let mut y = matmul(&at, &bt)?;
    if alpha != 1.0 {
        y = y.affine(alpha as f64, 0.0)?;
    }
    if let Some(c) = c {
        if !c.is_float() {
            fail!("Gemm's c must be float, is {}", c.dt)
        }
        if broadcast_shape(c.dims(), y.dims())? != y.dims() {
            fail!("c {:?} does not broadcast to {:?}", c.dims(), y.dims())
        }
        let ct = if beta != 1.0 {
            c.t.affine(beta as f64, 0.0)?
        } else {
            c.t.clone()
        };
        y = y.broadcast_add(&ct)?;
    }
    Ok(Value::new(y, a.dt))
}

/// A per-channel `[C]` parameter shaped `[1, C, 1, …]` for rank `rank`.
fn channel(p: &Value, c: usize, rank: usize, what: &str) -> OpResult<Tensor> {
    if !p.is_float() || p.numel() != c {
        fail!("{what} {} {:?} does not have {c} channels", p.dt, p.dims())
    }
    let mut dims = vec![1; rank];
    dims[1] = c;
    Ok(p.t.reshape(dims)?)
}

fn batch_norm(ins: &Inputs<'_>, eps: f32) -> OpResult<Value> {
    let x = float(ins, 0, "x")?;
    if x.rank() < 2 {
        fail!("BatchNormalization needs [N, C, …], got {:?}", x.dims())
    }
    let (c, r) = (x.dims()[1], x.rank());
    let scale = channel(get(ins, 1, "scale")?, c, r, "scale")?;
    let bias = channel(get(ins, 2, "bias")?, c, r, "bias")?;
    let mean = channel(get(ins, 3, "mean")?, c, r, "mean")?;
    let var = channel(get(ins, 4, "var")?, c, r, "var")?;
    let a = scale.broadcast_div(&(var + eps as f64)?.sqrt()?)?;
    let b = bias.broadcast_sub(&mean.broadcast_mul(&a)?)?;
    Ok(Value::new(x.t.broadcast_mul(&a)?.broadcast_add(&b)?, x.dt))
}

/// LayerNormalization over `axis..`; outputs y, then optionally the mean
/// and the inverse standard deviation.
fn layer_norm(ins: &Inputs<'_>, ax: i64, eps: f32, n_out: usize) -> OpResult<Vec<Value>> {
    let x = float(ins, 0, "x")?;
    let scale = float(ins, 1, "scale")?;
    let a = axis(ax, x.rank(), 0)?;
    let dims = x.dims();
    let outer: usize = dims[..a].iter().product();
    let inner: usize = dims[a..].iter().product();
    let check = |p: &Value| -> OpResult<()> {
        if broadcast_shape(p.dims(), &dims[a..])? != dims[a..] {
            fail!(
                "{:?} does not broadcast to the normalised dims {:?}",
                p.dims(),
                &dims[a..]
            )
        }
        Ok(())
    };
    check(scale)?;
    let xf = x.t.reshape((outer, inner))?;
    let mean = xf.mean_keepdim(1)?;
    let xc = xf.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(1)?;
    let inv = (var + eps as f64)?.sqrt()?.recip()?;
    let mut y = xc
        .broadcast_mul(&inv)?
        .reshape(dims)?
        .broadcast_mul(&scale.t)?;
    if let Some(b) = opt(ins, 2) {
        if !b.is_float() {
            fail!("bias must be float, is {}", b.dt)
        }
        check(b)?;
        y = y.broadcast_add(&b.t)?;
    }
    let mut out = vec![Value::new(y, x.dt)];
    let mut stat_dims = dims[..a].to_vec();
    stat_dims.resize(dims.len(), 1);
    if n_out > 1 {
        out.push(Value::f32(mean.reshape(stat_dims.clone())?));
    }
    if n_out > 2 {
        out.push(Value::f32(inv.reshape(stat_dims)?));
    }
    Ok(out)
}

fn reduce(x: &Value, axes: &[i64], keep: bool, mean: bool) -> OpResult<Value> {
    let rank = x.rank();
    let mut ax: Vec<usize> = if axes.is_empty() {
        (0..rank).collect()
    } else {
        axes.iter()
            .map(|&a| axis(a, rank, 0))
            .collect::<OpResult<_>>()?
    };
    ax.sort_unstable();
    ax.dedup();
    let keep_dims: Vec<usize> = x
        .dims()
        .iter()
        .enumerate()
        .map(|(i, &d)| if ax.contains(&i) { 1 } else { d })
        .collect();
    let out_dims: Vec<usize> = if keep {
        keep_dims.clone()
    } else {
        x.dims()
            .iter()
            .enumerate()
            .filter(|(i, _)| !ax.contains(i))
            .map(|(_, &d)| d)
            .collect()
    };
    if x.is_float() {
        let t = if ax.is_empty() {
            x.t.clone()
        } else if mean {
            x.t.mean_keepdim(ax)?
        } else {
            x.t.sum_keepdim(ax)?
        };
        return Ok(Value::new(t.reshape(out_dims)?, x.dt));
    }
    if !x.is_int() {
        fail!("reduction of {}", x.dt)
    }
    // integers: wrapping sums here, where candle's would panic on overflow
    let v = x.to_i64s()?;
    let n_out: usize = keep_dims.iter().product();
    let mut acc = vec![0i64; n_out];
    let dims = x.dims();
    let mut idx = vec![0usize; rank];
    for val in v {
        let mut o = 0;
        for (i, &d) in keep_dims.iter().enumerate() {
            o = o * d + if d == 1 { 0 } else { idx[i] };
        }
        acc[o] = acc[o].wrapping_add(val);
        for i in (0..rank).rev() {
            idx[i] += 1;
            if idx[i] < dims[i] {
                break;
            }
            idx[i] = 0;
        }
    }
    let count = (dims.iter().product::<usize>() / n_out.max(1)).max(1) as i64;
    let acc = acc
        .into_iter()
        .map(|s| wrap(if mean { s / count } else { s }, x.dt))
        .collect();
    int_value(acc, &out_dims, x.dt)
}

/// Reshape's target: 0 copies the input dim (unless `allow_zero`), one -1
/// is inferred.
pub(crate) fn reshape_dims(src: &[usize], shape: &[i64], allow_zero: bool) -> OpResult<Vec<usize>> {
    let total: usize = src.iter().product();
    let mut dims = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &d) in shape.iter().enumerate() {
        dims.push(match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                1
            }
            -1 => fail!("shape {shape:?} has more than one -1"),
            0 if !allow_zero => match src.get(i) {
                Some(&s) => s,
                None => fail!("shape {shape:?} copies dim {i} of {src:?}"),
            },
            d if d >= 0 => d as usize,
            d => fail!("bad dim {d} in shape {shape:?}"),
        });
    }
    if let Some(i) = infer {
        let known = crate::tensor::checked_numel(&dims)
            .ok_or_else(|| OpError(format!("shape {shape:?} overflows")))?;
        if known == 0 || !total.is_multiple_of(known) {
            fail!("cannot reshape {src:?} to {shape:?}")
        }
        dims[i] = total / known;
    }
    if crate::tensor::checked_numel(&dims) != Some(total) {
        fail!("cannot reshape {src:?} ({total} elements) to {shape:?}")
    }
    Ok(dims)
}

/// Shape's `start..end`, clamped as ONNX does.
pub(crate) fn shape_slice(dims: &[usize], start: i64, end: Option<i64>) -> Vec<usize> {
    let r = dims.len() as i64;
    let norm = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (s, e) = (norm(start), norm(end.unwrap_or(r)));
    if s >= e {
        Vec::new()
    } else {
        dims[s..e].to_vec()
    }
}

fn concat(ins: &Inputs<'_>, ax: i64) -> OpResult<Value> {
    let vals: Vec<&Value> = ins
        .iter()
        .enumerate()
        .map(|(i, v)| v.ok_or_else(|| OpError(format!("missing input {i}"))))
        .collect::<OpResult<_>>()?;
    let Some(first) = vals.first() else {
        fail!("Concat of nothing")
    };
    if first.rank() == 0 {
        fail!("Concat of scalars")
    }
    let a = axis(ax, first.rank(), 0)?;
    let mut dims = first.dims().to_vec();
    dims[a] = 0;
    for v in &vals {
        same_class(first, v)?;
        let ok = v.rank() == first.rank()
            && v.dims()
                .iter()
                .zip(first.dims())
                .enumerate()
                .all(|(i, (x, y))| i == a || x == y);
        if !ok {
            fail!(
                "cannot concatenate {:?} and {:?} on axis {a}",
                first.dims(),
                v.dims()
            )
        }
        dims[a] += v.dims()[a];
    }
    let parts: Vec<&Tensor> = vals
        .iter()
        .filter(|v| v.dims()[a] > 0)
        .map(|v| &v.t)
        .collect();
    let t = match parts.len() {
        0 => Tensor::zeros(dims, first.t.dtype(), &Device::Cpu)?,
        1 => parts[0].clone(),
        _ => Tensor::cat(&parts, a)?,
    };
    Ok(Value::new(t, first.dt))
}

/// In-range indices along a dim of `size` (negative ones count from the end).
fn indices(raw: &[i64], size: usize) -> OpResult<Vec<usize>> {
    raw.iter()
        .map(|&i| {
            let j = if i < 0 { i + size as i64 } else { i };
            if j < 0 || j >= size as i64 {
                fail!("index {i} is out of range for a dim of {size}")
            }
            Ok(j as usize)
        })
        .collect()
}

fn gather(data: &Value, idx: &Value, ax: i64) -> OpResult<Value> {
    if !idx.is_int() {
        fail!("indices must be integers, are {}", idx.dt)
    }
    if data.rank() == 0 {
        fail!("Gather from a scalar")
    }
    let a = axis(ax, data.rank(), 0)?;
    let ids = indices(&idx.to_i64s()?, data.dims()[a])?;
    let mut dims = data.dims()[..a].to_vec();
    dims.extend_from_slice(idx.dims());
    dims.extend_from_slice(&data.dims()[a + 1..]);
    let t = select(&data.t, &ids, a)?;
    Ok(Value::new(t.reshape(dims)?, data.dt))
}

fn gather_nd(data: &Value, idx: &Value, b: usize) -> OpResult<Value> {
    if !idx.is_int() {
        fail!("indices must be integers, are {}", idx.dt)
    }
    let (dd, id) = (data.dims(), idx.dims());
    let Some(&m) = id.last() else {
        fail!("indices must have rank ≥ 1")
    };
    if b >= dd.len().min(id.len()) || m < 1 || b + m > dd.len() || dd[..b] != id[..b] {
        fail!("indices {id:?} do not fit data {dd:?} with batch_dims {b}")
    }
    let batch: usize = dd[..b].iter().product();
    let indexed = &dd[b..b + m];
    let per_batch: usize = indexed.iter().product();
    let slice: usize = dd[b + m..].iter().product();
    let raw = idx.to_i64s()?;
    let tuples = raw.len() / m;
    let per_batch_tuples = tuples / batch.max(1);
    let mut rows = Vec::with_capacity(tuples);
    for (t, tuple) in raw.chunks_exact(m).enumerate() {
        let mut row = 0;
        for (j, (&i, &size)) in tuple.iter().zip(indexed).enumerate() {
            let k = indices(&[i], size).map_err(|e| OpError(format!("coordinate {j}: {}", e.0)))?;
            row = row * size + k[0];
        }
        rows.push((t / per_batch_tuples.max(1)) * per_batch + row);
    }
    let flat = data.t.reshape((batch * per_batch, slice))?;
    let mut dims = id[..id.len() - 1].to_vec();
    dims.extend_from_slice(&dd[b + m..]);
    Ok(Value::new(select(&flat, &rows, 0)?.reshape(dims)?, data.dt))
}

/// The elements Slice takes along a dim of `size`.
pub(crate) fn slice_range(start: i64, end: i64, step: i64, size: usize) -> Vec<usize> {
    let n = size as i64;
    let fix = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
    let (s, e) = (fix(start), fix(end));
    let (s, e) = if step > 0 {
        (s.clamp(0, n), e.clamp(0, n))
    } else {
        (s.clamp(0, n - 1), e.clamp(-1, n - 1))
    };
    let mut out = Vec::new();
    let mut i = s;
    while (step > 0 && i < e) || (step < 0 && i > e) {
        out.push(i as usize);
        i += step;
    }
    out
}

fn slice(ins: &Inputs<'_>) -> OpResult<Value> {
    let x = get(ins, 0, "data")?;
    let starts = get(ins, 1, "starts")?.ints_1d("starts")?;
    let ends = get(ins, 2, "ends")?.ints_1d("ends")?;
    let n = starts.len();
    let axes = match opt(ins, 3) {
        Some(a) => a.ints_1d("axes")?,
        None => (0..n as i64).collect(),
    };
    let steps = match opt(ins, 4) {
        Some(s) => s.ints_1d("steps")?,
        None => vec![1; n],
    };
    if ends.len() != n || axes.len() != n || steps.len() != n {
        fail!("starts, ends, axes and steps differ in length")
    }
    let mut t = x.t.clone();
    let mut seen = Vec::new();
    for i in 0..n {
        let a = axis(axes[i], x.rank(), 0)?;
        if seen.contains(&a) {
            fail!("axis {a} repeated")
        }
        seen.push(a);
        if steps[i] == 0 {
            fail!("step 0")
        }
        let size = t.dims()[a];
        let idx = slice_range(starts[i], ends[i], steps[i], size);
        if steps[i] == 1 && idx.len() == size {
            continue;
        }
        t = if steps[i] == 1 {
            if idx.is_empty() {
                let mut dims = t.dims().to_vec();
                dims[a] = 0;
                Tensor::zeros(dims, t.dtype(), &Device::Cpu)?
            } else {
                t.narrow(a, idx[0], idx.len())?
            }
        } else {
            select(&t, &idx, a)?
        };
    }
    Ok(Value::new(t, x.dt))
}

fn cast(x: &Value, to: DType) -> OpResult<Value> {
    let dev = &Device::Cpu;
    if x.dt == to {
        return Ok(x.clone());
    }
    Ok(match to {
        DType::F32 | DType::F16 | DType::Bf16 => {
            let t = x.t.to_dtype(CDType::F32)?;
            // round to the narrower float, computing on in f32
            let t = match to {
                DType::F16 => t.to_dtype(CDType::F16)?.to_dtype(CDType::F32)?,
                DType::Bf16 => t.to_dtype(CDType::BF16)?.to_dtype(CDType::F32)?,
                _ => t,
            };
            Value::new(t, to)
        }
        DType::Bool => Value::bool(x.t.ne(0f64)?),
        d if is_int(d) => {
            let v: Vec<i64> = if x.is_float() {
                // truncation toward zero (saturating; NaN to 0), then C's wrap
                x.to_f64s()?
                    .into_iter()
                    .map(|f| wrap(f as i64, d))
                    .collect()
            } else {
                x.to_i64s()?.into_iter().map(|v| wrap(v, d)).collect()
            };
            Value::new(Tensor::from_vec(v, x.dims(), dev)?, d)
        }
        d => fail!("cannot cast to {d}"),
    })
}

fn pad(ins: &Inputs<'_>, mode: PadMode) -> OpResult<Value> {
    let x = get(ins, 0, "data")?;
    let pads = get(ins, 1, "pads")?.ints_1d("pads")?;
    let rank = x.rank();
    let axes: Vec<usize> = match opt(ins, 3) {
        Some(a) => a
            .ints_1d("axes")?
            .iter()
            .map(|&a| axis(a, rank, 0))
            .collect::<OpResult<_>>()?,
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() {
        fail!("{} pads for {} axes", pads.len(), axes.len())
    }
    let value = match opt(ins, 2) {
        Some(v) if v.numel() > 0 => v.scalar_f64("constant_value")?,
        _ => 0.0,
    };
    let mut t = x.t.clone();
    for (i, &a) in axes.iter().enumerate() {
        let (mut b, mut e) = (pads[i], pads[i + axes.len()]);
        let limit = super::value::MAX_ELEMENTS as u64;
        if b.unsigned_abs() > limit || e.unsigned_abs() > limit {
            fail!("pads {pads:?} are too large")
        }
        // negative pads crop
        let size = t.dims()[a] as i64;
        if b < 0 || e < 0 {
            let cb = (-b).max(0);
            let ce = (-e).max(0);
            if cb + ce > size {
                fail!("pads {pads:?} crop more than axis {a} has")
            }
            t = t.narrow(a, cb as usize, (size - cb - ce) as usize)?;
            b = b.max(0);
            e = e.max(0);
        }
        if b == 0 && e == 0 {
            continue;
        }
        let size = t.dims()[a];
        let mut dims = t.dims().to_vec();
        dims[a] = size + b as usize + e as usize;
        check_size(&dims, "Pad's output")?;
        t = match mode {
            PadMode::Constant => {
                let mut parts = Vec::with_capacity(3);
                let mut d = t.dims().to_vec();
                if b > 0 {
                    d[a] = b as usize;
                    parts.push(full(value, &d, x.dt)?.t);
                }
                parts.push(t.clone());
                if e > 0 {
                    d[a] = e as usize;
                    parts.push(full(value, &d, x.dt)?.t);
                }
                Tensor::cat(&parts, a)?
            }
            PadMode::Edge | PadMode::Reflect => {
                if size == 0 {
                    fail!("cannot {mode:?}-pad an empty axis {a}")
                }
                let n = size as i64;
                let idx: Vec<usize> = (-b..n + e)
                    .map(|p| {
                        (if mode == PadMode::Edge || n == 1 {
                            p.clamp(0, n - 1)
                        } else {
                            let period = 2 * (n - 1);
                            let m = p.rem_euclid(period);
                            if m >= n {
                                period - m
                            } else {
                                m
                            }
                        }) as usize
                    })
                    .collect();
                select(&t, &idx, a)?
            }
        };
    }
    Ok(Value::new(t, x.dt))
}

fn range(ins: &Inputs<'_>) -> OpResult<Value> {
    let (s, l, d) = (
        get(ins, 0, "start")?,
        get(ins, 1, "limit")?,
        get(ins, 2, "delta")?,
    );
    if s.is_int() {
        let (s0, l0, d0) = (
            s.to_i64s_one("start")?,
            l.to_i64s_one("limit")?,
            d.to_i64s_one("delta")?,
        );
        if d0 == 0 {
            fail!("delta 0")
        }
        let span = l0 as i128 - s0 as i128;
        let n = ((span + d0 as i128 - d0.signum() as i128) / d0 as i128).max(0);
        if n > super::value::MAX_ELEMENTS as i128 {
            fail!("Range of {n} elements")
        }
        let n = n as usize;
        let v = (0..n as i64)
            .map(|i| s0.wrapping_add(i.wrapping_mul(d0)))
            .collect();
        return int_value(v, &[n], s.dt);
    }
    if !s.is_float() {
        fail!("Range of {}", s.dt)
    }
    let (s0, l0, d0) = (
        s.scalar_f64("start")? as f32,
        l.scalar_f64("limit")? as f32,
        d.scalar_f64("delta")? as f32,
    );
    if d0 == 0.0 || !d0.is_finite() {
        fail!("delta {d0}")
    }
    let n = ((l0 - s0) / d0).ceil().max(0.0);
    if !n.is_finite() || n as usize > super::value::MAX_ELEMENTS {
        fail!("Range of {n} elements")
    }
    let n = n as usize;
    let v: Vec<f32> = (0..n).map(|i| s0 + i as f32 * d0).collect();
    Ok(Value::new(Tensor::from_vec(v, n, &Device::Cpu)?, s.dt))
}

impl Value {
    fn to_i64s_one(&self, what: &str) -> OpResult<i64> {
        if self.numel() != 1 {
            fail!("{what} must be a scalar, has shape {:?}", self.dims())
        }
        Ok(self.to_i64s()?[0])
    }
}
