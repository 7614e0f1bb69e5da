//! IR tensors to candle tensors: dense f32 weights (trainable `Var`s when
//! training), and linear layers that run either on dense f32 weights or on
//! candle's quantized matmul over the ggml blocks as stored.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor, Var};

use super::hook::Tap;
use super::{QmmPolicy, RuntimeError};
use crate::{DType, Family, GgmlType, Model};

/// How weights become candle tensors.
pub(crate) enum Mode {
    /// Plain tensors; quantized linear weights through `QMatMul` where
    /// `qmm`'s policy says so, dequantized otherwise.
    Inference { qmm: Option<QmmPolicy> },
    /// Every weight a `Var` (dequantized to f32), collected by name.
    Trainable,
}

pub(crate) struct Loader<'a> {
    model: &'a Model,
    /// Tensors that stand in for the model's tensors of the same name.
    replaced: &'a [crate::Tensor],
    /// When set, the only tensors this loader may read (one part of the
    /// network, see `super::stage`).
    allowed: Option<HashSet<String>>,
    mode: Mode,
    device: Device,
    shapes: HashMap<String, Vec<usize>>,
    /// Loaded dense tensors by name, so a tied weight is one tensor (one Var).
    cache: HashMap<String, Tensor>,
    pub(crate) vars: Vec<(String, Var)>,
}

impl<'a> Loader<'a> {
    pub(crate) fn new(model: &'a Model, family: &Family, mode: Mode) -> Self {
        Loader {
            model,
            replaced: &[],
            allowed: None,
            mode,
            device: Device::Cpu,
            shapes: family.expected_tensors().into_iter().collect(),
            cache: HashMap::new(),
            vars: Vec::new(),
        }
    }

    /// Restricts the loader to the tensors `allowed`, reading those of
    /// `replaced` instead of the model's tensors of the same name.
    pub(crate) fn restricted(
        mut self,
        allowed: HashSet<String>,
        replaced: &'a [crate::Tensor],
    ) -> Self {
        self.allowed = Some(allowed);
        self.replaced = replaced;
        self
    }

