//! Conv and the pooling ops, 1-D and 2-D (1-D runs as 2-D with a height
//! of 1). Regular convolutions use candle's conv2d; depthwise ones (one
//! input channel per group, as in MobileNet and EfficientNet) a direct
//! kernel of ours, because candle runs a grouped conv as one conv per group
//! and that is hundreds of tiny convs per layer. The kernel has a backward
//! pass, so gradients flow through every op here.

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::value::{check_size, contiguous, fail, select, OpError, OpResult, Value};
use crate::Window;

/// A window for two spatial dims: (h, w) pairs; pads are (begin, end).
#[derive(Debug, Clone, Copy)]
struct Win2 {
    k: (usize, usize),
    s: (usize, usize),
    d: (usize, usize),
    ph: (usize, usize),
    pw: (usize, usize),
}

impl Win2 {
    /// The 2-D window of a 1-D or 2-D op; `kernel` is the weight's spatial
    /// dims when the window does not give them.
    fn new(w: &Window, spatial: usize, kernel: Option<&[usize]>) -> OpResult<Win2> {
        let get = |v: &[usize], n: usize, what: &str, default: usize| -> OpResult<Vec<usize>> {
            match v.len() {
                0 => Ok(vec![default; n]),
                l if l == n => Ok(v.to_vec()),
                l => fail!("{what} has {l} entries for {spatial} spatial dims"),
            }
        };
        let k = match (w.kernel.is_empty(), kernel) {
            (true, Some(k)) => k.to_vec(),
            _ => get(&w.kernel, spatial, "kernel", 0)?,
        };
        if let Some(kw) = kernel {
            if kw != k.as_slice() {
                fail!("kernel_shape {k:?} differs from the weight's {kw:?}")
            }
        }
        let s = get(&w.strides, spatial, "strides", 1)?;
        let d = get(&w.dilations, spatial, "dilations", 1)?;
        let p = get(&w.pads, 2 * spatial, "pads", 0)?;
        if k.contains(&0) || s.contains(&0) || d.contains(&0) {
            fail!("kernel {k:?}, strides {s:?} and dilations {d:?} must be positive")
        }
        Ok(if spatial == 1 {
            // a height of 1 with a kernel of 1: stride and dilation there do
            // not matter, so use the width's (candle wants them equal)
            Win2 {
                k: (1, k[0]),
                s: (s[0], s[0]),
                d: (d[0], d[0]),
                ph: (0, 0),
                pw: (p[0], p[1]),
            }
        } else {
            Win2 {
                k: (k[0], k[1]),
                s: (s[0], s[1]),
                d: (d[0], d[1]),
                ph: (p[0], p[2]),
                pw: (p[1], p[3]),
            }
        })
    }

    /// Output length of one dim: input `n`, kernel `k`, stride, dilation, pads.
    fn out_len(n: usize, k: usize, s: usize, d: usize, p: (usize, usize)) -> OpResult<usize> {
        let span = (k - 1).saturating_mul(d).saturating_add(1);
        let padded = n.saturating_add(p.0).saturating_add(p.1);
        if padded > super::value::MAX_ELEMENTS {
            fail!("pads {p:?} are too large")
        }
        if padded < span {
            fail!("the window ({span}) is larger than the padded input ({padded})")
        }
        Ok((padded - span) / s + 1)
    }

    fn out(&self, h: usize, w: usize) -> OpResult<(usize, usize)> {
        Ok((
            Self::out_len(h, self.k.0, self.s.0, self.d.0, self.ph)?,
            Self::out_len(w, self.k.1, self.s.1, self.d.1, self.pw)?,
        ))
    }
}

/// Lifts a 1-D (`[N, C, L]`) tensor to 2-D (`[N, C, 1, L]`); checks the rank.
fn lift(t: &Tensor, what: &str) -> OpResult<(Tensor, usize)> {
    match t.rank() {
        3 => Ok((t.unsqueeze(2)?, 1)),
        4 => Ok((t.clone(), 2)),
        r => fail!("{what} must be 3-D or 4-D (1-D or 2-D spatial), is {r}-D"),
    }
}

