//! Integer kernels of full-int8 files, as LiteRT runs them by default
//! (its XNNPACK delegate), so that `edgec run` on a `.tflite` gives the
//! runtime's integer outputs and not a float approximation of them:
//!
//! - CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED accumulate
//!   `Σ (x − zx)·w + bias` exactly (integer values in f32, checked to stay
//!   below 2²⁴), multiply by the per-channel `(sx·sw[c])/sy` rounded to
//!   f32 as XNNPACK computes it, and round half to even (XNNPACK's fp32
//!   requantization), then add the output zero point, saturate and clamp
//!   to the fused activation's integer bounds.
//! - ADD is XNNPACK's fixed-point sum: 21-bit multipliers of sa/sy and
//!   sb/sy, a rounding bias and an arithmetic shift, in i64.
//! - MEAN sums the integers and requantizes `(Σx − n·zx)·(sx/(n·sy))` as
//!   above.
//!
//! Each rule was matched bit for bit against ai-edge-litert 2.3.0 on
//! single-op models with EfficientNet-Lite0's parameters (ties included
//! for conv and FC). Ops outside these cases keep the float simulation.

use edgec_core::{DType, Node, Op};

use super::{f32_bytes, owned, Act, Reader, Res};

/// The largest |accumulator| f32 holds exactly.
const EXACT_F32: f64 = (1u64 << 24) as f64;

/// A conv or FC whose input, filter, bias and output follow the int8
/// spec, as the f32 constants of its integer computation.
pub(super) struct IntLinear {
    /// Filter codes as f32, in the IR's layout (output channels first).
    pub(super) w: Vec<f32>,
    pub(super) w_shape: Vec<usize>,
    /// The bias codes' low 16 bits, and the rest (when not all 0), as f32.
    pub(super) bias: Option<Vec<f32>>,
    pub(super) bias_hi: Option<Vec<f32>>,
    /// Per output channel `(sx·sw[c])/sy`.
    pub(super) m: Vec<f32>,
    /// The input's zero point.
    pub(super) zx: i64,
}

impl Reader {
    /// The integer codes of quantized activation `t` (NCHW when `nchw`).
    pub(super) fn codes(&mut self, t: usize, nchw: bool) -> Res<String> {
        let cached = if nchw {
            &self.codes_nchw[t]
        } else {
            &self.codes[t]
        };
        if let Some(c) = cached {
            return Ok(c.clone());
        }
        let other = if nchw {
            self.codes[t].clone()
        } else {
            self.codes_nchw[t].clone()
        };
        let base = format!("{}{}.codes", self.names[t], if nchw { ".nchw" } else { "" });
        let out = self.fresh(&base);
        match other {
            Some(c) => {
                let perm = if nchw {
                    vec![0, 3, 1, 2]
                } else {
                    vec![0, 2, 3, 1]
                };
                self.emit(Op::Transpose { perm }, vec![c], out.clone());
            }
            None => {
                // the dequantized value quantizes back to its codes exactly
                let (scale, zp, dt) = self
                    .act_quant(t)?
                    .ok_or_else(|| format!("tensor {} is not quantized", self.names[t]))?;
                let v = if nchw {
                    self.val_nchw(t)?
                } else {
                    self.val(t)?
                };
                self.quantize_into(v, (scale, zp, dt), out.clone())?;
            }
        }
        if nchw {
            self.codes_nchw[t] = Some(out.clone());
        } else {
            self.codes[t] = Some(out.clone());
        }
        Ok(out)
    }

    /// `x − zx` of quantized activation `t` as integer-valued f32.
    pub(super) fn centred(&mut self, t: usize, zx: i64, nchw: bool) -> Res<String> {
        let c = self.codes(t, nchw)?;
        let f = self.fresh(&format!("{c}.f32"));
        self.emit(Op::Cast { to: DType::F32 }, vec![c], f.clone());
        if zx == 0 {
            return Ok(f);
        }
        let z = self.const_scalar(&format!("{f}.zero_point"), zx as f32)?;
        let out = self.fresh(&format!("{f}.centred"));
        self.emit(Op::Sub, vec![f, z], out.clone());
        Ok(out)
    }