    /// The IR tensor `name`, checked against the shape its family implies.
    fn ir(&self, name: &str) -> Result<&'a crate::Tensor, RuntimeError> {
        if self.allowed.as_ref().is_some_and(|a| !a.contains(name)) {
            return Err(RuntimeError::Model(format!(
                "tensor {name} is outside the part being loaded"
            )));
        }
        let t = self
            .replaced
            .iter()
            .find(|t| t.name == name)
            .or_else(|| self.model.tensor(name))
            .ok_or_else(|| RuntimeError::Model(format!("missing tensor {name}")))?;
        if let Some(want) = self.shapes.get(name) {
            if &t.shape != want {
                return Err(RuntimeError::Model(format!(
                    "tensor {name} has shape {:?}, the config implies {want:?}",
                    t.shape
                )));
            }
        }
        Ok(t)
    }

    /// The IR tensor `name` as an f32 candle tensor, uncached. Mapped pages
    /// of the source are released after the copy.
    fn load_f32(&self, name: &str) -> Result<Tensor, RuntimeError> {
        let ir = self.ir(name)?;
        let values = ir.to_f32()?;
        ir.release_pages();
        Ok(Tensor::from_vec(values, ir.shape.as_slice(), &self.device)?)
    }

    /// A dense f32 tensor (a Var's tensor when training), cached so that a
    /// tensor used twice (a tied embedding) is loaded once.
    pub(crate) fn dense(&mut self, name: &str) -> Result<Tensor, RuntimeError> {
        if let Some(t) = self.cache.get(name) {
            return Ok(t.clone());
        }
        let t = self.load_f32(name)?;
        let t = match self.mode {
            Mode::Inference { .. } => t,
            Mode::Trainable => {
                let var = Var::from_tensor(&t)?;
                let t = var.as_tensor().clone();
                self.vars.push((name.to_string(), var));
                t
            }
        };
        self.cache.insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// The linear layer `{prefix}.weight` (`[out, in]`), with `{prefix}.bias`
    /// when `bias`.
    pub(crate) fn linear(&mut self, prefix: &str, bias: bool) -> Result<Linear, RuntimeError> {
        let wname = format!("{prefix}.weight");
        let b = if bias {
            Some(self.dense(&format!("{prefix}.bias"))?)
        } else {
            None
        };
        self.linear_from(&wname, prefix, b)
    }

    /// A linear layer over the weight `wname`, reported to hooks as `hook_name`.
    pub(crate) fn linear_from(
        &mut self,
        wname: &str,
        hook_name: &str,
        bias: Option<Tensor>,
    ) -> Result<Linear, RuntimeError> {
        let ir = self.ir(wname)?;
        if ir.shape.len() != 2 {
            return Err(RuntimeError::Model(format!(
                "tensor {wname}: a linear weight must be 2-D, got {:?}",
                ir.shape
            )));
        }
        let names = LinearNames::new(hook_name);
        if let (Mode::Inference { qmm: Some(policy) }, DType::Ggml(t)) = (&self.mode, ir.dtype) {
            if let Some(gt) = qmm_type(t, ir.shape[0], ir.shape[1], *policy) {
                let qt = qtensor(ir, gt)?;
                ir.release_pages();
                return Ok(Linear {
                    kind: Kind::Quant(QMatMul::from_arc(Arc::new(qt))?),
                    bias,
                    parts: vec![(names, ir.shape[0])],
                });
            }
        }
        if let (Mode::Inference { .. }, Some(m)) = (&self.mode, InPlace::new(ir)) {
            return Ok(Linear {
                kind: Kind::Mapped(vec![m]),
                bias,
                parts: vec![(names, ir.shape[0])],
            });
        }
        // Kept in HF's [out, in] layout: the matmul reads it through a
        // transposed view (gemm packs its operands whatever their strides;
        // a contiguous [in, out] copy measured no faster). Only a weight that
        // is used elsewhere too (a tied embedding) or trained is cached.
        let w = if self.cache.contains_key(wname) || matches!(self.mode, Mode::Trainable) {
            self.dense(wname)?
        } else {
            self.load_f32(wname)?
        };
        Ok(Linear {
            kind: Kind::Dense(w),
            bias,
            parts: vec![(names, ir.shape[0])],
        })
    }

    /// Linear layers that read the same input (q, k, v; gate, up). For
    /// inference they are fused into one matmul over the concatenated weights
    /// when all are dense, or all run quantized with the same block type.
    pub(crate) fn group(&mut self, prefixes: &[String], bias: bool) -> Result<Group, RuntimeError> {
        if let Some(fused) = self.dense_group(prefixes, bias)? {
            return Ok(Group::Fused(fused));
        }
        let parts = prefixes
            .iter()
            .map(|p| self.linear(p, bias))
            .collect::<Result<Vec<_>, _>>()?;
        if matches!(self.mode, Mode::Trainable) || parts.len() < 2 {
            return Ok(Group::Separate(parts));
        }
        let bias = if bias {
            let b: Vec<&Tensor> = parts.iter().filter_map(|l| l.bias.as_ref()).collect();
            Some(Tensor::cat(&b, 0)?)
        } else {
            None
        };
        let dense: Vec<&Tensor> = parts
            .iter()
            .filter_map(|l| match &l.kind {
                Kind::Dense(w) => Some(w),
                Kind::Mapped(_) | Kind::Quant(_) => None,
            })
            .collect();
        let kind = if dense.len() == parts.len() {
            Kind::Dense(Tensor::cat(&dense, 0)?)
        } else {
            let types: Vec<Option<GgmlDType>> = parts.iter().map(Linear::qtype).collect();
            let Some(gt) = types[0].filter(|_| types.iter().all(|t| *t == types[0])) else {
                return Ok(Group::Separate(parts));
            };
            // Blocks are stored row by row, so the fused weight is the parts'
            // bytes one after another.
            let mut bytes = Vec::new();
            let mut rows = 0;
            let mut cols = 0;
            for p in prefixes {
                let ir = self.ir(&format!("{p}.weight"))?;
                bytes.extend_from_slice(ir.bytes());
                rows += ir.shape[0];
                cols = ir.shape[1];
            }
            let fused = crate::Tensor::new(
                "fused",
                vec![rows, cols],
                self.ir(&format!("{}.weight", prefixes[0]))?.dtype,
                crate::TensorData::Owned(Arc::new(bytes)),
            )?;
            for p in prefixes {
                self.ir(&format!("{p}.weight"))?.release_pages();
            }
            Kind::Quant(QMatMul::from_arc(Arc::new(qtensor(&fused, gt)?))?)
        };
        Ok(Group::Fused(Linear {
            kind,
            bias,
            parts: parts.into_iter().flat_map(|l| l.parts).collect(),
        }))
    }
}