fn unlift(t: Tensor, spatial: usize) -> OpResult<Tensor> {
    Ok(if spatial == 1 { t.squeeze(2)? } else { t })
}

/// Pads dims 2 and 3 of `x` with `value` (`ph`, `pw` as (begin, end)).
fn pad_hw(x: &Tensor, ph: (usize, usize), pw: (usize, usize), value: f32) -> OpResult<Tensor> {
    let mut padded = x.dims().to_vec();
    padded[2] += ph.0 + ph.1;
    padded[3] += pw.0 + pw.1;
    check_size(&padded, "the padded input")?;
    let mut x = x.clone();
    for (dim, (b, e)) in [(2, ph), (3, pw)] {
        if b == 0 && e == 0 {
            continue;
        }
        if value == 0.0 {
            x = x.pad_with_zeros(dim, b, e)?;
            continue;
        }
        let mut parts = Vec::with_capacity(3);
        let mut dims = x.dims().to_vec();
        if b > 0 {
            dims[dim] = b;
            parts.push(Tensor::full(value, dims.clone(), &Device::Cpu)?);
        }
        parts.push(x.clone());
        if e > 0 {
            dims[dim] = e;
            parts.push(Tensor::full(value, dims, &Device::Cpu)?);
        }
        x = Tensor::cat(&parts, dim)?;
    }
    Ok(x)
}

/// Conv: x `[N, C, (H,) W]`, w `[M, C/group, (kH,) kW]`, optional bias `[M]`.
pub(super) fn conv(
    x: &Value,
    w: &Value,
    bias: Option<&Value>,
    window: &Window,
    group: usize,
) -> OpResult<Value> {
    if !x.is_float() || !w.is_float() {
        fail!("Conv needs float inputs, got {} and {}", x.dt, w.dt)
    }
    let (xt, spatial) = lift(&x.t, "the input")?;
    let (wt, ws) = lift(&w.t, "the weight")?;
    if ws != spatial {
        fail!(
            "input {:?} and weight {:?} differ in rank",
            x.dims(),
            w.dims()
        )
    }
    let win = Win2::new(window, spatial, Some(&w.dims()[2..]))?;
    let (n, c, h, wd) = xt.dims4()?;
    let (m, cg, _, _) = wt.dims4()?;
    if group == 0 || !c.is_multiple_of(group) || !m.is_multiple_of(group) || cg * group != c {
        fail!(
            "group {group} does not fit input channels {c}, weight {:?}",
            w.dims()
        )
    }
    let (oh, ow) = win.out(h, wd)?;
    check_size(&[n, m, oh, ow], "the output")?;
    let y = if cg == 1 && group == c && group > 1 {
        let op = Depthwise {
            win,
            mult: m / c,
            out: (oh, ow),
        };
        contiguous(&xt)?.apply_op2(&contiguous(&wt)?, op)?
    } else {
        conv2d(&xt, &wt, &win, group)?
    };
    debug_assert_eq!(y.dims(), &[n, m, oh, ow]);
    let y = match bias {
        Some(b) => {
            if b.numel() != m || b.rank() != 1 {
                fail!("bias {:?} does not match {m} output channels", b.dims())
            }
            y.broadcast_add(&b.t.reshape((1, m, 1, 1))?)?
        }
        None => y,
    };
    Ok(Value::new(unlift(y, spatial)?, x.dt))
}

/// candle's conv2d, with what it lacks around it: asymmetric pads (padded
/// explicitly), different strides or dilations per dim (a dilated kernel of
/// zeros; stride 1 and a subsample).
fn conv2d(x: &Tensor, w: &Tensor, win: &Win2, group: usize) -> OpResult<Tensor> {
    let (x, pad) = if win.ph.0 == win.ph.1 && win.pw.0 == win.pw.1 && win.ph.0 == win.pw.0 {
        (x.clone(), win.ph.0)
    } else {
        (pad_hw(x, win.ph, win.pw, 0.0)?, 0)
    };
    let (w, dil) = if win.d.0 == win.d.1 {
        (w.clone(), win.d.0)
    } else {
        (dilate_kernel(w, win.d)?, 1)
    };
    if win.s.0 == win.s.1 {
        return Ok(x.conv2d(&w, pad, win.s.0, dil, group)?);
    }
    let y = x.conv2d(&w, pad, 1, dil, group)?;
    let (_, _, h, wd) = y.dims4()?;
    let rows: Vec<usize> = (0..h).step_by(win.s.0).collect();
    let cols: Vec<usize> = (0..wd).step_by(win.s.1).collect();
    select(&select(&y, &rows, 2)?, &cols, 3)
}

