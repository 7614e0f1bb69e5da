//! GGUF output: the per-tensor plan (llama.cpp's names and the preset's
//! types), and the streaming writer that encodes each tensor as it goes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use edgec_core::{Family, GgmlType, Model, Tensor};
use edgec_formats::gguf::{self, TensorPlan};
use edgec_formats::output::write_file_atomically;
use edgec_formats::FormatError;
use edgec_passes::ggml_quant::quantize_row;
use edgec_passes::gptq::Hessian;
use edgec_passes::presets::{tensor_type, ModelShape, Preset, TensorDesc};
use rayon::prelude::*;
use serde::Serialize;

use crate::progress::{Progress, Unit};

pub struct GgufOptions<'a> {
    /// The file the model was read from, named in errors about its weights.
    pub input: &'a Path,
    /// Keep NaN or infinite weights instead of failing.
    pub allow_nonfinite: bool,
    /// Per-column importance of weights (by IR name), for the quantizers'
    /// weighted scale searches (from calibration or an imatrix file).
    pub importance: Option<&'a HashMap<String, Vec<f32>>>,
    /// Per weight (IR name), the input Hessian for rounding with error
    /// feedback (GPTQ).
    pub hessians: Option<&'a HashMap<String, Arc<Hessian>>>,
    /// Tensors already encoded (sequential calibration), in IR row order.
    pub encoded: Option<&'a crate::encoded::EncodedStore>,
    /// Per weight (IR name), a type that replaces the preset's (mixed
    /// precision, pinned types).
    pub types: Option<&'a HashMap<String, GgmlType>>,
}

#[derive(Serialize)]
pub struct TensorReport {
    pub name: String,
    pub shape: Vec<usize>,
    #[serde(rename = "type")]
    pub ty: String,
    pub bytes: usize,
    /// Bytes of the tensor as read.
    #[serde(skip)]
    pub bytes_before: usize,
    #[serde(skip)]
    pub errors: ErrorStats,
}

#[derive(Serialize)]
pub struct GgufReport {
    pub output: String,
    pub preset: String,
    pub params: usize,
    pub bytes: u64,
    pub bits_per_weight: f64,
    pub seconds: f64,
    pub tensors: Vec<TensorReport>,
}

fn model_shape(family: &Family, model: &Model, importance: bool) -> ModelShape {
    match family {
        Family::Llama(p) => ModelShape {
            n_layers: p.num_layers,
            // llama.cpp's quantizer looks at the first block's ratio.
            n_gqa: p.block(0).num_heads / p.block(0).num_kv_heads.max(1),
            tied_embeddings: model.tensor("lm_head.weight").is_none(),
            importance,
        },
        Family::Bert(p) => ModelShape {
            n_layers: p.num_layers,
            n_gqa: 1,
            tied_embeddings: false,
            importance,
        },
    }
}