    /// The integer plan of a conv or FC, or None where the float simulation
    /// applies (float or hybrid tensors, zero points on the filter, a fused
    /// activation without integer bounds, or accumulators f32 cannot hold).
    /// `w` are the filter codes in the IR's layout (`w_shape`, output
    /// channels first); `wq` their (scales, zero points).
    pub(super) fn int_linear(
        &mut self,
        x: usize,
        (w, w_shape): (&[i8], &[usize]),
        wq: (&[f32], &[i64]),
        bias: Option<usize>,
        o: usize,
        act: Act,
    ) -> Res<Option<IntLinear>> {
        let out_ch = w_shape.first().copied().unwrap_or(0);
        let (Some((sx, zx, DType::I8)), Some((sy, zy, DType::I8))) =
            (self.act_quant(x)?, self.act_quant(o)?)
        else {
            return Ok(None);
        };
        let (sw, zw) = wq;
        if zw.iter().any(|&z| z != 0)
            || !(sw.len() == 1 || sw.len() == out_ch)
            || out_ch == 0
            || !w.len().is_multiple_of(out_ch)
            || act_bounds(act, sy, zy, DType::I8).is_none()
        {
            return Ok(None);
        }
        let b = match bias {
            None => None,
            Some(b) => {
                let Some(_) = self.const_quant(b)? else {
                    return Ok(None);
                };
                let bt = self.const_tensor(b)?;
                if bt.dtype != DType::I32 || bt.shape.iter().product::<usize>() != out_ch {
                    return Ok(None);
                }
                let v: Vec<i64> = bt
                    .bytes()
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64)
                    .collect();
                Some(v)
            }
        };
        // The bias splits into its low 16 bits, summed exactly with the
        // products, and a high part added last: that one f32 addition
        // rounds the exact int32 accumulator once, as XNNPACK's
        // int-to-float conversion does (biases of near-dead channels reach
        // 2³⁰). Every partial sum before it is bounded by Σ|w|·255 + 2¹⁶.
        let split = b.map(|b| {
            let hi: Vec<i64> = b.iter().map(|&v| (v >> 16) << 16).collect();
            let lo: Vec<i64> = b.iter().zip(&hi).map(|(v, h)| v - h).collect();
            (lo, hi)
        });
        let per = w.len() / out_ch;
        for c in 0..out_ch {
            let wsum: f64 = w[c * per..(c + 1) * per]
                .iter()
                .map(|&v| (v as f64).abs())
                .sum();
            if wsum * 255.0 + 65536.0 >= EXACT_F32 {
                return Ok(None);
            }
        }
        let m = (0..out_ch)
            .map(|c| (sx * sw[if sw.len() == 1 { 0 } else { c }]) / sy)
            .collect();
        Ok(Some(IntLinear {
            w: w.iter().map(|&v| v as f32).collect(),
            w_shape: w_shape.to_vec(),
            bias_hi: split
                .as_ref()
                .filter(|(_, hi)| hi.iter().any(|&h| h != 0))
                .map(|(_, hi)| hi.iter().map(|&v| v as f32).collect()),
            bias: split.map(|(lo, _)| lo.into_iter().map(|v| v as f32).collect()),
            m,
            zx,
        }))
    }

    /// The integer plan of a FULLY_CONNECTED with filter `w` `[N, K]`.
    pub(super) fn int_fc_plan(
        &mut self,
        x: usize,
        w: usize,
        ins: &[Option<usize>],
        o: usize,
        act: Act,
    ) -> Res<Option<IntLinear>> {
        if !self.is_const(w) {
            return Ok(None);
        }
        let Some(q) = self.const_quant(w)? else {
            return Ok(None);
        };
        let wt = self.const_tensor(w)?;
        if wt.dtype != DType::I8 || (q.0.len() > 1 && q.2 != 0) {
            return Ok(None);
        }
        let codes: Vec<i8> = wt.bytes().iter().map(|&b| b as i8).collect();
        let bias = ins.get(2).copied().flatten();
        self.int_linear(x, (&codes, &wt.shape), (&q.0, &q.1), bias, o, act)
    }

    /// Emits `op` (Conv or Gemm with transposed b) on centred input `x`
    /// and the plan's integer constants, then requantizes into `o`.
    pub(super) fn emit_int_linear(
        &mut self,
        plan: IntLinear,
        x: String,
        op: Op,
        o: usize,
        act: Act,
        nchw: bool,
    ) -> Res<()> {
        let name = self.names[o].clone();
        let c = plan.m.len();
        let w = self.fresh(&format!("{name}.filter_codes"));
        self.add_const(
            w.clone(),
            plan.w_shape,
            DType::F32,
            owned(f32_bytes(&plan.w)),
        )?;
        let mut inputs = vec![x, w];
        if let Some(b) = plan.bias {
            let bn = self.fresh(&format!("{name}.bias_codes"));
            self.add_const(bn.clone(), vec![c], DType::F32, owned(f32_bytes(&b)))?;
            inputs.push(bn);
        }
        let mut acc = self.fresh(&format!("{name}.acc"));
        self.emit(op, inputs, acc.clone());
        let m_shape = if nchw { vec![c, 1, 1] } else { vec![c] };
        if let Some(hi) = plan.bias_hi {
            let bn = self.fresh(&format!("{name}.bias_high"));
            self.add_const(
                bn.clone(),
                m_shape.clone(),
                DType::F32,
                owned(f32_bytes(&hi)),
            )?;
            let full = self.fresh(&format!("{name}.acc_full"));
            self.emit(Op::Add, vec![acc, bn], full.clone());
            acc = full;
        }
        let m = self.fresh(&format!("{name}.multiplier"));
        self.add_const(m.clone(), m_shape, DType::F32, owned(f32_bytes(&plan.m)))?;
        let scaled = self.fresh(&format!("{name}.scaled"));
        self.emit(Op::Mul, vec![acc, m], scaled.clone());
        self.requantize(scaled, o, act, nchw)
    }

    /// Output `o` from `scaled` (f32 holding acc·M): round half to even,
    /// add the zero point, saturate, clamp to the fused activation.
    pub(super) fn requantize(&mut self, scaled: String, o: usize, act: Act, nchw: bool) -> Res<()> {
        let out_q = self.act_quant(o)?.ok_or("output is not quantized")?;
        let q = self.fresh(&format!("{}.acc_codes", self.names[o]));
        self.quantize_into(scaled, (1.0, out_q.1, out_q.2), q.clone())?;
        let q = self.clamp_codes(q, act, out_q)?;
        self.finish_codes(q, o, nchw)
    }

    /// Clip of codes `q` to the fused activation's integer bounds.
    fn clamp_codes(&mut self, q: String, act: Act, (sy, zy, dt): (f32, i64, DType)) -> Res<String> {
        if act == Act::NONE {
            return Ok(q);
        }
        let (lo, hi) = act_bounds(act, sy, zy, dt)
            .ok_or_else(|| format!("fused activation {act:?} on an integer output"))?;
        let lo = self.int_scalar(&format!("{q}.min"), lo, dt)?;
        let hi = self.int_scalar(&format!("{q}.max"), hi, dt)?;
        let out = self.fresh(&format!("{q}.clamped"));
        self.emit(Op::Clip, vec![q, lo, hi], out.clone());
        Ok(out)
    }

    /// QuantizeLinear of `x` with per-tensor `(scale, zero point, type)`
    /// into value `out`.
    pub(super) fn quantize_into(
        &mut self,
        x: String,
        (scale, zp, dt): (f32, i64, DType),
        out: String,
    ) -> Res<()> {
        let params = self.qdq_params(&out, scale, zp, dt)?;
        self.nodes.push(Node {
            name: out.clone(),
            op: Op::QuantizeLinear {
                axis: 1,
                block_size: 0,
                out: dt,
            },
            inputs: [vec![x], params].concat(),
            outputs: vec![out],
        });
        Ok(())
    }

    /// DequantizeLinear of `q` with per-tensor `(scale, zero point, type)`
    /// into value `out`.
    pub(super) fn dequantize_into(
        &mut self,
        q: String,
        (scale, zp, dt): (f32, i64, DType),
        out: String,
    ) -> Res<()> {
        let params = self.qdq_params(&out, scale, zp, dt)?;
        self.nodes.push(Node {
            name: out.clone(),
            op: Op::DequantizeLinear {
                axis: 1,
                block_size: 0,
            },
            inputs: [vec![q], params].concat(),
            outputs: vec![out],
        });
        Ok(())
    }

    /// Registers codes `q` as output `o`, with its dequantized value for
    /// the float consumers.
    pub(super) fn finish_codes(&mut self, q: String, o: usize, nchw: bool) -> Res<()> {
        let (scale, zp, dt) = self.act_quant(o)?.ok_or("output is not quantized")?;
        let last = if nchw {
            self.fresh(&format!("{}.nchw", self.names[o]))
        } else {
            self.names[o].clone()
        };
        self.dequantize_into(q.clone(), (scale, zp, dt), last.clone())?;
        if nchw {
            self.nchw[o] = Some(last);
            self.codes_nchw[o] = Some(q);
        } else {
            self.canon[o] = Some(last);
            self.codes[o] = Some(q);
        }
        Ok(())
    }

    fn int_scalar(&mut self, base: &str, v: i64, dt: DType) -> Res<String> {
        let name = self.fresh(base);
        let bytes = match dt {
            DType::I64 => v.to_le_bytes().to_vec(),
            _ => vec![v as u8],
        };
        self.add_const(name, vec![], dt, owned(bytes))
    }

    /// XNNPACK's int8 ADD, or Ok(false) where its fixed point does not
    /// apply (then the float simulation runs).
    pub(super) fn int_add(&mut self, a: usize, b: usize, o: usize, act: Act) -> Res<bool> {
        let (Some((sa, za, DType::I8)), Some((sb, zb, DType::I8)), Some((sy, zy, DType::I8))) =
            (self.act_quant(a)?, self.act_quant(b)?, self.act_quant(o)?)
        else {
            return Ok(false);
        };
        let Some((lo, hi)) = act_bounds(act, sy, zy, DType::I8) else {
            return Ok(false);
        };
        let Some(p) = AddParams::new(sa / sy, sb / sy, za, zb) else {
            return Ok(false);
        };
        // work in NCHW when both operands are there already (conv outputs)
        let nchw = self.nchw[a].is_some()
            && self.nchw[b].is_some()
            && self.infos[a].shape == self.infos[o].shape
            && self.infos[b].shape == self.infos[o].shape;
        let name = self.names[o].clone();
        let mut terms = Vec::new();
        for (t, mult) in [(a, p.a_mult), (b, p.b_mult)] {
            let c = self.codes(t, nchw)?;
            let wide = self.fresh(&format!("{c}.i64"));
            self.emit(Op::Cast { to: DType::I64 }, vec![c], wide.clone());
            let k = self.int_scalar(&format!("{name}.multiplier"), mult, DType::I64)?;
            let prod = self.fresh(&format!("{wide}.scaled"));
            self.emit(Op::Mul, vec![wide, k], prod.clone());
            terms.push(prod);
        }
        // the offset keeps the sum non-negative, so truncating division
        // is the kernel's arithmetic shift
        let offset = 1i64 << 40;
        let sum = self.fresh(&format!("{name}.acc"));
        self.emit(Op::Add, terms, sum.clone());
        let bias = self.int_scalar(&format!("{name}.bias"), p.bias + offset, DType::I64)?;
        let biased = self.fresh(&format!("{name}.biased"));
        self.emit(Op::Add, vec![sum, bias], biased.clone());
        let pot = self.int_scalar(&format!("{name}.pot"), 1i64 << p.shift, DType::I64)?;
        let shifted = self.fresh(&format!("{name}.shifted"));
        self.emit(Op::Div, vec![biased, pot], shifted.clone());
        let back = self.int_scalar(
            &format!("{name}.zero_point"),
            zy - (offset >> p.shift),
            DType::I64,
        )?;
        let y = self.fresh(&format!("{name}.wide"));
        self.emit(Op::Add, vec![shifted, back], y.clone());
        let lo = self.int_scalar(&format!("{name}.min"), lo, DType::I64)?;
        let hi = self.int_scalar(&format!("{name}.max"), hi, DType::I64)?;
        let clipped = self.fresh(&format!("{name}.clipped"));
        self.emit(Op::Clip, vec![y, lo, hi], clipped.clone());
        let q = self.fresh(&format!("{name}.codes"));
        self.emit(Op::Cast { to: DType::I8 }, vec![clipped], q.clone());
        self.finish_codes(q, o, nchw)?;
        Ok(true)
    }

    /// int8 MEAN: the integer sum requantized by `sx/(n·sy)`, or Ok(false).
    pub(super) fn int_mean(
        &mut self,
        x: usize,
        axes: &[i64],
        keep_dims: bool,
        o: usize,
    ) -> Res<bool> {
        let (Some((sx, zx, DType::I8)), Some((sy, _, DType::I8))) =
            (self.act_quant(x)?, self.act_quant(o)?)
        else {
            return Ok(false);
        };
        let shape = self.infos[x].shape.clone();
        let r = shape.len() as i64;
        let mut n = 1usize;
        for &a in axes {
            let a = if a < 0 { a + r } else { a };
            if !(0..r).contains(&a) {
                return Err(format!("axis {a} of rank {r}"));
            }
            n *= shape[a as usize];
        }
        if n == 0 || (n as f64) * 255.0 >= EXACT_F32 {
            return Ok(false);
        }
        let c = self.centred(x, zx, false)?;
        let name = self.names[o].clone();
        let sum = self.fresh(&format!("{name}.sum"));
        self.emit(
            Op::ReduceSum {
                axes: axes.to_vec(),
                keep_dims,
            },
            vec![c],
            sum.clone(),
        );
        let m = self.const_scalar(&format!("{name}.multiplier"), sx / (n as f32 * sy))?;
        let scaled = self.fresh(&format!("{name}.scaled"));
        self.emit(Op::Mul, vec![sum, m], scaled.clone());
        self.requantize(scaled, o, Act::NONE, false)?;
        Ok(true)
    }
}