/// The kernel with `d - 1` zeros between taps, so that dilation 1 on it is
/// dilation `d` on the original.
fn dilate_kernel(w: &Tensor, d: (usize, usize)) -> OpResult<Tensor> {
    let (m, cg, kh, kw) = w.dims4()?;
    let (dh, dw) = d;
    let (nh, nw) = ((kh - 1) * dh + 1, (kw - 1) * dw + 1);
    check_size(&[m, cg, nh, nw], "the dilated kernel")?;
    let src = contiguous(w)?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; m * cg * nh * nw];
    for p in 0..m * cg {
        for i in 0..kh {
            for j in 0..kw {
                out[(p * nh + i * dh) * nw + j * dw] = src[(p * kh + i) * kw + j];
            }
        }
    }
    Ok(Tensor::from_vec(out, (m, cg, nh, nw), &Device::Cpu)?)
}

/// Depthwise conv2d: output channel `o` convolves input channel `o / mult`
/// with its own `[kH, kW]` kernel. Pads, strides and dilations per dim.
#[derive(Clone, Copy)]
struct Depthwise {
    win: Win2,
    mult: usize,
    out: (usize, usize),
}

/// The range of output positions `o` whose input `o·s + off - p` lies in `0..n`.
fn valid(out: usize, n: usize, s: usize, off: usize, p: usize) -> std::ops::Range<usize> {
    // o·s + off ≥ p  and  o·s + off < n + p
    let lo = p.saturating_sub(off).div_ceil(s);
    let hi = if n + p > off {
        (n + p - off).div_ceil(s)
    } else {
        0
    };
    lo.min(out)..hi.min(out)
}

impl Depthwise {
    fn dims(&self, x: &Layout, w: &Layout) -> candle_core::Result<[usize; 4]> {
        let (n, c, h, wd) = x.shape().dims4()?;
        let (m, _, _, _) = w.shape().dims4()?;
        if m != c * self.mult {
            candle_core::bail!("depthwise: {m} kernels for {c} channels")
        }
        Ok([n, c, h, wd])
    }

    /// The output for contiguous `x` and `w`, in parallel over
    /// (image, channel) planes; each tap adds a weighted input row segment.
    fn forward(&self, x: &[f32], w: &[f32], [n, c, h, wd]: [usize; 4]) -> Vec<f32> {
        let Win2 { k, s, d, ph, pw } = self.win;
        let (oh, ow) = self.out;
        let m = c * self.mult;
        let mut y = vec![0f32; n * m * oh * ow];
        y.par_chunks_mut((oh * ow).max(1))
            .enumerate()
            .for_each(|(plane, out)| {
                let (b, o) = (plane / m, plane % m);
                let xin = &x[(b * c + o / self.mult) * h * wd..][..h * wd];
                let ker = &w[o * k.0 * k.1..][..k.0 * k.1];
                for ki in 0..k.0 {
                    for r in valid(oh, h, s.0, ki * d.0, ph.0) {
                        let row = &xin[(r * s.0 + ki * d.0 - ph.0) * wd..][..wd];
                        let dst = &mut out[r * ow..][..ow];
                        for kj in 0..k.1 {
                            let wv = ker[ki * k.1 + kj];
                            let cols = valid(ow, wd, s.1, kj * d.1, pw.0);
                            if cols.is_empty() {
                                continue;
                            }
                            let first = cols.start * s.1 + kj * d.1 - pw.0;
                            if s.1 == 1 {
                                let src = &row[first..first + cols.len()];
                                for (o, v) in dst[cols].iter_mut().zip(src) {
                                    *o += wv * v;
                                }
                            } else {
                                for (i, o) in dst[cols].iter_mut().enumerate() {
                                    *o += wv * row[first + i * s.1];
                                }
                            }
                        }
                    }
                }
            });
        y
    }