impl Loader<'_> {
    /// For inference, a group none of whose weights runs quantized, decoded
    /// straight into one `[Σ out, in]` buffer (no per-layer copies to
    /// concatenate afterwards: loading is mostly memory traffic).
    fn dense_group(
        &mut self,
        prefixes: &[String],
        bias: bool,
    ) -> Result<Option<Linear>, RuntimeError> {
        let Mode::Inference { qmm } = self.mode else {
            return Ok(None);
        };
        let irs = prefixes
            .iter()
            .map(|p| self.ir(&format!("{p}.weight")))
            .collect::<Result<Vec<_>, _>>()?;
        let cols = irs.first().and_then(|ir| ir.shape.get(1)).copied();
        let dense = |ir: &&crate::Tensor| {
            ir.shape.len() == 2
                && Some(ir.shape[1]) == cols
                && !matches!((qmm, ir.dtype), (Some(policy), DType::Ggml(t))
                    if qmm_type(t, ir.shape[0], ir.shape[1], policy).is_some())
        };
        if irs.len() < 2
            || !irs.iter().all(dense)
            || prefixes
                .iter()
                .any(|p| self.cache.contains_key(&format!("{p}.weight")))
        {
            return Ok(None);
        }
        let mapped: Vec<InPlace> = irs.iter().filter_map(|ir| InPlace::new(ir)).collect();
        let kind = if mapped.len() == irs.len() {
            Kind::Mapped(mapped)
        } else {
            let cols = cols.unwrap_or(0);
            let rows: usize = irs.iter().map(|ir| ir.shape[0]).sum();
            let mut values = vec![0f32; rows * cols];
            crate::tensor::advise_huge_pages(&mut values);
            let mut rest = values.as_mut_slice();
            for ir in &irs {
                let (part, tail) = rest.split_at_mut(ir.numel());
                ir.decode_all(part)?;
                ir.release_pages();
                rest = tail;
            }
            Kind::Dense(Tensor::from_vec(values, (rows, cols), &self.device)?)
        };
        let bias = if bias {
            let b = prefixes
                .iter()
                .map(|p| self.dense(&format!("{p}.bias")))
                .collect::<Result<Vec<_>, _>>()?;
            Some(Tensor::cat(&b, 0)?)
        } else {
            None
        };
        Ok(Some(Linear {
            kind,
            bias,
            parts: prefixes
                .iter()
                .zip(&irs)
                .map(|(p, ir)| (LinearNames::new(p), ir.shape[0]))
                .collect(),
        }))
    }
}

/// A token embedding table: in place in the model file where it can be
/// (a tied LM head then reads the same pages), a dense tensor otherwise.
pub(crate) enum Embedding {
    Dense(Tensor),
    Mapped(InPlace),
}

impl Embedding {
    /// `ids` (any shape, u32) → `[ids.len(), hidden]`.
    pub(crate) fn lookup(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let ids = ids.flatten_all()?;
        match self {
            Embedding::Dense(t) => t.index_select(&ids, 0),
            Embedding::Mapped(m) => m.gather(&ids.to_vec1::<u32>()?),
        }
    }
}

impl Loader<'_> {
    pub(crate) fn embedding(&mut self, name: &str) -> Result<Embedding, RuntimeError> {
        if let Mode::Inference { .. } = self.mode {
            if let Some(m) = InPlace::new(self.ir(name)?) {
                return Ok(Embedding::Mapped(m));
            }
        }
        Ok(Embedding::Dense(self.dense(name)?))
    }
}

/// The outputs of a [`Group`] as an array of its known size.
pub(crate) fn parts<const N: usize>(v: Vec<Tensor>) -> candle_core::Result<[Tensor; N]> {
    let n = v.len();
    v.try_into()
        .map_err(|_| candle_core::Error::Msg(format!("a group of {N} layers gave {n} outputs")))
}

/// Linear layers over one input, fused or not.
pub(crate) enum Group {
    Fused(Linear),
    Separate(Vec<Linear>),
}

