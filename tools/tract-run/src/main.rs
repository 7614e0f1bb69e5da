//! tract-run: runs an ONNX file with tract-onnx, as an independent second
//! runtime for edgec's conformance tests.
//!
//!     tract-run MODEL.onnx INPUTS.safetensors OUTPUTS.safetensors
//!
//! Every model input is read from INPUTS by name (f32, f64, i64, i32, i8, u8
//! or bool; its shape there is the concrete shape the model is specialised
//! to), the model is optimised (`into_optimized`) and run, and every model
//! output is written to OUTPUTS under its ONNX name: floats as f32, integers
//! and booleans as i64.
//!
//! Exit codes: 0 ok, 1 error (a message names the file and what failed),
//! 2 usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tract_onnx::prelude::*;

const USAGE: &str = "usage: tract-run MODEL.onnx INPUTS.safetensors OUTPUTS.safetensors

Runs MODEL with tract-onnx on the tensors of INPUTS (one per model input, by
name; f32/f64/i64/i32/i8/u8/bool, with the concrete shapes to run at) and
writes every model output to OUTPUTS (floats as f32, integers as i64).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.len() != 3 || args.iter().any(|a| a.starts_with('-')) {
        eprintln!(
            "tract-run: expected 3 arguments, got {}\n{USAGE}",
            args.len()
        );
        return ExitCode::from(2);
    }
    let (model, inputs, outputs) = (
        Path::new(&args[0]),
        Path::new(&args[1]),
        Path::new(&args[2]),
    );
    // A panic inside tract (an op it does not expect) is an error like any other.
    match std::panic::catch_unwind(|| run(model, inputs, outputs)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("tract-run: error: {e:#}");
            ExitCode::from(1)
        }
        Err(_) => {
            eprintln!(
                "tract-run: error: tract panicked on {} (message above)",
                model.display()
            );
            ExitCode::from(1)
        }
    }
}

