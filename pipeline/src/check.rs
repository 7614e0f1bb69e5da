//! `recipe check`: every step validated against the model as the earlier
//! steps leave it, before any work, and a plan with a peak memory estimate.

use std::fmt::Write as _;

use anyhow::Result;

use crate::error::usage;
use crate::passes::{CheckContext, ModelView, Pass};
use crate::recipe::Recipe;
use crate::registry::{self, DataNeed};

/// One checked step.
pub struct PlannedStep {
    pub pass: String,
    pub params: serde_json::Value,
    /// Rough peak resident memory while the step runs (bytes).
    pub memory: u64,
}

/// A checked recipe: its passes, built, and the plan.
pub struct Checked {
    pub passes: Vec<Box<dyn Pass>>,
    pub plan: Vec<PlannedStep>,
    /// The input model's parameters and file size.
    pub params: usize,
    pub input_bytes: u64,
}

impl Checked {
    /// The largest step estimate, and its step index.
    pub fn peak(&self) -> (u64, usize) {
        self.plan
            .iter()
            .enumerate()
            .map(|(i, s)| (s.memory, i))
            .max()
            .unwrap_or((0, 0))
    }

    /// The plan as people read it.
    pub fn describe(&self, recipe: &Recipe) -> String {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let mut s = format!(
            "input {} ({:.1}M parameters, {:.1} MiB)\n",
            recipe.input.model.display(),
            self.params as f64 / 1e6,
            mib(self.input_bytes)
        );
        for (i, step) in self.plan.iter().enumerate() {
            let params = match &step.params {
                serde_json::Value::Object(m) => m
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "step {} {:<16} ~{:>8.0} MiB  {params}",
                i + 1,
                step.pass,
                mib(step.memory)
            );
        }
        let (peak, at) = self.peak();
        let _ = writeln!(
            s,
            "estimated peak memory: ~{:.0} MiB (step {}, {})",
            mib(peak),
            at + 1,
            self.plan.get(at).map_or("", |p| p.pass.as_str())
        );
        s
    }
}

/// Validates every step of `recipe`: unknown passes and keys, data sets that
/// are missing or of the wrong kind, writers that cannot hold what the
/// steps produce, gates that cannot judge the model. Errors are usage
/// errors naming the step and the key.
pub fn check(recipe: &Recipe) -> Result<Checked> {
    let model = edgec_formats::read_model(&recipe.input.model)?;
    let input_bytes = crate::run::path_bytes(&recipe.input.model);
    for (name, d) in &recipe.data {
        if !d.path.exists() {
            return Err(usage(format!(
                "[data.{name}] path = \"{}\": no such file or folder",
                d.path.display()
            )));
        }
    }
    let mut view = ModelView::of(&model);
    let params = view.params;
    drop(model);
    let ctx = CheckContext { data: &recipe.data };
    let mut passes = Vec::new();
    let mut plan = Vec::new();
    for (i, step) in recipe.steps.iter().enumerate() {
        let pass = registry::build_step(i, step)?;
        let needs = pass.needs();
        if needs.data == DataNeed::Required && pass.data().is_none() {
            return Err(usage(format!(
                "step {} ({}): data: the pass needs a data set",
                i + 1,
                step.pass
            )));
        }
        let before = view.clone();
        pass.check(&mut view, &ctx).map_err(|e| {
            let msg = format!("step {} ({}): {e}", i + 1, step.pass);
            if e.downcast_ref::<crate::UsageError>().is_some() {
                usage(msg)
            } else {
                // the model does not fit the step: an error about the input
                anyhow::anyhow!("{}: {msg}", recipe.input.model.display())
            }
        })?;
        plan.push(PlannedStep {
            pass: step.pass.clone(),
            params: pass.params(),
            memory: estimate(&step.pass, pass.as_ref(), &before, input_bytes),
        });
        passes.push(pass);
    }
    if recipe.steps.is_empty() {
        return Err(usage("the recipe has no [[step]]"));
    }
    Ok(Checked {
        passes,
        plan,
        params,
        input_bytes,
    })
}

/// A rough peak of one step: what it holds at once, by what it does.
fn estimate(name: &str, pass: &dyn Pass, view: &ModelView, input_bytes: u64) -> u64 {
    let f32_model = (view.params * 4) as u64;
    let threads = rayon::current_num_threads() as u64;
    let one_tensor = view.largest_tensor_f32 as u64;
    match name {
        // calibration runs the whole model in f32 and keeps Gram matrices
        "quantize.gguf" if pass.data().is_some() => {
            f32_model * 2 + view.gram_bytes as u64 + input_bytes
        }
        "quantize.gguf" | "cast" => one_tensor,
        // the pruned weights in f32, plus a layer's work (a Hessian's factors)
        "prune" => f32_model + one_tensor * 4,
        "quantize.onnx" | "quantize.tflite" => f32_model * 2 + input_bytes,
        // the streaming GGUF writer holds a few rows per thread; graph
        // writers serialize the whole model
        "write" => match view.quant {
            crate::passes::QuantKind::Gguf => one_tensor * 2 + threads * (1 << 20) + input_bytes,
            _ => f32_model * 2 + input_bytes,
        },
        // reference and candidate runtimes
        "eval" => f32_model * 2 + input_bytes,
        _ => f32_model,
    }
}