/// TFLite's integer bounds of a fused activation on an output with scale
/// `s` and zero point `zp` (`zp + round(f/s)`, half away from zero), or
/// None for activations with no integer clamp.
fn act_bounds(act: Act, s: f32, zp: i64, dt: DType) -> Option<(i64, i64)> {
    let (qmin, qmax) = match dt {
        DType::I8 => (i8::MIN as i64, i8::MAX as i64),
        DType::U8 => (0, u8::MAX as i64),
        _ => return None,
    };
    let q = |f: f32| zp + (f / s).round() as i64;
    Some(match act {
        Act::NONE => (qmin, qmax),
        Act::RELU => (qmin.max(q(0.0)), qmax),
        Act::RELU6 => (qmin.max(q(0.0)), qmax.min(q(6.0))),
        Act::RELU_N1_TO_1 => (qmin.max(q(-1.0)), qmax.min(q(1.0))),
        _ => return None,
    })
}

/// XNNPACK's fixed-point parameters of an int8 ADD with input-to-output
/// scale ratios `a` and `b`: `y = ((bias + qa·a_mult + qb·b_mult) >> shift)
/// + zy`, the larger multiplier in [2²⁰, 2²¹).
#[derive(Debug, PartialEq)]
struct AddParams {
    a_mult: i64,
    b_mult: i64,
    bias: i64,
    shift: u32,
}

