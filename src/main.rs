//! edgec: model compression and conversion for on-device ML.

mod cmd;
mod image_args;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// mimalloc rather than glibc's malloc: glibc kept freed layer-sized buffers
// resident in its heap (a layer-by-layer calibration of a 1.2B model ended
// holding 0.65 GB that malloc_trim gave back at once), which made peak
// memory grow with depth.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "edgec",
    version,
    about = "Compress and convert models for on-device ML"
)]
struct Cli {
    /// Worker threads (default: all cores). Output does not depend on it.
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Quantize a model (HF folder, .safetensors or .gguf) to a GGUF file.
    Quantize(cmd::quantize::Args),
    /// Prune the linear layers of a llama-family or BERT model: magnitude,
    /// Wanda or SparseGPT, to a sparsity or an N:M pattern.
    Prune(cmd::prune::Args),
    /// Collect activation statistics on text and write an importance matrix
    /// (GGUF imatrix, or legacy .dat) that llama-quantize and `quantize --imatrix` use.
    Calibrate(cmd::calibrate::Args),
    /// Convert between formats at float precision (GGUF <-> HF folder, F32/F16/BF16).
    Convert(cmd::convert::Args),
    /// Show a model's architecture, metadata and tensors.
    Inspect(cmd::inspect::Args),
    /// Measure a model's accuracy, or a candidate's against a reference, on real data.
    Eval(cmd::eval::Args),
    /// Print mean-pooled sentence embeddings of an encoder as JSON.
    Embed(cmd::embed::Args),
    /// Run a graph model (ONNX) on tensors from a .safetensors file and
    /// write its outputs to another.
    Run(cmd::run::Args),
    /// Recipes: chains of passes from reading to the accuracy gate (TOML).
    Recipe(cmd::recipe::Args),
}

/// Exit codes: 0 ok, 1 error, 2 usage (clap), 3 an accuracy gate failed.
fn main() -> ExitCode {
    // Like other Unix tools, end quietly when stdout's reader goes away
    // (`edgec inspect --json | head`) instead of panicking on the write.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any other
    // thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if n == 0 {
            eprintln!("error: --threads must be at least 1");
            return ExitCode::from(2);
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .expect("the global thread pool is built once, before any use");
    }
    let runs_model = match &cli.command {
        Command::Eval(_) | Command::Embed(_) | Command::Calibrate(_) | Command::Run(_) => true,
        Command::Quantize(a) => a.calib.is_some(),
        Command::Prune(a) => a.calib.is_some(),
        Command::Recipe(_) => true,
        _ => false,
    };
    if runs_model {
        // The runtime's process settings (allocator, candle's worker pool).
        edgec_core::runtime::init_process();
    }
    let result = match cli.command {
        Command::Quantize(args) => cmd::quantize::run(args),
        Command::Convert(args) => cmd::convert::run(args),
        Command::Prune(args) => cmd::prune::run(args),
        Command::Calibrate(args) => cmd::calibrate::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Embed(args) => cmd::embed::run(args),
        Command::Run(args) => cmd::run::run(args),
        Command::Eval(args) => match cmd::eval::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(3),
            Err(e) => Err(e),
        },
        Command::Recipe(args) => match cmd::recipe::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(3),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<cmd::UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
