//! llama.cpp's saved reference logits: the file `llama-perplexity
//! --kl-divergence-base FILE` writes. Reading it lets `edgec eval` judge a
//! model against llama.cpp's own f32 run, on llama.cpp's own tokens, with
//! llama.cpp's KL-divergence formula.
//!
//! Layout (tools/perplexity/perplexity.cpp): "_logits_", n_ctx (u32),
//! n_vocab (i32), n_chunk (i32), n_ctx*n_chunk token ids (i32), then per
//! chunk, for each scored position (n_ctx/2 .. n_ctx-2), a row of
//! nv = 2*((n_vocab+1)/2) + 4 u16: two f32 (scale, min_log_prob) and the
//! log-probabilities quantized as `scale*q + min_log_prob`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::CalibrationError;

pub struct LlamaLogitsFile {
    path: PathBuf,
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_chunk: usize,
    pub tokens: Vec<u32>,
    data_start: u64,
}

fn invalid(path: &Path, msg: impl Into<String>) -> CalibrationError {
    CalibrationError::Invalid {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

impl LlamaLogitsFile {
    pub fn open(path: &Path) -> Result<Self, CalibrationError> {
        let mut f = File::open(path).map_err(|e| invalid(path, e.to_string()))?;
        let len = f
            .metadata()
            .map_err(|e| invalid(path, e.to_string()))?
            .len();
        let mut head = [0u8; 20];
        f.read_exact(&mut head)
            .map_err(|_| invalid(path, "too short for a llama.cpp logits file"))?;
        if &head[..8] != b"_logits_" {
            return Err(invalid(
                path,
                "not a llama-perplexity --kl-divergence-base file (no \"_logits_\" magic)",
            ));
        }
        let word = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().unwrap()) as usize;
        let (n_ctx, n_vocab, n_chunk) = (word(8), word(12), word(16));
        if n_ctx < 4 || n_vocab == 0 || n_chunk == 0 || n_vocab > 1 << 24 || n_ctx > 1 << 24 {
            return Err(invalid(
                path,
                format!("implausible header: n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk}"),
            ));
        }
        let rows = (n_ctx - 1 - n_ctx / 2) as u64;
        let nv = (2 * n_vocab.div_ceil(2) + 4) as u64;
        let token_bytes = (n_ctx * n_chunk * 4) as u64;
        let want = 20 + token_bytes + n_chunk as u64 * rows * nv * 2;
        if len != want {
            return Err(invalid(
                path,
                format!("{len} bytes, but its header implies {want}"),
            ));
        }
        let mut raw = vec![0u8; token_bytes as usize];
        f.read_exact(&mut raw)
            .map_err(|e| invalid(path, e.to_string()))?;
        let tokens: Vec<u32> = raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect();
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(invalid(
                path,
                format!("token id {t} is outside the vocabulary of {n_vocab}"),
            ));
        }
        Ok(LlamaLogitsFile {
            path: path.to_path_buf(),
            n_ctx,
            n_vocab,
            n_chunk,
            tokens,
            data_start: 20 + token_bytes,
        })
    }

    /// The first scored position of a chunk.
    pub fn first(&self) -> usize {
        self.n_ctx / 2
    }

    pub fn chunk_tokens(&self, chunk: usize) -> &[u32] {
        &self.tokens[chunk * self.n_ctx..(chunk + 1) * self.n_ctx]
    }

    /// The quantized log-probability rows of one chunk.
    pub fn chunk_rows(&self, chunk: usize) -> Result<Vec<u16>, CalibrationError> {
        let rows = self.n_ctx - 1 - self.first();
        let nv = 2 * self.n_vocab.div_ceil(2) + 4;
        let mut f = File::open(&self.path).map_err(|e| invalid(&self.path, e.to_string()))?;
        f.seek(SeekFrom::Start(
            self.data_start + (chunk * rows * nv * 2) as u64,
        ))
        .map_err(|e| invalid(&self.path, e.to_string()))?;
        let mut raw = vec![0u8; rows * nv * 2];
        f.read_exact(&mut raw)
            .map_err(|e| invalid(&self.path, e.to_string()))?;
        Ok(raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect())
    }
}

/// llama.cpp's KL-divergence statistics of a model against a saved base,
/// computed exactly as llama-perplexity does (f32 per token, f64 sums).
#[derive(Default, Debug, Clone)]
pub struct LlamaKl {
    pub sum_kld: f64,
    pub sum_nll: f64,
    pub sum_nll_base: f64,
    pub same_top: usize,
    pub count: usize,
}

impl LlamaKl {
    /// Adds the scored positions of one chunk: `logits` are the model's for
    /// every position of the chunk ([n_ctx, n_vocab]); `rows` that chunk's
    /// base rows; `tokens` the chunk's tokens.
    pub fn add_chunk(
        &mut self,
        file: &LlamaLogitsFile,
        logits: &[f32],
        rows: &[u16],
        tokens: &[u32],
    ) {
        let (n_vocab, first) = (file.n_vocab, file.first());
        let nv = 2 * n_vocab.div_ceil(2) + 4;
        for (r, base) in rows.chunks_exact(nv).enumerate() {
            let pos = first + r;
            let l = &logits[pos * n_vocab..(pos + 1) * n_vocab];
            let tok = tokens[pos + 1] as usize;
            let (mut max_logit, mut imax) = (l[0], 0);
            for (i, &v) in l.iter().enumerate().skip(1) {
                if v > max_logit {
                    max_logit = v;
                    imax = i;
                }
            }
            let sum_exp: f64 = l.iter().map(|&v| (v - max_logit).exp() as f64).sum();
            let log_sum_exp = sum_exp.ln() as f32;
            let scale = f32::from_bits(base[0] as u32 | (base[1] as u32) << 16);
            let min_log_prob = f32::from_bits(base[2] as u32 | (base[3] as u32) << 16);
            let q = &base[4..4 + n_vocab];
            let nll = max_logit + log_sum_exp - l[tok];
            let nll_base = -(scale * q[tok] as f32 + min_log_prob);
            let norm = max_logit + log_sum_exp;
            let mut sum = 0f64;
            let (mut imax_base, mut p_max) = (0usize, f32::NEG_INFINITY);
            for (i, &qi) in q.iter().enumerate() {
                let p_log_base = scale * qi as f32 + min_log_prob;
                if i == 0 || p_log_base > p_max {
                    p_max = p_log_base;
                    imax_base = i;
                }
                if p_log_base > -16.0 {
                    sum += (p_log_base.exp() * (p_log_base - l[i] + norm)) as f64;
                }
            }
            self.sum_kld += sum;
            self.sum_nll += nll as f64;
            self.sum_nll_base += nll_base as f64;
            self.same_top += (imax == imax_base) as usize;
            self.count += 1;
        }
    }

    pub fn mean_kld(&self) -> f64 {
        self.sum_kld / self.count.max(1) as f64
    }
    pub fn ppl(&self) -> f64 {
        (self.sum_nll / self.count.max(1) as f64).exp()
    }
    pub fn ppl_base(&self) -> f64 {
        (self.sum_nll_base / self.count.max(1) as f64).exp()
    }
    pub fn same_top(&self) -> f64 {
        self.same_top as f64 / self.count.max(1) as f64
    }
}