impl AddParams {
    fn new(a: f32, b: f32, za: i64, zb: i64) -> Option<Self> {
        let range = 2f32.powi(-10)..2f32.powi(8);
        if !range.contains(&a) || !range.contains(&b) {
            return None;
        }
        let exponent = (a.max(b).to_bits() >> 23) as i32 - 127;
        let shift = u32::try_from(20 - exponent)
            .ok()
            .filter(|s| (12..=30).contains(s))?;
        // scaling by 2^shift through the exponent bits is exact here
        let mult = |r: f32| f32::from_bits(r.to_bits() + (shift << 23)).round_ties_even() as i64;
        let (a_mult, b_mult) = (mult(a), mult(b));
        Some(AddParams {
            a_mult,
            b_mult,
            bias: (1i64 << (shift - 1)) - a_mult * za - b_mult * zb,
            shift,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ratios like EfficientNet-Lite0's ADDs (in [0.5, 1), exponent −1):
    /// the shift is 21 and the multipliers are the ratios times 2²¹.
    #[test]
    fn add_params_follow_the_larger_ratio() {
        let (a, b) = (0.8f32, 0.85f32);
        let p = AddParams::new(a, b, -5, 3).unwrap();
        assert_eq!(p.shift, 21);
        assert_eq!(p.a_mult, (a as f64 * (1 << 21) as f64).round() as i64);
        assert_eq!(p.b_mult, (b as f64 * (1 << 21) as f64).round() as i64);
        assert_eq!(p.bias, (1 << 20) + 5 * p.a_mult - 3 * p.b_mult);
        // ratios of 2 and more lower the shift; out of range: no plan
        assert_eq!(AddParams::new(3.0, 0.5, 0, 0).unwrap().shift, 19);
        assert!(AddParams::new(300.0, 0.5, 0, 0).is_none());
    }

    #[test]
    fn activation_bounds_are_integer_clamps() {
        let s = 6.0 / 255.0;
        assert_eq!(
            act_bounds(Act::RELU6, s, -128, DType::I8),
            Some((-128, 127))
        );
        assert_eq!(act_bounds(Act::RELU, 0.1, 3, DType::I8), Some((3, 127)));
        assert_eq!(act_bounds(Act::RELU6, 0.1, 3, DType::I8), Some((3, 63)));
        assert_eq!(act_bounds(Act::TANH, 0.1, 3, DType::I8), None);
    }
}
