//! Evaluation and calibration data: text files, JSONL sentences, and the
//! token chunks and windows cut from them. Everything is deterministic.

use std::path::Path;

use serde_json::Value;

use crate::error::{CalibrationError, Result};

fn read_checked(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| CalibrationError::io(path, e))?;
    if bytes.is_empty() {
        return Err(CalibrationError::Empty { path: path.into() });
    }
    if let Some(offset) = bytes.iter().position(|&b| b == 0) {
        return Err(CalibrationError::Binary {
            path: path.into(),
            offset,
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| CalibrationError::NotUtf8 {
        path: path.into(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    if text.trim().is_empty() {
        return Err(CalibrationError::Blank { path: path.into() });
    }
    Ok(text)
}

/// Reads a UTF-8 text file for evaluation or calibration.
///
/// The text is what llama.cpp's `-f FILE` reads (llama-perplexity
/// tokenizes it whole): the file's bytes less one trailing `\n`.
///
/// Errors, each naming the file: it cannot be read (missing, say); it is
/// empty or only whitespace; it holds a NUL byte (binary); it is not UTF-8
/// (`FILE: not UTF-8 text at byte N`).
pub fn read_text(path: impl AsRef<Path>) -> Result<String> {
    let mut text = read_checked(path.as_ref())?;
    if text.ends_with('\n') {
        text.pop();
    }
    Ok(text)
}

/// Reads sentences from a JSONL file: on each line either a JSON object with
/// a `"text"` string, or a JSON string. Blank lines are skipped; a UTF-8 byte
/// order mark at the start is ignored. Errors name the file and the line
/// (from 1); a file without a sentence is an error.
pub fn read_jsonl_sentences(path: impl AsRef<Path>) -> Result<Vec<String>> {
    let path = path.as_ref();
    let text = read_checked(path)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        let line_err = |msg: String| CalibrationError::Jsonl {
            path: path.into(),
            line: i + 1,
            msg,
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| line_err(format!("invalid JSON: {e}")))?;
        let sentence = match value {
            Value::String(s) => s,
            Value::Object(mut obj) => match obj.remove("text") {
                Some(Value::String(s)) => s,
                Some(other) => {
                    return Err(line_err(format!(
                        "\"text\" is {}, not a string",
                        json_kind(&other)
                    )))
                }
                None => return Err(line_err("the object has no \"text\" field".into())),
            },
            other => {
                return Err(line_err(format!(
                    "expected an object with a \"text\" string or a JSON string, found {}",
                    json_kind(&other)
                )))
            }
        };
        out.push(sentence);
    }
    if out.is_empty() {
        return Err(CalibrationError::NoSentences { path: path.into() });
    }
    Ok(out)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Splits tokens into chunks as llama-perplexity does: `floor(len / n_ctx)`
/// consecutive chunks of `n_ctx` tokens (the rest is dropped), at most
/// `max_chunks` of them.
///
/// Fewer tokens than one chunk is [`CalibrationError::TooFewTokens`] (with
/// the counts; the caller adds the file's name). `n_ctx = 0` and
/// `max_chunks = Some(0)` are [`CalibrationError::InvalidArgument`].
///
/// llama-perplexity itself refuses text of fewer than `2 * n_ctx` tokens;
/// one chunk is enough here.
pub fn token_chunks(
    tokens: &[u32],
    n_ctx: usize,
    max_chunks: Option<usize>,
) -> Result<Vec<Vec<u32>>> {
    if n_ctx == 0 {
        return Err(CalibrationError::InvalidArgument(
            "a context of 0 tokens".into(),
        ));
    }
    if max_chunks == Some(0) {
        return Err(CalibrationError::InvalidArgument(
            "at most 0 chunks: nothing to evaluate".into(),
        ));
    }
    let n_max = tokens.len() / n_ctx;
    if n_max == 0 {
        return Err(CalibrationError::TooFewTokens {
            tokens: tokens.len(),
            n_ctx,
        });
    }
    let n = max_chunks.map_or(n_max, |m| m.min(n_max));
    Ok(tokens
        .chunks_exact(n_ctx)
        .take(n)
        .map(<[u32]>::to_vec)
        .collect())
}

/// `n_samples` windows of `len` tokens, evenly spaced from the start of
/// `tokens` to its end (the first window starts at 0, the last ends at the
/// last token). Deterministic. Fewer windows when there are fewer distinct
/// starts than `n_samples`; a single, shorter sequence (all the tokens) when
/// there are fewer than `len` tokens; none when `tokens` is empty or
/// `n_samples` or `len` is 0.
pub fn calibration_sequences(tokens: &[u32], n_samples: usize, len: usize) -> Vec<Vec<u32>> {
    if tokens.is_empty() || n_samples == 0 || len == 0 {
        return vec![];
    }
    if tokens.len() <= len {
        return vec![tokens.to_vec()];
    }
    let span = tokens.len() - len; // the last start
    let n = n_samples.min(span + 1);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let start = if n == 1 { 0 } else { i * span / (n - 1) };
        out.push(tokens[start..start + len].to_vec());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_floor_and_cap() {
        let t: Vec<u32> = (0..10).collect();
        let c = token_chunks(&t, 3, None).unwrap();
        assert_eq!(c, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8]]);
        assert_eq!(token_chunks(&t, 3, Some(2)).unwrap().len(), 2);
        assert_eq!(token_chunks(&t, 3, Some(99)).unwrap().len(), 3);
        assert_eq!(token_chunks(&t, 10, None).unwrap().len(), 1);
        match token_chunks(&t, 11, None) {
            Err(CalibrationError::TooFewTokens { tokens, n_ctx }) => {
                assert_eq!((tokens, n_ctx), (10, 11))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            token_chunks(&t, 0, None),
            Err(CalibrationError::InvalidArgument(_))
        ));
        assert!(matches!(
            token_chunks(&t, 2, Some(0)),
            Err(CalibrationError::InvalidArgument(_))
        ));
    }

    #[test]
    fn calibration_windows_are_evenly_spaced() {
        let t: Vec<u32> = (0..100).collect();
        let s = calibration_sequences(&t, 3, 10);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0][0], 0);
        assert_eq!(s[1][0], 45);
        assert_eq!(s[2][0], 90);
        assert!(s.iter().all(|w| w.len() == 10));
        assert_eq!(s, calibration_sequences(&t, 3, 10));
        assert_eq!(
            calibration_sequences(&t, 1, 10),
            vec![(0..10).collect::<Vec<_>>()]
        );
        // more samples than distinct starts
        assert_eq!(calibration_sequences(&t[..12], 50, 10).len(), 3);
        assert_eq!(calibration_sequences(&t[..5], 4, 10), vec![t[..5].to_vec()]);
        assert!(calibration_sequences(&[], 4, 10).is_empty());
        assert!(calibration_sequences(&t, 0, 10).is_empty());
    }
}