    /// Gradients of the input and the kernel for the output gradient `g`.
    fn backward(
        &self,
        x: &[f32],
        w: &[f32],
        g: &[f32],
        [n, c, h, wd]: [usize; 4],
    ) -> (Vec<f32>, Vec<f32>) {
        let Win2 { k, s, d, ph, pw } = self.win;
        let (oh, ow) = self.out;
        let m = c * self.mult;
        let mut gx = vec![0f32; n * c * h * wd];
        let mut gw = vec![0f32; m * k.0 * k.1];
        for b in 0..n {
            for o in 0..m {
                let ch = (b * c + o / self.mult) * h * wd;
                let gp = &g[(b * m + o) * oh * ow..][..oh * ow];
                for ki in 0..k.0 {
                    for r in valid(oh, h, s.0, ki * d.0, ph.0) {
                        let ir = r * s.0 + ki * d.0 - ph.0;
                        for kj in 0..k.1 {
                            let tap = o * k.0 * k.1 + ki * k.1 + kj;
                            let mut acc = 0f32;
                            for col in valid(ow, wd, s.1, kj * d.1, pw.0) {
                                let at = ch + ir * wd + col * s.1 + kj * d.1 - pw.0;
                                let gv = gp[r * ow + col];
                                gx[at] += w[tap] * gv;
                                acc += x[at] * gv;
                            }
                            gw[tap] += acc;
                        }
                    }
                }
            }
        }
        (gx, gw)
    }
}

fn f32s<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("depthwise conv needs f32")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("depthwise conv needs contiguous inputs")
    };
    Ok(&v[a..b])
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = self.dims(l1, l2)?;
        let y = self.forward(f32s(s1, l1)?, f32s(s2, l2)?, dims);
        let shape = Shape::from((dims[0], dims[1] * self.mult, self.out.0, self.out.1));
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dims = self.dims(x.layout(), w.layout())?;
        let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let (gx, gw) = self.backward(&flat(x)?, &flat(w)?, &flat(grad)?, dims);
        Ok((
            Some(Tensor::from_vec(gx, x.dims(), &Device::Cpu)?),
            Some(Tensor::from_vec(gw, w.dims(), &Device::Cpu)?),
        ))
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Pool {
    Max,
    Avg { count_include_pad: bool },
}

/// MaxPool and AveragePool over 1 or 2 spatial dims.
pub(super) fn pool(x: &Value, window: &Window, kind: Pool) -> OpResult<Value> {
    if !x.is_float() {
        fail!("pooling needs a float input, got {}", x.dt)
    }
    let (xt, spatial) = lift(&x.t, "the input")?;
    let win = Win2::new(window, spatial, None)?;
    let (n, c, h, wd) = xt.dims4()?;
    let (oh, ow) = win.out(h, wd)?;
    let fill = match kind {
        Pool::Max => f32::NEG_INFINITY,
        Pool::Avg { .. } => 0.0,
    };
    let xp = pad_hw(&xt, win.ph, win.pw, fill)?;
    let y = match kind {
        Pool::Max => window_reduce(&xp, &win, (oh, ow), true)?,
        Pool::Avg { count_include_pad } => {
            let y = window_reduce(&xp, &win, (oh, ow), false)?;
            let padded = win.ph != (0, 0) || win.pw != (0, 0);
            if padded && !count_include_pad {
                // divide by the share of each window that lies inside
                let ones = Tensor::ones((1, 1, h, wd), candle_core::DType::F32, &Device::Cpu)?;
                let share =
                    window_reduce(&pad_hw(&ones, win.ph, win.pw, 0.0)?, &win, (oh, ow), false)?;
                y.broadcast_div(&share)?
            } else {
                y
            }
        }
    };
    debug_assert_eq!(y.dims(), &[n, c, oh, ow]);
    Ok(Value::new(unlift(y, spatial)?, x.dt))
}