impl Group {
    /// Each layer's output, in the order they were named.
    pub(crate) fn forward(&self, x: &Tensor, tap: Tap) -> candle_core::Result<Vec<Tensor>> {
        match self {
            Group::Fused(l) => l.forward_parts(x, tap),
            Group::Separate(ls) => ls.iter().map(|l| l.forward(x, tap)).collect(),
        }
    }

    /// How many of its layers run on candle's quantized matmul.
    pub(crate) fn quantized(&self) -> usize {
        match self {
            Group::Fused(l) => l.quantized(),
            Group::Separate(ls) => ls.iter().map(Linear::quantized).sum(),
        }
    }
}

/// candle's block type for a ggml type, when candle's quantized matmul has it.
pub(crate) fn candle_type(t: GgmlType) -> Option<GgmlDType> {
    Some(match t {
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q2K => GgmlDType::Q2K,
        GgmlType::Q3K => GgmlDType::Q3K,
        GgmlType::Q4K => GgmlDType::Q4K,
        GgmlType::Q5K => GgmlDType::Q5K,
        GgmlType::Q6K => GgmlDType::Q6K,
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 | GgmlType::Iq4Nl => return None,
    })
}

/// The candle type to run a `[n, k]` weight of type `t` through `QMatMul`
/// with, or `None` to dequantize it.
///
/// `WhereFaster` follows measurements of candle 0.11 on x86-64 (AVX-512,
/// 512 rows, per thread): candle's repacked int8 kernels, Q4_K, Q6_K and (with
/// VNNI) Q8_0 when k is a multiple of 256 and n of 16, run at 160–310
/// GFLOP/s, against 150–200 for the f32 matmul (gemm's AVX-512 kernels); the
/// other k-quants' AVX2 kernels at 50–70, Q4_0 and Q8_0 off the repacked path
/// at ~20, and Q4_1/Q5_0/Q5_1 have only scalar kernels (~3).
pub(crate) fn qmm_type(t: GgmlType, n: usize, k: usize, policy: QmmPolicy) -> Option<GgmlDType> {
    let gt = candle_type(t)?;
    if policy == QmmPolicy::Always {
        return Some(gt);
    }
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let vnni = (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"))
            || is_x86_feature_detected!("avxvnni");
        let repacked = avx2 && k.is_multiple_of(256) && n.is_multiple_of(16);
        let fast = match t {
            GgmlType::Q4K | GgmlType::Q6K => repacked,
            GgmlType::Q8_0 => repacked && vnni,
            _ => false,
        };
        fast.then_some(gt)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (n, k);
        // candle has SIMD kernels for these elsewhere (NEON, simd128);
        // Q4_1 and Q5_x are scalar everywhere.
        matches!(
            t,
            GgmlType::Q4_0
                | GgmlType::Q8_0
                | GgmlType::Q2K
                | GgmlType::Q3K
                | GgmlType::Q4K
                | GgmlType::Q5K
                | GgmlType::Q6K
        )
        .then_some(gt)
    }
}

/// A `QTensor` over a copy of the tensor's ggml blocks (the IR and candle
/// share the block layout byte for byte).
fn qtensor(ir: &crate::Tensor, gt: GgmlDType) -> Result<QTensor, RuntimeError> {
    let bytes = ir.bytes();
    let rows = ir.shape[0];
    let cols = ir.shape[1];
    if !cols.is_multiple_of(gt.block_size())
        || bytes.len() != rows * cols / gt.block_size() * gt.type_size()
    {
        return Err(RuntimeError::Model(format!(
            "tensor {}: {} bytes do not hold {rows}x{cols} {:?} blocks",
            ir.name,
            bytes.len(),
            gt
        )));
    }
    // candle reads the blocks in place before copying them and needs them
    // aligned for their f16 fields; a mapped tensor may start anywhere.
    let storage = if (bytes.as_ptr() as usize).is_multiple_of(8) {
        QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, gt)?
    } else {
        let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
        let view: &mut [u8] = bytemuck::cast_slice_mut(&mut aligned);
        view[..bytes.len()].copy_from_slice(bytes);
        QStorage::from_data(Cow::Borrowed(&view[..bytes.len()]), &Device::Cpu, gt)?
    };
    Ok(QTensor::new(storage, (rows, cols))?)
}

/// The hook names of one linear layer, formatted once at load.
pub(crate) struct LinearNames {
    pub(crate) input: String,
    pub(crate) output: String,
}

