//! Mixed precision for `quantize.gguf`: per-tensor GGUF types that meet a
//! size budget (`target_bpw`, `target_size`), chosen from each weight's
//! measured sensitivity to each candidate type (`edgec_passes::mixed`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use edgec_core::{GgmlType, Model};
use edgec_formats::gguf::{self, DEFAULT_ALIGNMENT};
use edgec_passes::gptq::Hessian;
use edgec_passes::mixed::{self, Cost, Errors, Proxy};
use edgec_passes::presets::Preset;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::calib::Method;
use crate::error::usage;
use crate::passes::quantize_gguf::QuantizeGguf;
use crate::passes::{Context, Outcome};
use crate::progress::{Progress, Unit};
use crate::writers::gguf as gguf_out;

/// Rows of each weight the sensitivities are measured on (spread evenly;
/// the errors are scaled to the whole tensor).
pub const SAMPLE_ROWS: usize = 128;

/// The budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Bits per weight over every tensor (as the writer reports it:
    /// 8 · tensor bytes / parameters).
    Bpw(f64),
    /// Bytes of the whole file (header and metadata included).
    Bytes(u64),
}

/// A size in bytes: a number, or a string with a suffix: K, M, G, T (or
/// KiB, MiB, GiB, TiB) are powers of 1024, KB, MB, GB, TB powers of 1000;
/// decimals allowed ("1.2G").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ByteSize {
    Bytes(u64),
    Text(String),
}

impl ByteSize {
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            ByteSize::Bytes(b) => Ok(*b),
            ByteSize::Text(s) => parse_size(s),
        }
    }
}

/// Parses "80M", "1.2G", "123456", "500MB" (see [`ByteSize`]).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (a number with an optional K, M, G suffix)"))?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1f64,
        "K" | "KI" | "KIB" => 1024f64,
        "M" | "MI" | "MIB" => 1024f64.powi(2),
        "G" | "GI" | "GIB" => 1024f64.powi(3),
        "T" | "TI" | "TIB" => 1024f64.powi(4),
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        u => {
            return Err(format!(
                "{s:?}: unknown size unit {u:?} (K, M, G, T; KB, MB, GB, TB)"
            ))
        }
    };
    let bytes = (value * mult).round();
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{s:?} is not a positive size"));
    }
    Ok(bytes as u64)
}

/// Which proxy drives the allocation (recipe key `sensitivity`; default
/// kfac for causal LMs, gram for encoders, which have no next-token loss).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sensitivity {
    /// Σ (w − q)ᵀ G (w − q) with the input's Gram matrix.
    Gram,
    /// Σ_j E[x_j²] (w_j − q_j)², the Gram matrix's diagonal.
    Diag,
    /// Σ F (w − q)², F the weights' diagonal Fisher information (squared
    /// gradients of the calibration loss; costs backward passes).
    Fisher,
    /// Σ_rows γ_row (w − q)ᵀ G (w − q), γ the row's Fisher over its input
    /// energy: the Gram error in units of the loss.
    Kfac,
}

impl Sensitivity {
    pub fn name(self) -> &'static str {
        match self {
            Sensitivity::Gram => "gram",
            Sensitivity::Diag => "diag",
            Sensitivity::Fisher => "fisher",
            Sensitivity::Kfac => "kfac",
        }
    }

    fn proxy(self) -> Proxy {
        match self {
            Sensitivity::Gram => Proxy::Gram,
            Sensitivity::Diag => Proxy::Diag,
            Sensitivity::Fisher => Proxy::Fisher,
            Sensitivity::Kfac => Proxy::Kfac,
        }
    }

    /// Whether the proxy needs the Fisher information.
    pub fn needs_fisher(self) -> bool {
        matches!(self, Sensitivity::Fisher | Sensitivity::Kfac)
    }
}

/// What the allocation chose.
pub struct Mixed {
    /// Per IR weight name, its type (every quantizable weight).
    pub types: HashMap<String, GgmlType>,
    /// Seconds the measurement and the allocation took.
    pub seconds: f64,
    pub summary: serde_json::Value,
    pub line: String,
}