fn run(model_path: &Path, inputs_path: &Path, outputs_path: &Path) -> Result<()> {
    let input_bytes = std::fs::read(inputs_path)
        .with_context(|| format!("reading inputs {}", inputs_path.display()))?;
    let input_file = SafeTensors::deserialize(&input_bytes)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("parsing inputs {} as safetensors", inputs_path.display()))?;

    let mut model = tract_onnx::onnx()
        .model_for_path(model_path)
        .with_context(|| {
            format!(
                "loading ONNX model {} with tract-onnx",
                model_path.display()
            )
        })?;

    // Inputs: one tensor per model input, by name; its shape and type become
    // the input's fact.
    let input_names: Vec<String> = model
        .input_outlets()?
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    let mut values: TVec<TValue> = tvec![];
    for (ix, name) in input_names.iter().enumerate() {
        let view = input_file.tensor(name).map_err(|_| {
            let have = input_file.names();
            anyhow!(
                "{}: no tensor named `{name}` for model input {ix} of {} (it holds: {})",
                inputs_path.display(),
                model_path.display(),
                have.join(", ")
            )
        })?;
        let tensor = to_tract(&view)
            .with_context(|| format!("{}: tensor `{name}`", inputs_path.display()))?;
        let declared = model.input_fact(ix)?.datum_type();
        if let Some(dt) = declared {
            if dt != tensor.datum_type() {
                bail!(
                    "{}: tensor `{name}` is {:?} but model input `{name}` of {} is {:?}",
                    inputs_path.display(),
                    tensor.datum_type(),
                    model_path.display(),
                    dt
                );
            }
        }
        model
            .set_input_fact(
                ix,
                InferenceFact::dt_shape(tensor.datum_type(), tensor.shape()),
            )
            .with_context(|| {
                format!(
                    "setting the fact of input `{name}` of {}",
                    model_path.display()
                )
            })?;
        values.push(tensor.into_tvalue());
    }
    let model_inputs: std::collections::HashSet<&str> =
        input_names.iter().map(|s| s.as_str()).collect();
    let extra: Vec<&str> = input_file
        .names()
        .into_iter()
        .filter(|n| !model_inputs.contains(n))
        .collect();
    if !extra.is_empty() {
        bail!(
            "{}: tensors {} are not inputs of {} (its inputs: {})",
            inputs_path.display(),
            extra.join(", "),
            model_path.display(),
            input_names.join(", ")
        );
    }

    // Output names, taken before optimisation (which keeps the output order).
    let output_names: Vec<String> = model
        .output_outlets()?
        .iter()
        .map(|&o| {
            model
                .outlet_label(o)
                .map(str::to_owned)
                .unwrap_or_else(|| model.node(o.node).name.clone())
        })
        .collect();

    let plan = model
        .into_optimized()
        .with_context(|| format!("optimizing {} with tract", model_path.display()))?
        .into_runnable()
        .with_context(|| format!("planning {} with tract", model_path.display()))?;
    let results = plan
        .run(values)
        .with_context(|| format!("running {} with tract", model_path.display()))?;
    if results.len() != output_names.len() {
        bail!(
            "{}: tract gave {} outputs for {} declared",
            model_path.display(),
            results.len(),
            output_names.len()
        );
    }

    // Outputs: floats as f32, integers (and booleans) as i64.
    let mut encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![];
    for (name, value) in output_names.iter().zip(results.iter()) {
        let dt = value.datum_type();
        let (dtype, bytes) = if dt.is_float() {
            let t = value
                .cast_to::<f32>()
                .with_context(|| format!("output `{name}`: casting {dt:?} to f32"))?;
            (
                Dtype::F32,
                le_bytes(t.try_as_plain_ram()?.as_slice::<f32>()?, |x| {
                    x.to_le_bytes()
                }),
            )
        } else if dt.is_integer() || dt == bool::datum_type() || dt == TDim::datum_type() {
            let t = value
                .cast_to::<i64>()
                .with_context(|| format!("output `{name}`: casting {dt:?} to i64"))?;
            (
                Dtype::I64,
                le_bytes(t.try_as_plain_ram()?.as_slice::<i64>()?, |x| {
                    x.to_le_bytes()
                }),
            )
        } else {
            bail!(
                "{}: output `{name}` is {dt:?}, neither a float nor an integer",
                model_path.display()
            );
        };
        encoded.push((name.clone(), dtype, value.shape().to_vec(), bytes));
    }
    write_outputs(outputs_path, &encoded)
}

/// A safetensors tensor as a tract tensor of the same type and shape.
fn to_tract(view: &TensorView) -> Result<Tensor> {
    let shape = view.shape();
    let data = view.data();
    fn decode<T: Datum + Copy, const N: usize>(
        shape: &[usize],
        data: &[u8],
        f: impl Fn([u8; N]) -> T,
    ) -> Result<Tensor> {
        let v: Vec<T> = data
            .chunks_exact(N)
            .map(|c| f(c.try_into().unwrap()))
            .collect();
        Tensor::from_shape(shape, &v)
    }
    match view.dtype() {
        Dtype::F32 => decode(shape, data, f32::from_le_bytes),
        Dtype::F64 => decode(shape, data, f64::from_le_bytes),
        Dtype::I64 => decode(shape, data, i64::from_le_bytes),
        Dtype::I32 => decode(shape, data, i32::from_le_bytes),
        Dtype::I8 => decode(shape, data, i8::from_le_bytes),
        Dtype::U8 => decode(shape, data, u8::from_le_bytes),
        Dtype::BOOL => decode(shape, data, |[b]: [u8; 1]| b != 0),
        other => bail!("dtype {other:?} is not supported (f32, f64, i64, i32, i8, u8, bool are)"),
    }
}

fn le_bytes<T: Copy, const N: usize>(values: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&x| f(x)).collect()
}

/// Writes the outputs to a temporary file beside `path`, then renames it.
fn write_outputs(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| anyhow!("output `{name}`: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let file_name = path
        .file_name()
        .ok_or_else(|| anyhow!("{}: not a file path", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".tract-run-");
    tmp_name.push(file_name);
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let written = safetensors::serialize_to_file(views, None, &tmp)
        .map_err(|e| anyhow!("{e}"))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(Into::into));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("writing outputs {}", path.display())));
    }
    Ok(())
}
