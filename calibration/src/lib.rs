//! Calibration and evaluation data (text, sentences), tokenization with the
//! model's own tokenizer, and the metrics `edgec eval` reports.
//!
//! - [`tokenize`]: [`TextTokenizer`], text → ids as llama.cpp tokenizes;
//! - [`data`]: text and JSONL files, llama-perplexity's chunks, calibration
//!   windows;
//! - [`images`]: folders of PNG/JPEG photos as image-classifier inputs
//!   (resize, center crop or several crops, pixel transform, NCHW/NHWC);
//! - [`idx`]: IDX files (MNIST, Fashion-MNIST), plain or gzip;
//! - [`metrics`]: perplexity as llama-perplexity computes it, KL-divergence
//!   and top-1 agreement against reference logits, cosine similarity, top-1
//!   accuracy;
//! - [`llama_logits`]: llama-perplexity's saved reference logits, and KL
//!   against them computed as llama.cpp does;
//! - [`stats`]: per-channel statistics of every linear layer's input, from
//!   the runtime's hook.
//! - [`sweep`]: the same statistics one layer at a time (sequential
//!   calibration), with at most one layer's weights in memory.

pub mod data;
pub mod error;
pub mod idx;
pub mod images;
pub mod llama_logits;
pub mod metrics;
pub mod ranges;
pub mod stats;
pub mod sweep;
pub mod tokenize;

pub use data::{calibration_sequences, read_jsonl_sentences, read_text, token_chunks};
pub use error::{CalibrationError, Result};
pub use llama_logits::{LlamaKl, LlamaLogitsFile};
pub use metrics::{
    argmax, cosine, first_scored, scored_per_chunk, token_nll, top1_accuracy, KlAccumulator,
    PerplexityAccumulator, Stats,
};
pub use stats::{collect_linear_inputs, ChannelStats, StatsOptions};
pub use sweep::{
    sweep_linear_inputs, sweep_units, CallbackError, Replacements, SweepError, SweepOptions,
    SweepReport,
};
pub use tokenize::TextTokenizer;