/// Max or mean over windows of an already padded `x`: candle's pools when
/// the window is not dilated, else one strided selection per tap.
fn window_reduce(x: &Tensor, win: &Win2, out: (usize, usize), max: bool) -> OpResult<Tensor> {
    if win.d == (1, 1) {
        return Ok(if max {
            x.max_pool2d_with_stride(win.k, win.s)?
        } else {
            x.avg_pool2d_with_stride(win.k, win.s)?
        });
    }
    let mut acc: Option<Tensor> = None;
    for i in 0..win.k.0 {
        let rows: Vec<usize> = (0..out.0).map(|r| r * win.s.0 + i * win.d.0).collect();
        let xr = select(x, &rows, 2)?;
        for j in 0..win.k.1 {
            let cols: Vec<usize> = (0..out.1).map(|q| q * win.s.1 + j * win.d.1).collect();
            let tap = select(&xr, &cols, 3)?;
            acc = Some(match acc {
                None => tap,
                Some(a) if max => a.maximum(&tap)?,
                Some(a) => (a + tap)?,
            });
        }
    }
    let acc = acc.ok_or_else(|| OpError("empty window".into()))?;
    Ok(if max {
        acc
    } else {
        (acc / (win.k.0 * win.k.1) as f64)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The depthwise kernel and its backward pass against candle's grouped
    /// conv2d (one conv per channel, with candle's own backward).
    #[test]
    fn depthwise_matches_candle_grouped_conv() {
        let dev = &Device::Cpu;
        let (n, c, h, w, k) = (2, 3, 7, 6, 3);
        let xv: Vec<f32> = (0..n * c * h * w)
            .map(|i| ((i * 7) % 11) as f32 - 5.0)
            .collect();
        let wv: Vec<f32> = (0..c * k * k)
            .map(|i| ((i * 5) % 7) as f32 * 0.25 - 0.7)
            .collect();
        let x = candle_core::Var::from_vec(xv, (n, c, h, w), dev).unwrap();
        let wt = candle_core::Var::from_vec(wv, (c, 1, k, k), dev).unwrap();
        for (stride, pad, dil) in [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 0, 1)] {
            let want = x.conv2d(&wt, pad, stride, dil, c).unwrap();
            let win = Win2 {
                k: (k, k),
                s: (stride, stride),
                d: (dil, dil),
                ph: (pad, pad),
                pw: (pad, pad),
            };
            let (oh, ow) = win.out(h, w).unwrap();
            let op = Depthwise {
                win,
                mult: 1,
                out: (oh, ow),
            };
            let got = x.apply_op2(&wt, op).unwrap();
            let diff = (&want - &got).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
            if stride > 1 {
                // candle's own conv backward mis-sizes strided cases whose
                // input does not tile exactly: central differences instead
                // (the loss is quadratic in each weight, so they are exact)
                let g = got.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                let gw = g.get(wt.as_tensor()).unwrap().flatten_all().unwrap();
                let gw = gw.to_vec1::<f32>().unwrap();
                let base = wt
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                for tap in [0, 4, 13, 26] {
                    let loss = |delta: f32| {
                        let mut w2 = base.clone();
                        w2[tap] += delta;
                        let w2 = Tensor::from_vec(w2, (c, 1, k, k), dev).unwrap();
                        let y = x.as_tensor().apply_op2_no_bwd(&w2, &op).unwrap();
                        y.sqr()
                            .unwrap()
                            .sum_all()
                            .unwrap()
                            .to_scalar::<f32>()
                            .unwrap() as f64
                    };
                    let fd = (loss(0.5) - loss(-0.5)) as f32;
                    assert!(
                        (fd - gw[tap]).abs() < 1e-2 * (1.0 + fd.abs()),
                        "tap {tap}: {fd} vs {}",
                        gw[tap]
                    );
                }
                continue;
            }
            let gw = want.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let gg = got.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            for v in [x.as_tensor(), wt.as_tensor()] {
                let a = gw.get(v).unwrap();
                let b = gg.get(v).unwrap();
                let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                assert!(d.to_scalar::<f32>().unwrap() < 1e-3, "grad differs");
            }
        }
    }
}