#[derive(Serialize)]
struct CandidateRecord {
    #[serde(rename = "type")]
    ty: &'static str,
    bytes: u64,
    plain: f64,
    diag: f64,
    gram: f64,
    fisher: f64,
    kfac: f64,
}

#[derive(Serialize)]
struct TensorRecord {
    name: String,
    gguf: String,
    #[serde(rename = "type")]
    ty: &'static str,
    /// Whether the errors weigh by the full Gram matrix (a Hessian was there).
    gram: bool,
    candidates: Vec<CandidateRecord>,
}

/// Types given by GGUF (or IR) tensor name, as IR name → type; unknown
/// names, types and types whose blocks do not fit the rows are errors
/// naming the key `key`.
pub fn pinned_types(
    model: &Model,
    plans: &[gguf::TensorPlan],
    given: &BTreeMap<String, String>,
    key: &str,
) -> Result<HashMap<String, GgmlType>> {
    let mut out = HashMap::new();
    for (name, ty_name) in given {
        let ty = GgmlType::from_name(ty_name)
            .ok_or_else(|| usage(format!("{key}: {name} = \"{ty_name}\": unknown type")))?;
        let (t, _) = model
            .tensors
            .iter()
            .zip(plans)
            .find(|(t, p)| &p.name == name || &t.name == name)
            .ok_or_else(|| usage(format!("{key}: the model has no tensor {name}")))?;
        if !t.row_len().is_multiple_of(ty.block_size()) || (t.shape.len() < 2 && ty.is_quantized())
        {
            return Err(usage(format!(
                "{key}: {name} = \"{ty_name}\": rows of {} are not whole {}-element blocks",
                t.row_len(),
                ty.block_size()
            )));
        }
        out.insert(t.name.clone(), ty);
    }
    Ok(out)
}

/// Sets the types of `plans` that `types` (IR name → type) gives.
pub fn apply_types(
    model: &Model,
    plans: &mut [gguf::TensorPlan],
    types: &HashMap<String, GgmlType>,
) {
    for (t, p) in model.tensors.iter().zip(plans) {
        if let Some(&ty) = types.get(&t.name) {
            p.ty = ty;
        }
    }
}

/// Sequences of the calibration data the Fisher information is summed over.
pub const FISHER_SEQS: usize = 8;

/// The diagonal Fisher information of every weight (IR name, row-major like
/// the weight): the mean over `seqs` of the squared gradient of each
/// sequence's next-token cross-entropy.
pub fn fisher_information(
    model: &Model,
    seqs: &[Vec<u32>],
    progress: &dyn Progress,
) -> Result<HashMap<String, Vec<f32>>> {
    let (rt, vars) = edgec_core::runtime::Runtime::trainable(model)?;
    let bar = progress.bar(seqs.len() as u64, "fisher", Unit::Items);
    let mut acc: HashMap<String, Vec<f32>> = HashMap::new();
    for s in seqs.iter().filter(|s| s.len() >= 2) {
        let grads = next_token_loss(&rt, s)?.backward()?;
        for (name, var) in &vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
                let a = acc
                    .entry(name.clone())
                    .or_insert_with(|| vec![0f32; g.len()]);
                for (a, g) in a.iter_mut().zip(g) {
                    *a += g * g;
                }
            }
        }
        bar.inc(1);
    }
    bar.finish();
    let k = 1.0 / seqs.len().max(1) as f32;
    for v in acc.values_mut() {
        v.iter_mut().for_each(|x| *x *= k);
    }
    Ok(acc)
}

/// The mean next-token cross-entropy of one sequence (at least 2 tokens)
/// under a trainable runtime, ready for `backward`.
pub fn next_token_loss(
    rt: &edgec_core::runtime::Runtime,
    seq: &[u32],
) -> Result<candle_core::Tensor> {
    use candle_core::{Device, Tensor, D};
    let n = seq.len();
    let ids = Tensor::from_vec(seq.to_vec(), (1, n), &Device::Cpu)?;
    let logits = rt.forward(&ids)?.squeeze(0)?.narrow(0, 0, n - 1)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let tgt = Tensor::from_vec(seq[1..].to_vec(), (n - 1, 1), &Device::Cpu)?;
    Ok(logp.gather(&tgt, 1)?.mean_all()?.neg()?)
}

