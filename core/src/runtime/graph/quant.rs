//! The quantization ops: QuantizeLinear and DequantizeLinear (per tensor,
//! per axis, blocked), DynamicQuantizeLinear, MatMulInteger (exact) and
//! com.microsoft MatMulNBits.

use candle_core::{DType as CDType, Device, Tensor};

use super::eval::matmul;
use super::value::{axis, fail, int_range, int_value, OpResult, Value};
use crate::DType;

/// A scale or zero point shaped to broadcast against `x_dims`: one element
/// (per tensor), a 1-D vector along `axis` (per axis), or with `block > 0`
/// a tensor of x's rank whose `axis` dim has one entry per block.
fn expand_param(
    p: &Tensor,
    x_dims: &[usize],
    ax: i64,
    block: usize,
    what: &str,
) -> OpResult<Tensor> {
    let rank = x_dims.len();
    if block == 0 && p.elem_count() == 1 {
        return Ok(p.reshape(vec![1; rank])?);
    }
    let a = axis(ax, rank, 0)?;
    let d = x_dims[a];
    if block == 0 {
        if p.rank() != 1 || p.elem_count() != d {
            fail!(
                "{what} {:?} is neither a scalar nor one per entry of axis {a} ({d})",
                p.dims()
            )
        }
        let mut dims = vec![1; rank];
        dims[a] = d;
        return Ok(p.reshape(dims)?);
    }
    let blocks = d.div_ceil(block);
    let mut want = x_dims.to_vec();
    want[a] = blocks;
    if p.dims() != want.as_slice() {
        fail!(
            "{what} {:?} should be {want:?} for blocks of {block} along axis {a}",
            p.dims()
        )
    }
    let idx: Vec<usize> = (0..d).map(|i| i / block).collect();
    super::value::select(p, &idx, a)
}

/// Rounds half to even, as ONNX's quantizers do.
fn round_even(t: &Tensor) -> OpResult<Tensor> {
    let v: Vec<f32> = t
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f32::round_ties_even)
        .collect();
    Ok(Tensor::from_vec(v, t.dims(), &Device::Cpu)?)
}

/// `saturate(round(x / scale) + zero_point)` into `dt`.
fn quantize(x: &Tensor, scale: &Tensor, zp: Option<&Tensor>, dt: DType) -> OpResult<Value> {
    let (lo, hi) = int_range(dt)?;
    let q = round_even(&x.broadcast_div(scale)?)?;
    let q = match zp {
        Some(z) => q
            .to_dtype(CDType::F64)?
            .broadcast_add(&z.to_dtype(CDType::F64)?)?,
        None => q.to_dtype(CDType::F64)?,
    };
    let v: Vec<i64> = q
        .flatten_all()?
        .to_vec1::<f64>()?
        .into_iter()
        // NaN saturates to 0 (`as` maps it there) before the clamp
        .map(|f| (f.clamp(lo as f64, hi as f64) as i64).clamp(lo, hi))
        .collect();
    int_value(v, x.dims(), dt)
}

pub(super) fn quantize_linear(
    x: &Value,
    scale: &Value,
    zp: Option<&Value>,
    ax: i64,
    block: usize,
    out: DType,
) -> OpResult<Value> {
    if !x.is_float() || !scale.is_float() {
        fail!(
            "QuantizeLinear needs float x and scale, got {} and {}",
            x.dt,
            scale.dt
        )
    }
    let dt = match zp {
        Some(z) if !z.is_int() => fail!("zero point must be an integer type, is {}", z.dt),
        Some(z) => z.dt,
        None => out,
    };
    let s = expand_param(&scale.t, x.dims(), ax, block, "scale")?;
    let z = match zp {
        Some(z) => {
            if z.dims() != scale.dims() {
                fail!(
                    "zero point {:?} and scale {:?} differ",
                    z.dims(),
                    scale.dims()
                )
            }
            Some(expand_param(&z.t, x.dims(), ax, block, "zero point")?)
        }
        None => None,
    };
    quantize(&x.t, &s, z.as_ref(), dt)
}

pub(super) fn dequantize_linear(
    x: &Value,
    scale: &Value,
    zp: Option<&Value>,
    ax: i64,
    block: usize,
) -> OpResult<Value> {
    if !x.is_int() || !scale.is_float() {
        fail!(
            "DequantizeLinear needs integer x and float scale, got {} and {}",
            x.dt,
            scale.dt
        )
    }
    let s = expand_param(&scale.t, x.dims(), ax, block, "scale")?;
    let centred = match zp {
        Some(z) => {
            if !z.is_int() || z.dims() != scale.dims() {
                fail!(
                    "zero point {} {:?} does not match x {} and scale {:?}",
                    z.dt,
                    z.dims(),
                    x.dt,
                    scale.dims()
                )
            }
            // the operands are at most 32-bit, so the i64 difference is exact
            x.t.broadcast_sub(&expand_param(&z.t, x.dims(), ax, block, "zero point")?)?
        }
        None => x.t.clone(),
    };
    let y = centred.to_dtype(CDType::F32)?.broadcast_mul(&s)?;
    Ok(Value::new(y, scale.dt))
}