fn layer_of(gguf_name: &str) -> Option<usize> {
    gguf_name
        .strip_prefix("blk.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Chooses every tensor's GGUF name and type; `importance` when rounding
/// will use importance.
pub fn plan(model: &Model, preset: &Preset, importance: bool) -> Result<Vec<TensorPlan>> {
    let family = model.meta.family.as_ref().context(
        "the model has no architecture (a GGUF needs one: give a model folder with config.json)",
    )?;
    let shape = model_shape(family, model, importance);
    model
        .tensors
        .iter()
        .map(|t| {
            let name = gguf::gguf_tensor_name(family, &t.name).with_context(|| {
                format!(
                    "tensor {} has no GGUF name in a {} model",
                    t.name,
                    family.name()
                )
            })?;
            let desc = TensorDesc {
                gguf_name: &name,
                n_dims: t.shape.len(),
                row_len: t.row_len(),
                layer: layer_of(&name),
            };
            let ty = tensor_type(preset, &shape, &desc);
            Ok(TensorPlan {
                name,
                shape: t.shape.clone(),
                ty,
            })
        })
        .collect()
}

/// Encodes tensor `t` as `ty` a row at a time, rows in parallel, taking
/// output row `r` from source row `source_row(r)` (the rotary reorder), so
/// that only one row per thread is ever held as f32. Rows are independent,
/// so the bytes do not depend on the thread count. Fails on a non-finite
/// weight unless `allow_nonfinite`. `importance` weighs the columns of
/// every row; with `hessian` rows are rounded with error feedback.
pub fn encode_tensor(
    t: &Tensor,
    ty: GgmlType,
    source_row: &(dyn Fn(usize) -> usize + Sync),
    allow_nonfinite: bool,
    importance: Option<&[f32]>,
    hessian: Option<&Hessian>,
) -> Result<(Vec<u8>, ErrorStats), String> {
    if let Some(h) = hessian {
        if h.cols() != t.row_len() {
            return Err(format!(
                "tensor {}: a Hessian of {} columns for rows of {}",
                t.name,
                h.cols(),
                t.row_len()
            ));
        }
    }
    if let Some(imp) = importance {
        if imp.len() != t.row_len() {
            return Err(format!(
                "tensor {}: importance has {} values for rows of {}",
                t.name,
                imp.len(),
                t.row_len()
            ));
        }
    }
    const ROWS_PER_TASK: usize = 16;
    let row_len = t.row_len();
    let out_row = ty.row_bytes(row_len).map_err(|e| e.to_string())?;
    let mut out = vec![0u8; out_row * t.row_count()];
    let results: Vec<Result<ErrorStats, String>> = out
        .par_chunks_mut(out_row * ROWS_PER_TASK)
        .enumerate()
        .map(|(chunk, dst)| {
            let n = dst.len() / out_row;
            let mut rows = vec![0f32; row_len * n];
            for (k, row) in rows.chunks_exact_mut(row_len).enumerate() {
                let r = source_row(chunk * ROWS_PER_TASK + k);
                t.row_to_f32(r, row).map_err(|e| e.to_string())?;
                if !allow_nonfinite {
                    if let Some(c) = row.iter().position(|v| !v.is_finite()) {
                        return Err(format!(
                            "tensor {} has a non-finite weight ({}) at row {r}, column {c}; \
                             refusing to write (pass --allow-nonfinite to keep it)",
                            t.name, row[c]
                        ));
                    }
                }
            }
            let mut encoded = Vec::with_capacity(dst.len());
            match hessian {
                // the task's rows together: GPTQ's update is a matrix product
                Some(h) => h.quantize_rows(ty, &rows, importance, &mut encoded),
                None => rows
                    .chunks_exact(row_len)
                    .try_for_each(|row| quantize_row(ty, row, importance, &mut encoded)),
            }
            .map_err(|e| format!("tensor {}: {e}", t.name))?;
            dst.copy_from_slice(&encoded);
            let mut decoded = vec![0f32; rows.len()];
            edgec_core::ggml::dequant::dequantize(ty, &encoded, &mut decoded)
                .map_err(|e| format!("tensor {}: {e}", t.name))?;
            Ok(ErrorStats::of(&rows, &decoded))
        })
        .collect();
    // The first failing row in order, whatever thread met it first; the
    // sums in row order, so they do not depend on the thread count either.
    let mut total = ErrorStats::default();
    for r in results {
        total.add(&r?);
    }
    Ok((out, total))
}

/// How far written weights are from the float ones, summed over rows.
#[derive(Default, Clone, Copy, Debug)]
pub struct ErrorStats {
    /// Σ (w − q)²
    pub sq_error: f64,
    /// Σ w²
    pub sq_norm: f64,
    /// Written values that are exactly zero, and all values.
    pub zeros: u64,
    pub count: u64,
    /// Values that were exactly zero before encoding (a pruned model's mask).
    pub zeros_before: u64,
}

impl ErrorStats {
    fn of(orig: &[f32], written: &[f32]) -> ErrorStats {
        let mut s = ErrorStats::default();
        for (&w, &q) in orig.iter().zip(written) {
            let d = (w - q) as f64;
            s.sq_error += d * d;
            s.sq_norm += (w as f64) * (w as f64);
            s.zeros += u64::from(q == 0.0);
            s.zeros_before += u64::from(w == 0.0);
        }
        s.count = orig.len() as u64;
        s
    }

    fn add(&mut self, o: &ErrorStats) {
        self.sq_error += o.sq_error;
        self.sq_norm += o.sq_norm;
        self.zeros += o.zeros;
        self.count += o.count;
        self.zeros_before += o.zeros_before;
    }

    /// ‖W − Q(W)‖ / ‖W‖ (0 for an all-zero tensor).
    pub fn relative_rms(&self) -> f64 {
        if self.sq_norm > 0.0 {
            (self.sq_error / self.sq_norm).sqrt()
        } else {
            0.0
        }
    }

    pub fn sparsity(&self) -> f64 {
        self.zeros as f64 / self.count.max(1) as f64
    }

    pub fn sparsity_before(&self) -> f64 {
        self.zeros_before as f64 / self.count.max(1) as f64
    }
}

/// Writes `model` as a GGUF file at `out` under `preset`.
pub fn write_gguf(
    model: &Model,
    out: &Path,
    preset: &Preset,
    opts: &GgufOptions,
    progress: &dyn Progress,
) -> Result<GgufReport> {
    let start = Instant::now();
    let mut plans = plan(model, preset, opts.importance.is_some())?;
    if let Some(types) = opts.types {
        crate::mixed::apply_types(model, &mut plans, types);
    }
    let family = model
        .meta
        .family
        .as_ref()
        .expect("plan() checked the family");
    let file_type = gguf::file_type_id(preset.name).unwrap_or(0);
    let metadata = gguf::model_metadata(model, file_type);
    let bar = progress.bar(plans.len() as u64, "quantize", Unit::Items);
    let errors = std::sync::Mutex::new(vec![ErrorStats::default(); plans.len()]);
    write_file_atomically(out, |w| {
        gguf::writer::write(out, w, &metadata, &plans, |i| {
            let t = &model.tensors[i];
            let plan = &plans[i];
            bar.set_message(&plan.name);
            let rows = t.row_count();
            let rotary =
                gguf::rotary_permute_heads(family, &t.name).filter(|h| rows.is_multiple_of(2 * h));
            let source_row = move |r: usize| match rotary {
                Some(n_head) => gguf::rotary_source_row(r, rows, n_head, true),
                None => r,
            };
            let importance = opts
                .importance
                .and_then(|m| m.get(&t.name))
                .map(Vec::as_slice);
            let hessian = opts.hessians.and_then(|m| m.get(&t.name)).map(Arc::as_ref);
            let stored = match opts.encoded {
                Some(store) => store.get(&t.name).map_err(|e| FormatError::io(out, e))?,
                None => None,
            };
            let (bytes, err) = match stored {
                // rows are encoded independently: reordering encoded rows is
                // the same as encoding reordered rows
                Some((bytes, errors)) => (reorder_rows(&bytes, rows, &source_row), errors),
                None => encode_tensor(
                    t,
                    plan.ty,
                    &source_row,
                    opts.allow_nonfinite,
                    importance,
                    hessian,
                )
                .map_err(|msg| FormatError::invalid(opts.input, msg))?,
            };
            errors.lock().expect("error stats lock")[i] = err;
            t.release_pages();
            bar.inc(1);
            Ok(bytes)
        })
    })?;
    bar.finish();
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    let errors = errors.into_inner().expect("error stats lock");
    let tensors: Vec<TensorReport> = plans
        .iter()
        .zip(&model.tensors)
        .zip(errors)
        .map(|((p, t), errors)| TensorReport {
            name: p.name.clone(),
            shape: p.shape.clone(),
            ty: p.ty.name().to_string(),
            bytes: p.byte_len().unwrap_or(0),
            bytes_before: t.bytes().len(),
            errors,
        })
        .collect();
    let params = model.total_params();
    let weight_bytes: usize = tensors.iter().map(|t| t.bytes).sum();
    if params == 0 {
        bail!("{}: the model has no tensors", out.display());
    }
    Ok(GgufReport {
        output: out.display().to_string(),
        preset: preset.name.to_string(),
        params,
        bytes,
        bits_per_weight: weight_bytes as f64 * 8.0 / params as f64,
        seconds: start.elapsed().as_secs_f64(),
        tensors,
    })
}

/// Encoded rows in a new order: output row `r` is row `source_row(r)`.
fn reorder_rows(bytes: &[u8], rows: usize, source_row: &dyn Fn(usize) -> usize) -> Vec<u8> {
    let row_bytes = bytes.len() / rows.max(1);
    let mut out = Vec::with_capacity(bytes.len());
    for r in 0..rows {
        let s = source_row(r);
        out.extend_from_slice(&bytes[s * row_bytes..(s + 1) * row_bytes]);
    }
    out
}

/// Fails on the first NaN or infinite weight of the model read from
/// `input`, naming the tensor.
pub fn check_finite(model: &Model, input: &Path) -> Result<()> {
    for t in &model.tensors {
        let mut row = vec![0f32; t.row_len()];
        for r in 0..t.row_count() {
            t.row_to_f32(r, &mut row)?;
            if let Some(c) = row.iter().position(|v| !v.is_finite()) {
                bail!(
                    "{}: tensor {} has a non-finite weight ({}) at row {r}, column {c}; \
                     refusing to write (pass --allow-nonfinite to keep it)",
                    input.display(),
                    t.name,
                    row[c]
                );
            }
        }
        t.release_pages();
    }
    Ok(())
}