/// Chooses every quantizable weight's type so that the file meets `target`
/// with the least summed sensitivity. `pinned` weights keep their type;
/// weights the preset leaves in a float type (norms, rows of no block
/// size) stay so.
#[allow(clippy::too_many_arguments)]
pub fn choose(
    model: &Model,
    preset: &Preset,
    importance: Option<&HashMap<String, Vec<f32>>>,
    hessians: Option<&HashMap<String, Arc<Hessian>>>,
    fisher: Option<&HashMap<String, Vec<f32>>>,
    pinned: &HashMap<String, GgmlType>,
    target: Target,
    sensitivity: Sensitivity,
    progress: &dyn Progress,
) -> Result<Mixed> {
    let start = std::time::Instant::now();
    let mut plans = gguf_out::plan(model, preset, importance.is_some())?;
    apply_types(model, &mut plans, pinned);
    let params = model.total_params();
    let padded = matches!(target, Target::Bytes(_));
    let cost = |bytes: usize| -> u64 {
        if padded {
            bytes.next_multiple_of(DEFAULT_ALIGNMENT) as u64
        } else {
            bytes as u64
        }
    };
    let mut fixed = 0u64;
    let mut free: Vec<(usize, Vec<GgmlType>)> = Vec::new();
    for (i, (t, p)) in model.tensors.iter().zip(&plans).enumerate() {
        let cands = if pinned.contains_key(&t.name) || !p.ty.is_quantized() {
            vec![]
        } else {
            mixed::candidates(t.row_len())
        };
        if cands.is_empty() {
            fixed += cost(p.byte_len()?);
        } else {
            free.push((i, cands));
        }
    }
    // the budget of the tensor data; the header is fixed by the plan
    let (total, header, what) = match target {
        Target::Bpw(b) => (
            (b * params as f64 / 8.0).floor() as u64,
            0,
            format!("target_bpw = {b}"),
        ),
        Target::Bytes(s) => {
            let file_type = gguf::file_type_id(preset.name).unwrap_or(0);
            let header = gguf::writer::header(&gguf::model_metadata(model, file_type), &plans)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .len() as u64;
            (
                s.saturating_sub(header),
                header,
                format!("target_size = {s} bytes"),
            )
        }
    };
    let bpw = |bytes: u64| bytes as f64 * 8.0 / params.max(1) as f64;

    let bar = progress.bar(free.len() as u64, "sensitivity", Unit::Items);
    let measured: Vec<(Vec<Errors>, bool)> = free
        .par_iter()
        .map(|(i, cands)| {
            let t = &model.tensors[*i];
            let rows = mixed::sample_rows(t.row_count(), SAMPLE_ROWS);
            let len = t.row_len();
            let mut data = vec![0f32; rows.len() * len];
            for (dst, &r) in data.chunks_exact_mut(len).zip(&rows) {
                t.row_to_f32(r, dst)?;
            }
            let imp = importance.and_then(|m| m.get(&t.name)).map(Vec::as_slice);
            let h = hessians.and_then(|m| m.get(&t.name)).map(Arc::as_ref);
            let f: Option<Vec<f32>> = fisher.and_then(|m| m.get(&t.name)).map(|f| {
                rows.iter()
                    .flat_map(|&r| &f[r * len..(r + 1) * len])
                    .copied()
                    .collect()
            });
            let errs = mixed::candidate_errors(&data, len, cands, imp, h, f.as_deref())
                .map_err(|e| anyhow::anyhow!("tensor {}: {e}", t.name))?;
            let scale = t.row_count() as f64 / rows.len() as f64;
            bar.inc(1);
            Ok((errs.iter().map(|e| e.scaled(scale)).collect(), h.is_some()))
        })
        .collect::<Result<_>>()?;
    bar.finish();

    let proxy = sensitivity.proxy();
    let weights: Vec<Vec<Cost>> = free
        .iter()
        .zip(&measured)
        .map(|((i, cands), (errs, _))| {
            let t = &model.tensors[*i];
            cands
                .iter()
                .zip(errs)
                .map(|(ty, e)| {
                    let bytes = ty.row_bytes(t.row_len()).unwrap_or(0) * t.row_count();
                    Ok(Cost {
                        bytes: cost(bytes),
                        error: e.get(proxy),
                    })
                })
                .collect::<Result<_>>()
        })
        .collect::<Result<_>>()?;
    let lowest = fixed
        + weights
            .iter()
            .map(|w| w.iter().map(|c| c.bytes).min().unwrap_or(0))
            .sum::<u64>();
    let highest = fixed + mixed::max_bytes(&weights);
    let describe = |bytes: u64| match target {
        Target::Bpw(_) => format!("{:.3} bits/weight", bpw(bytes)),
        Target::Bytes(_) => format!("{} bytes", bytes + header),
    };
    if total < lowest {
        return Err(usage(format!(
            "{what}: below the smallest mix, {} (every weight at its lowest candidate)",
            describe(lowest)
        )));
    }
    if (total as f64) > highest as f64 * 1.01 {
        return Err(usage(format!(
            "{what}: above the largest mix, {} (every weight Q8_0); use a float type instead",
            describe(highest)
        )));
    }
    let alloc = mixed::allocate(&weights, total - fixed).context("allocating types")?;
    let mut types: HashMap<String, GgmlType> = pinned.clone();
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut records = Vec::new();
    for (((i, cands), (errs, gram)), &c) in free.iter().zip(&measured).zip(&alloc.choice) {
        let t = &model.tensors[*i];
        types.insert(t.name.clone(), cands[c]);
        *counts.entry(cands[c].name()).or_default() += 1;
        records.push(TensorRecord {
            name: t.name.clone(),
            gguf: plans[*i].name.clone(),
            ty: cands[c].name(),
            gram: *gram,
            candidates: cands
                .iter()
                .zip(errs)
                .zip(&weights[records.len()])
                .map(|((ty, e), w)| CandidateRecord {
                    ty: ty.name(),
                    bytes: w.bytes,
                    plain: e.plain,
                    diag: e.diag,
                    gram: e.gram,
                    fisher: e.fisher,
                    kfac: e.kfac,
                })
                .collect(),
        });
    }
    let planned = fixed + alloc.bytes;
    let short = if (planned as f64) < 0.99 * total as f64 {
        " (more than 1% under the target: the next upgrades do not fit)".to_string()
    } else {
        String::new()
    };
    let seconds = start.elapsed().as_secs_f64();
    let mix = counts
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    let line = format!(
        "mixed precision ({what}): {} planned{short}; {mix} ({} proxy, {SAMPLE_ROWS} rows per weight, {seconds:.2}s)",
        describe(planned),
        sensitivity.name()
    );
    let summary = serde_json::json!({
        "target_bpw": match target { Target::Bpw(b) => Some(b), _ => None },
        "target_size": match target { Target::Bytes(s) => Some(s), _ => None },
        "sensitivity": sensitivity.name(),
        "sample_rows": SAMPLE_ROWS,
        "tensor_bytes": planned,
        "file_bytes": (header > 0).then_some(planned + header),
        "bits_per_weight": bpw(planned),
        "error": alloc.error,
        "seconds": seconds,
        "types": counts,
        "tensors": records,
    });
    Ok(Mixed {
        types,
        seconds,
        summary,
        line,
    })
}