impl LinearNames {
    fn new(prefix: &str) -> Self {
        LinearNames {
            input: format!("{prefix}:input"),
            output: format!("{prefix}:output"),
        }
    }
}

enum Kind {
    /// The weight, `[out, in]`.
    Dense(Tensor),
    /// Weights read in place from the model file, `[out_i, in]` each,
    /// whose outputs sit side by side.
    Mapped(Vec<InPlace>),
    Quant(QMatMul),
}

/// A 2-D weight read in place from the model file. Aligned little-endian
/// f32 is used as it lies: an f32 model is neither copied nor faulted into
/// fresh memory at load (copying and zero-filling half a gigabyte took
/// longer than a chunk of inference). ggml blocks that candle's quantized
/// matmul does not run fast are dequantized for each use, into memory freed
/// right after, so a quantized model stays about the size of its file (the
/// dequantization costs a few percent of a 2048-token batch's matmul).
/// Inference only; training needs owned `Var`s.
pub(crate) struct InPlace(crate::Tensor);

impl InPlace {
    pub(crate) fn new(ir: &crate::Tensor) -> Option<Self> {
        if ir.shape.len() != 2 {
            return None;
        }
        let numel = ir.shape[0] * ir.shape[1];
        let ok = match ir.dtype {
            DType::F32 => {
                cfg!(target_endian = "little")
                    && bytemuck::try_cast_slice::<u8, f32>(ir.bytes())
                        .is_ok_and(|v| v.len() == numel)
            }
            DType::Ggml(t) => {
                ir.shape[1].is_multiple_of(t.block_size())
                    && ir.bytes().len() == numel / t.block_size() * t.type_size()
            }
            _ => false,
        };
        ok.then(|| InPlace(ir.clone()))
    }

    pub(crate) fn rows(&self) -> usize {
        self.0.shape[0]
    }

    pub(crate) fn cols(&self) -> usize {
        self.0.shape[1]
    }

    fn source(&self) -> Source<'_> {
        if self.0.dtype == DType::F32 {
            // checked aligned and sized in `new`
            Source::F32(bytemuck::cast_slice(self.0.bytes()), self.rows())
        } else {
            Source::Blocks(&self.0)
        }
    }

    /// Rows `ids` of the table, `[ids.len(), cols]` (an embedding lookup).
    pub(crate) fn gather(&self, ids: &[u32]) -> candle_core::Result<Tensor> {
        let cols = self.cols();
        let mut out = vec![0f32; ids.len() * cols];
        for (&id, row) in ids.iter().zip(out.chunks_mut(cols.max(1))) {
            if id as usize >= self.rows() {
                candle_core::bail!("id {id} outside the table of {}", self.rows())
            }
            self.0
                .row_to_f32(id as usize, row)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        }
        Tensor::from_vec(out, (ids.len(), cols), &Device::Cpu)
    }
}

/// One weight operand of [`xwt`], `[rows, k]`.
enum Source<'a> {
    /// f32 values, and the row count.
    F32(&'a [f32], usize),
    /// ggml blocks, dequantized a block of rows at a time.
    Blocks(&'a crate::Tensor),
}

impl Source<'_> {
    fn rows(&self) -> usize {
        match self {
            Source::F32(_, rows) => *rows,
            Source::Blocks(t) => t.shape[0],
        }
    }
}

/// f32 values per dequantized block of weight rows (8 MiB).
const DEQUANT_BLOCK: usize = 2 << 20;