/// ONNX's DynamicQuantizeLinear: uint8, the range widened to include 0.
pub(super) fn dynamic_quantize_linear(x: &Value) -> OpResult<Vec<Value>> {
    if !x.is_float() {
        fail!("DynamicQuantizeLinear needs a float input, got {}", x.dt)
    }
    let v = x.to_f32s()?;
    let lo = v.iter().copied().fold(0f32, f32::min);
    let hi = v.iter().copied().fold(0f32, f32::max);
    let scale = (hi - lo) / 255.0;
    // all zeros: ONNX divides by a zero scale; everything is 0 anyway
    let (zp, q): (f32, Vec<i64>) = if scale == 0.0 || !scale.is_finite() {
        (0.0, vec![0; v.len()])
    } else {
        let zp = (0.0 - lo / scale).clamp(0.0, 255.0).round_ties_even();
        let q = v
            .iter()
            .map(|&f| ((f / scale).round_ties_even() + zp).clamp(0.0, 255.0) as i64)
            .collect();
        (zp, q)
    };
    let dev = &Device::Cpu;
    Ok(vec![
        int_value(q, x.dims(), DType::U8)?,
        Value::f32(Tensor::new(scale, dev)?),
        int_value(vec![zp as i64], &[], DType::U8)?,
    ])
}

/// MatMulInteger: `(a - a_zp) · (b - b_zp)` exactly, as i32.
pub(super) fn matmul_integer(
    a: &Value,
    b: &Value,
    azp: Option<&Value>,
    bzp: Option<&Value>,
) -> OpResult<Value> {
    if !a.is_int() || !b.is_int() {
        fail!(
            "MatMulInteger needs integer inputs, got {} and {}",
            a.dt,
            b.dt
        )
    }
    // a's zero point per row: a vector of M entries is a column
    let centre = |x: &Value, zp: Option<&Value>, per_row: bool| -> OpResult<Tensor> {
        let Some(z) = zp else {
            return Ok(x.t.clone());
        };
        if !z.is_int() {
            fail!("zero points must be integers, got {}", z.dt)
        }
        let z = if z.rank() == 1 && z.numel() > 1 && per_row {
            z.t.reshape((z.numel(), 1))?
        } else {
            z.t.clone()
        };
        Ok(x.t.broadcast_sub(&z)?)
    };
    let a = centre(a, azp, true)?;
    let b = centre(b, bzp, false)?;
    // products of 8-bit values summed in f64 are exact integers (< 2^53)
    let y = matmul(&a.to_dtype(CDType::F64)?, &b.to_dtype(CDType::F64)?)?;
    Ok(Value::new(y.to_dtype(CDType::I64)?, DType::I32))
}

/// com.microsoft MatMulNBits: `a · dequant(b)ᵀ` with b `[N, blocks, blob]`
/// packed low bits first, per-block scales and optional zero points (packed
/// like b, or float), then an optional bias.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_nbits(
    a: &Value,
    b: &Value,
    scales: &Value,
    zp: Option<&Value>,
    g_idx: Option<&Value>,
    bias: Option<&Value>,
    (k, n, bits, block): (usize, usize, usize, usize),
) -> OpResult<Value> {
    if !a.is_float() || !scales.is_float() {
        fail!(
            "MatMulNBits needs float a and scales, got {} and {}",
            a.dt,
            scales.dt
        )
    }
    if g_idx.is_some() {
        fail!("g_idx (act order) is not supported")
    }
    if !matches!(bits, 2 | 4 | 8) {
        fail!("{bits}-bit weights are not supported (2, 4 or 8)")
    }
    if block < 16 || !block.is_power_of_two() {
        fail!("block_size {block} must be a power of two ≥ 16")
    }
    if a.dims().last() != Some(&k) {
        fail!("a {:?} does not end in K = {k}", a.dims())
    }
    let blocks = k.div_ceil(block);
    let blob = block * bits / 8;
    let size = |dims: &[usize]| crate::tensor::checked_numel(dims).unwrap_or(usize::MAX);
    if !b.is_int() || b.numel() != size(&[n, blocks, blob]) {
        fail!(
            "b {} {:?} should be {n}×{blocks}×{blob} bytes",
            b.dt,
            b.dims()
        )
    }
    if scales.numel() != size(&[n, blocks]) {
        fail!(
            "scales {:?} should have {} entries",
            scales.dims(),
            n * blocks
        )
    }
    let codes = b.to_i64s()?;
    let sc = scales.to_f32s()?;
    let per_byte = 8 / bits;
    let mask = (1i64 << bits) - 1;
    let code = |bytes: &[i64], i: usize| (bytes[i / per_byte] >> ((i % per_byte) * bits)) & mask;
    let zps: Vec<f32> = match zp {
        None => vec![(1u32 << (bits - 1)) as f32; n * blocks],
        Some(z) if z.is_float() => {
            if z.numel() != n * blocks {
                fail!(
                    "float zero points {:?} should have {} entries",
                    z.dims(),
                    n * blocks
                )
            }
            z.to_f32s()?
        }
        Some(z) => {
            let per_col = (blocks * bits).div_ceil(8);
            if z.numel() != n * per_col {
                fail!(
                    "packed zero points {:?} should be {} bytes",
                    z.dims(),
                    n * per_col
                )
            }
            let zb = z.to_i64s()?;
            (0..n * blocks)
                .map(|i| code(&zb[(i / blocks) * per_col..], i % blocks) as f32)
                .collect()
        }
    };
    let mut w = vec![0f32; n * k];
    for col in 0..n {
        for blk in 0..blocks {
            let bytes = &codes[(col * blocks + blk) * blob..][..blob];
            let (s, z) = (sc[col * blocks + blk], zps[col * blocks + blk]);
            for j in 0..block.min(k - blk * block) {
                w[col * k + blk * block + j] = (code(bytes, j) as f32 - z) * s;
            }
        }
    }
    let w = Tensor::from_vec(w, (n, k), &Device::Cpu)?;
    let mut y = matmul(&a.t, &w.t()?)?;
    if let Some(bias) = bias {
        if bias.numel() != n {
            fail!("bias {:?} should have {n} entries", bias.dims())
        }
        y = y.broadcast_add(&bias.t.reshape(n)?)?;
    }
    Ok(Value::new(y, a.dt))
}