/// The mixed-precision keys of a `quantize.gguf` step.
impl QuantizeGguf {
    /// The mixed-precision budget, if any (keys checked).
    pub(crate) fn target(&self) -> Result<Option<Target>> {
        let target = match (self.target_bpw, &self.target_size) {
            (Some(_), Some(_)) => {
                return Err(usage(
                    "target_bpw: give target_bpw or target_size, not both",
                ))
            }
            (Some(b), None) if !(b.is_finite() && b > 0.0) => {
                return Err(usage(format!("target_bpw = {b}: not a positive number")))
            }
            (Some(b), None) => Some(Target::Bpw(b)),
            (None, Some(s)) => Some(Target::Bytes(
                s.bytes().map_err(|e| usage(format!("target_size: {e}")))?,
            )),
            (None, None) => None,
        };
        let key = if self.target_bpw.is_some() {
            "target_bpw"
        } else {
            "target_size"
        };
        if target.is_some() && self.data.is_none() {
            return Err(usage(format!(
                "{key}: mixed precision measures each tensor's sensitivity on calibration data: \
                 give data = \"NAME\" (--calib FILE)"
            )));
        }
        if target.is_some() && self.method == Some(Method::Rtn) {
            return Err(usage(format!(
                "{key}: mixed precision needs calibration (a method other than rtn)"
            )));
        }
        if target.is_none() && self.sensitivity.is_some() {
            return Err(usage("sensitivity: only with target_bpw or target_size"));
        }
        for (name, ty) in &self.tensor_types {
            if GgmlType::from_name(ty).is_none() {
                return Err(usage(format!(
                    "tensor_types: {name} = \"{ty}\": unknown type"
                )));
            }
        }
        Ok(target)
    }