/// `x · [w_1; w_2; …]ᵀ` for `x` `[m, k]` and weights `[n_i, k]`, all
/// row-major, as one row-major `[m, Σ n_i]` vector: gemm writes each part's
/// columns in place, reading the weights through transposed strides.
fn xwt(x: &[f32], m: usize, k: usize, weights: &[Source]) -> candle_core::Result<Vec<f32>> {
    let n: usize = weights.iter().map(Source::rows).sum();
    if x.len() < m * k {
        candle_core::bail!("linear: input too short")
    }
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let mut col = 0;
    let mut scratch = Vec::new();
    for w in weights {
        match w {
            Source::F32(w, rows) => {
                if w.len() < rows * k {
                    candle_core::bail!("linear: weight too short")
                }
                // SAFETY: `out` has room for m·n floats; columns col..col+rows
                // are within n, x is [m, k] and w [rows, k] as checked.
                unsafe {
                    crate::linalg::gemm_nt_into(x, m, k, w, *rows, out.as_mut_ptr().add(col), n)
                };
                col += rows;
            }
            Source::Blocks(t) => {
                let rows = t.shape[0];
                let block = (DEQUANT_BLOCK / k.max(1)).clamp(1, rows.max(1));
                for r0 in (0..rows).step_by(block) {
                    let r1 = (r0 + block).min(rows);
                    scratch.resize((r1 - r0) * k, 0f32);
                    t.decode_rows(r0..r1, &mut scratch)
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                    // SAFETY: as above, for the r1 − r0 rows just decoded.
                    unsafe {
                        crate::linalg::gemm_nt_into(
                            x,
                            m,
                            k,
                            &scratch,
                            r1 - r0,
                            out.as_mut_ptr().add(col),
                            n,
                        )
                    };
                    col += r1 - r0;
                }
            }
        }
    }
    // SAFETY: the calls above wrote columns 0..n of every row (each its own
    // column range), so all m·n elements are initialised.
    unsafe { out.set_len(m * n) };
    Ok(out)
}

/// `y = x·Wᵀ + b` on `x` of shape `[rows, in]`; the columns of `y` may be
/// the outputs of several layers (`parts`: hook names and widths).
pub(crate) struct Linear {
    kind: Kind,
    bias: Option<Tensor>,
    parts: Vec<(LinearNames, usize)>,
}

impl Linear {
    /// The output of a single layer.
    pub(crate) fn forward(&self, x: &Tensor, tap: Tap) -> candle_core::Result<Tensor> {
        let mut out = self.forward_parts(x, tap)?;
        debug_assert_eq!(out.len(), 1);
        Ok(out.swap_remove(0))
    }

    /// The output of a single layer as a row-major `Vec`. For a dense layer
    /// without bias or hook, gemm writes straight into the returned vector
    /// which saves allocating, faulting in and copying one more output: for an LM head that output
    /// is `tokens × vocab` floats (100 MB for 512 tokens of SmolLM2).
    pub(crate) fn forward_vec(&self, x: &Tensor, tap: Tap) -> candle_core::Result<Vec<f32>> {
        if self.bias.is_some() || tap.active() {
            return self.forward(x, tap)?.flatten_all()?.to_vec1();
        }
        match self.plain_xwt(x)? {
            Some(v) => Ok(v),
            None => self.forward(x, tap)?.flatten_all()?.to_vec1(),
        }
    }

    /// `x · Wᵀ` (no bias) through [`xwt`] for dense and mapped weights;
    /// `None` for quantized ones.
    fn plain_xwt(&self, x: &Tensor) -> candle_core::Result<Option<Vec<f32>>> {
        let x = x.contiguous()?;
        let (m, k) = x.dims2()?;
        let (xs, xl) = x.storage_and_layout();
        let candle_core::Storage::Cpu(xc) = &*xs else {
            candle_core::bail!("linear: CPU tensors only")
        };
        let xv = &xc.as_slice::<f32>()?[xl.start_offset()..][..m * k];
        let check = |cols: usize| {
            if cols == k {
                Ok(())
            } else {
                Err(candle_core::Error::Msg(format!(
                    "linear: input has {k} features, the weight {cols}"
                )))
            }
        };
        match &self.kind {
            Kind::Dense(w) => {
                let w = w.contiguous()?;
                let (n, cols) = w.dims2()?;
                check(cols)?;
                let (ws, wl) = w.storage_and_layout();
                let candle_core::Storage::Cpu(wc) = &*ws else {
                    candle_core::bail!("linear: CPU tensors only")
                };
                let wv = &wc.as_slice::<f32>()?[wl.start_offset()..][..n * k];
                Ok(Some(xwt(xv, m, k, &[Source::F32(wv, n)])?))
            }
            Kind::Mapped(parts) => {
                let ws = parts
                    .iter()
                    .map(|p| check(p.cols()).map(|_| p.source()))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Ok(Some(xwt(xv, m, k, &ws)?))
            }
            Kind::Quant(_) => Ok(None),
        }
    }