    /// The types that replace the preset's: `tensor_types`, and under a
    /// target the mixed-precision choice (its line and summary into `out`).
    pub(crate) fn types(
        &self,
        model: &Model,
        preset: &Preset,
        importance: Option<&HashMap<String, Vec<f32>>>,
        hessians: Option<&HashMap<String, Arc<Hessian>>>,
        ctx: &Context,
        out: &mut Outcome,
    ) -> Result<Option<HashMap<String, GgmlType>>> {
        let plans = gguf_out::plan(model, preset, importance.is_some())?;
        let pinned = pinned_types(model, &plans, &self.tensor_types, "tensor_types")?;
        let Some(target) = self.target()? else {
            return Ok((!pinned.is_empty()).then_some(pinned));
        };
        let causal = matches!(model.meta.family, Some(edgec_core::Family::Llama(_)));
        let sensitivity = self.sensitivity.unwrap_or(if causal {
            Sensitivity::Kfac
        } else {
            Sensitivity::Gram
        });
        if sensitivity.needs_fisher() && !causal {
            return Err(usage(format!(
                "sensitivity = \"{}\": the Fisher information needs a causal language model (llama family); \
                 use \"gram\"",
                sensitivity.name()
            )));
        }
        let fisher_start = std::time::Instant::now();
        let fisher = match (&self.data, sensitivity.needs_fisher()) {
            (Some(name), true) => {
                let spec = ctx.data_set(name)?;
                let seqs = crate::calib::sequences(
                    model,
                    &spec.path,
                    spec.samples.unwrap_or(32).min(FISHER_SEQS),
                    spec.len.unwrap_or(512).min(512),
                )?;
                Some(fisher_information(model, &seqs, ctx.progress)?)
            }
            _ => None,
        };
        let m = choose(
            model,
            preset,
            importance,
            hessians,
            fisher.as_ref(),
            &pinned,
            target,
            sensitivity,
            ctx.progress,
        )?;
        out.lines.push(m.line);
        out.summary["mixed"] = m.summary;
        if fisher.is_some() {
            out.summary["mixed"]["seconds_fisher"] =
                serde_json::json!(fisher_start.elapsed().as_secs_f64() - m.seconds);
        }
        Ok(Some(m.types))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_suffixes() {
        assert_eq!(parse_size("123456").unwrap(), 123456);
        assert_eq!(parse_size("80M").unwrap(), 80 << 20);
        assert_eq!(parse_size("80MiB").unwrap(), 80 << 20);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(
            parse_size("1.2G").unwrap(),
            (1.2 * (1u64 << 30) as f64).round() as u64
        );
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("0").is_err());
        assert_eq!(ByteSize::Bytes(7).bytes().unwrap(), 7);
    }
}