    fn forward_parts(&self, x: &Tensor, tap: Tap) -> candle_core::Result<Vec<Tensor>> {
        for (names, _) in &self.parts {
            tap.emit(&names.input, x);
        }
        let y = match &self.kind {
            Kind::Dense(w) => x.matmul(&w.t()?)?,
            Kind::Mapped(parts) => {
                let n = parts.iter().map(InPlace::rows).sum::<usize>();
                let m = x.dim(0)?;
                let y = self
                    .plain_xwt(x)?
                    .expect("mapped weights are never quantized");
                Tensor::from_vec(y, (m, n), x.device())?
            }
            Kind::Quant(q) => qmm_rows(q, &x.contiguous()?)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        if self.parts.len() == 1 {
            tap.emit(&self.parts[0].0.output, &y);
            return Ok(vec![y]);
        }
        let mut start = 0;
        let mut outs = Vec::with_capacity(self.parts.len());
        for (names, width) in &self.parts {
            let part = y.narrow(1, start, *width)?;
            tap.emit(&names.output, &part);
            outs.push(part);
            start += width;
        }
        Ok(outs)
    }

    fn qtype(&self) -> Option<GgmlDType> {
        match &self.kind {
            Kind::Quant(QMatMul::QTensor(q)) => Some(q.dtype()),
            _ => None,
        }
    }

    /// How many layers run on candle's quantized matmul.
    pub(crate) fn quantized(&self) -> usize {
        match self.kind {
            Kind::Quant(_) => self.parts.len(),
            Kind::Dense(_) | Kind::Mapped(_) => 0,
        }
    }
}

/// `QMatMul` over row blocks of `x` in parallel on the current rayon pool.
/// candle's own worker pool is kept to the calling thread (see
/// `configure_threads`), so each block runs inline on one rayon worker.
fn qmm_rows(q: &QMatMul, x: &Tensor) -> candle_core::Result<Tensor> {
    use rayon::prelude::*;
    let rows = x.dim(0)?;
    let threads = rayon::current_num_threads();
    // Blocks of whole 16-row tiles, at least 32 rows each.
    let block = rows.div_ceil(threads).next_multiple_of(16).max(32);
    if threads == 1 || rows <= block {
        return q.forward(x);
    }
    let parts = (0..rows)
        .step_by(block)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|start| q.forward(&x.narrow(0, start, block.min(rows - start))?))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Q8_0 `[rows, k]` tensor with varied scales and values.
    fn q8_tensor(rows: usize, k: usize) -> crate::Tensor {
        let mut bytes = Vec::new();
        let mut s = 1u32;
        for b in 0..rows * k / 32 {
            let scale = half::f16::from_f32(0.01 + (b % 7) as f32 * 0.003);
            bytes.extend_from_slice(&scale.to_le_bytes());
            for _ in 0..32 {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                bytes.push((s >> 24) as u8);
            }
        }
        crate::Tensor::new(
            "w",
            vec![rows, k],
            DType::Ggml(GgmlType::Q8_0),
            crate::TensorData::Owned(Arc::new(bytes)),
        )
        .unwrap()
    }

    #[test]
    fn blocks_dequantized_in_row_blocks_match_a_dense_matmul() {
        let k = 4096;
        let rows = 2 * DEQUANT_BLOCK / k + 37; // three row blocks, the last partial
        let w = q8_tensor(rows, k);
        let dense = w.to_f32().unwrap();
        let f32_part: Vec<f32> = (0..5 * k).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
        let m = 3;
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7) % 11) as f32 * 0.05 - 0.25)
            .collect();
        let sources = [Source::F32(&f32_part, 5), Source::Blocks(&w)];
        let got = xwt(&x, m, k, &sources).unwrap();
        let n = 5 + rows;
        assert_eq!(got.len(), m * n);
        for i in 0..m {
            let xi = &x[i * k..(i + 1) * k];
            for j in 0..n {
                let wj = if j < 5 {
                    &f32_part[j * k..(j + 1) * k]
                } else {
                    &dense[(j - 5) * k..(j - 4) * k]
                };
                let want: f64 = xi.iter().zip(wj).map(|(a, b)| *a as f64 * *b as f64).sum();
                let g = got[i * n + j] as f64;
                assert!(
                    (g - want).abs() <= 1e-3 * want.abs().max(1.0),
                    "({i}, {j}): {g} vs {want}"
                );
            }
        }
    }
}
