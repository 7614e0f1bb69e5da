//! llama.cpp importance matrices (`llama-imatrix` output, `llama-quantize
//! --imatrix` input), read and written in both of llama.cpp's formats.
//!
//! **GGUF** (llama-imatrix's default): a GGUF v3 file with the keys
//! `general.type = "imatrix"`, `imatrix.datasets` (array of strings),
//! `imatrix.chunk_count` and `imatrix.chunk_size` (both u32), and for each
//! weight NAME two F32 tensors: `NAME.in_sum2`, the raw sums of x² per input
//! column over every token seen (ggml ne = [n_per_row, n_mat]), and
//! `NAME.counts`, how many tokens were summed (ne = [1, n_mat]). llama.cpp
//! drops trailing dimensions of 1, so a dense weight's pair is stored 1-D as
//! [n_per_row] and [1]. llama-quantize divides each matrix's sums by its
//! count (a zero count means "no data" and gives all-ones importance) and
//! refuses a GGUF imatrix without the three `imatrix.*` keys.
//!
//! **Legacy `.dat`** (`--output-format dat`), all little-endian: i32 entry
//! count; per entry i32 name length, the name, i32 `ncall`, i32 `nval` and
//! `nval` f32 values; then optionally i32 chunk count, i32 dataset-name
//! length and the name. The values are not sums: they are the per-column
//! means multiplied by `ncall` (the tokens summed divided by the chunk size,
//! rounded up), and llama-quantize divides them by `ncall` again. One
//! `ncall` serves every matrix of an entry.
//!
//! In [`ImportanceMatrix`] both read into the same shape: `sum_sq / counts`
//! is always the mean of x². A legacy file reads as `sum_sq` = the stored
//! values, `counts` = `[ncall]` and `chunk_size` = 0 (what llama.cpp's own
//! loader does), so it can be written back unchanged in either format.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use edgec_core::{DType, GgmlType};

use crate::error::{FormatError, Result};
use crate::gguf::value::{type_id, GgufValue, Metadata};
use crate::gguf::{reader, writer, TensorPlan};

/// `imatrix.datasets`: the calibration texts, array of strings.
pub const KEY_DATASETS: &str = "imatrix.datasets";
/// `imatrix.chunk_count`: chunks the statistics were gathered over (u32).
pub const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
/// `imatrix.chunk_size`: tokens per chunk (u32).
pub const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";
/// Suffix of the Σx² tensor of a weight.
pub const SUFFIX_SUM_SQ: &str = ".in_sum2";
/// Suffix of the token-count tensor of a weight.
pub const SUFFIX_COUNTS: &str = ".counts";
/// ggml tensor names hold at most 63 bytes (GGML_MAX_NAME is 64 with the NUL).
const MAX_TENSOR_NAME: usize = 63;

/// An importance matrix: per weight, the statistics of its inputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportanceMatrix {
    /// By GGUF tensor name ("blk.0.attn_q.weight"), sorted.
    pub entries: BTreeMap<String, ImatrixEntry>,
    /// The calibration data sets (file names), oldest first.
    pub datasets: Vec<String>,
    /// Chunks of `chunk_size` tokens the statistics were gathered over.
    pub chunk_count: u32,
    /// Tokens per chunk; 0 when read from a legacy file, whose counts are
    /// `ncall` values rather than tokens.
    pub chunk_size: u32,
}

/// The input statistics of one weight.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImatrixEntry {
    /// Σx² per input column, `n_mat` matrices one after another (n_mat = 1 for dense layers).
    pub sum_sq: Vec<f32>,
    /// Tokens summed, one per matrix.
    pub counts: Vec<f32>,
}

/// The two file formats of an importance matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImatrixFormat {
    Gguf,
    Dat,
}

impl ImatrixFormat {
    /// The format `path`'s extension asks for: `.dat` is legacy, anything
    /// else GGUF (llama-imatrix's default).
    pub fn for_output(path: &Path) -> ImatrixFormat {
        match path.extension() {
            Some(e) if e.eq_ignore_ascii_case("dat") => ImatrixFormat::Dat,
            _ => ImatrixFormat::Gguf,
        }
    }
}

impl ImatrixEntry {
    /// A dense layer's entry: Σx² per input column over `tokens` tokens.
    pub fn dense(sum_sq: Vec<f32>, tokens: u64) -> Self {
        ImatrixEntry {
            sum_sq,
            counts: vec![tokens as f32],
        }
    }

    /// Values per count (the columns of one matrix, or of all matrices
    /// when several share one count), or None when the shapes disagree.
    pub fn segment_len(&self) -> Option<usize> {
        let n = self.counts.len();
        (n > 0 && !self.sum_sq.is_empty() && self.sum_sq.len().is_multiple_of(n))
            .then(|| self.sum_sq.len() / n)
    }

    /// The per-column mean of x², as llama-quantize computes it: each
    /// matrix's sums divided by its count, all ones where the count is 0.
    /// None when the shapes disagree.
    pub fn mean_sq(&self) -> Option<Vec<f32>> {
        let seg = self.segment_len()?;
        Some(
            self.sum_sq
                .chunks_exact(seg)
                .zip(&self.counts)
                .flat_map(|(sums, &c)| sums.iter().map(move |&s| if c > 0.0 { s / c } else { 1.0 }))
                .collect(),
        )
    }

    /// Why this entry cannot be stored, if it cannot.
    fn check(&self) -> std::result::Result<(), String> {
        if self.counts.is_empty() {
            return Err("has no counts".into());
        }
        if self.sum_sq.is_empty() {
            return Err("has no sums".into());
        }
        if !self.sum_sq.len().is_multiple_of(self.counts.len()) {
            return Err(format!(
                "has {} sums, not a multiple of its {} counts",
                self.sum_sq.len(),
                self.counts.len()
            ));
        }
        if let Some((i, v)) = self
            .sum_sq
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite() || **v < 0.0)
        {
            return Err(format!(
                "sum of squares {i} is {v} (must be finite and not negative)"
            ));
        }
        if let Some((i, v)) = self
            .counts
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite() || **v < 0.0 || v.fract() != 0.0)
        {
            return Err(format!(
                "count {i} is {v} (must be a whole number, not negative)"
            ));
        }
        Ok(())
    }
}

impl ImportanceMatrix {
    /// Reads either format, told apart by the GGUF magic.
    pub fn read(path: &Path) -> Result<Self> {
        match Self::detect(path)? {
            ImatrixFormat::Gguf => Self::read_gguf(path),
            ImatrixFormat::Dat => Self::read_dat(path),
        }
    }

    /// Which format `path` holds: GGUF when it starts with "GGUF", else legacy.
    pub fn detect(path: &Path) -> Result<ImatrixFormat> {
        let mut magic = [0u8; 4];
        let mut f = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
        let mut got = 0;
        while got < 4 {
            match f.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FormatError::io(path, e)),
            }
        }
        Ok(if got == 4 && &magic == b"GGUF" {
            ImatrixFormat::Gguf
        } else {
            ImatrixFormat::Dat
        })
    }

    /// The per-column mean of x² (sum_sq / count) of one tensor, for
    /// quantizers; None when the tensor has no (well-formed) entry.
    pub fn importance(&self, gguf_name: &str) -> Option<Vec<f32>> {
        self.entries.get(gguf_name)?.mean_sq()
    }

    /// Checks what both writers need: at least one entry, names that are
    /// non-empty and NUL-free, and per entry counts that divide the sums,
    /// finite non-negative sums, whole non-negative counts.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.entries.is_empty() {
            return Err("the importance matrix has no entries".into());
        }
        for (name, e) in &self.entries {
            if name.is_empty() || name.contains('\0') {
                return Err(format!("entry name {name:?} is empty or holds a NUL"));
            }
            e.check().map_err(|m| format!("entry {name} {m}"))?;
        }
        Ok(())
    }

    /// Writes the format `path`'s extension asks for (see [`ImatrixFormat::for_output`]).
    pub fn write(&self, path: &Path) -> Result<()> {
        match ImatrixFormat::for_output(path) {
            ImatrixFormat::Gguf => self.write_gguf(path),
            ImatrixFormat::Dat => self.write_dat(path),
        }
    }

    /// Writes llama-imatrix's GGUF format, atomically. The bytes are what
    /// llama-imatrix writes for the same statistics.
    pub fn write_gguf(&self, path: &Path) -> Result<()> {
        self.check().map_err(|m| FormatError::invalid(path, m))?;
        let mut meta = Metadata::default();
        meta.set("general.type", GgufValue::String("imatrix".into()));
        meta.set(
            KEY_DATASETS,
            GgufValue::string_array(self.datasets.iter().cloned()),
        );
        meta.set(KEY_CHUNK_COUNT, GgufValue::U32(self.chunk_count));
        meta.set(KEY_CHUNK_SIZE, GgufValue::U32(self.chunk_size));
        let mut plans = Vec::with_capacity(2 * self.entries.len());
        let mut data: Vec<&[f32]> = Vec::with_capacity(2 * self.entries.len());
        for (name, e) in &self.entries {
            if name.len() + SUFFIX_SUM_SQ.len() > MAX_TENSOR_NAME {
                return Err(FormatError::invalid(
                    path,
                    format!(
                        "entry {name}: the name is too long for a ggml tensor name \
                         (at most {} bytes before {SUFFIX_SUM_SQ})",
                        MAX_TENSOR_NAME - SUFFIX_SUM_SQ.len()
                    ),
                ));
            }
            let n_mat = e.counts.len();
            let per = e.sum_sq.len() / n_mat;
            // ggml's ne = [per, n_mat] and [1, n_mat], trailing 1s dropped as
            // llama.cpp's writer drops them; IR shapes are outermost first.
            let (sum_shape, count_shape) = if n_mat == 1 {
                (vec![per], vec![1])
            } else {
                (vec![n_mat, per], vec![n_mat, 1])
            };
            plans.push(TensorPlan {
                name: format!("{name}{SUFFIX_SUM_SQ}"),
                shape: sum_shape,
                ty: GgmlType::F32,
            });
            data.push(&e.sum_sq);
            plans.push(TensorPlan {
                name: format!("{name}{SUFFIX_COUNTS}"),
                shape: count_shape,
                ty: GgmlType::F32,
            });
            data.push(&e.counts);
        }
        crate::output::write_file_atomically(path, |w| {
            writer::write(path, w, &meta, &plans, |i| Ok(f32_bytes(data[i])))
        })
    }

    /// Writes the legacy `.dat` format, atomically, as llama-imatrix
    /// `--output-format dat` would: values are mean·ncall with ncall =
    /// ⌈max count / chunk_size⌉ (the counts themselves when `chunk_size` is
    /// 0, as after reading a legacy file), matrices without data store
    /// ncall, entries without any data are left out (the format cannot say
    /// "no data"), and of several datasets only the last is kept.
    pub fn write_dat(&self, path: &Path) -> Result<()> {
        self.check().map_err(|m| FormatError::invalid(path, m))?;
        let bytes = self.dat_bytes(path)?;
        crate::output::write_file_atomically(path, |w| {
            w.write_all(&bytes).map_err(|e| FormatError::io(path, e))
        })
    }

    fn dat_bytes(&self, path: &Path) -> Result<Vec<u8>> {
        let bad = |m: String| FormatError::invalid(path, m);
        let too_big = |what: String| bad(format!("{what} does not fit the legacy format's i32"));
        let i32_of =
            |v: usize, what: &dyn Fn() -> String| i32::try_from(v).map_err(|_| too_big(what()));
        let mut body = Vec::new();
        let mut n_entries = 0usize;
        for (name, e) in &self.entries {
            let max = e.counts.iter().copied().fold(0.0f32, f32::max);
            if max == 0.0 {
                continue;
            }
            let ncall = if self.chunk_size > 0 {
                (max as f64 / self.chunk_size as f64).ceil()
            } else {
                max as f64
            };
            if ncall > i32::MAX as f64 {
                return Err(too_big(format!("entry {name}: ncall {ncall}")));
            }
            let ncall = ncall as i32;
            let ncall_f = ncall as f32;
            let seg = e.sum_sq.len() / e.counts.len();
            body.extend_from_slice(
                &i32_of(name.len(), &|| format!("entry {name}'s name length"))?.to_le_bytes(),
            );
            body.extend_from_slice(name.as_bytes());
            body.extend_from_slice(&ncall.to_le_bytes());
            body.extend_from_slice(
                &i32_of(e.sum_sq.len(), &|| format!("entry {name}'s value count"))?.to_le_bytes(),
            );
            for (sums, &c) in e.sum_sq.chunks_exact(seg).zip(&e.counts) {
                for &s in sums {
                    let v = if c == 0.0 {
                        ncall_f
                    } else if self.chunk_size == 0 && c == ncall_f {
                        s // already mean·ncall: keep it bit for bit
                    } else {
                        (s / c) * ncall_f
                    };
                    body.extend_from_slice(&v.to_le_bytes());
                }
            }
            n_entries += 1;
        }
        if n_entries == 0 {
            return Err(bad(
                "no entry has any data (every count is 0); the legacy format cannot store that"
                    .into(),
            ));
        }
        let mut out = Vec::with_capacity(body.len() + 64);
        out.extend_from_slice(&i32_of(n_entries, &|| "the entry count".into())?.to_le_bytes());
        out.extend_from_slice(&body);
        let chunks = i32::try_from(self.chunk_count)
            .map_err(|_| too_big(format!("chunk count {}", self.chunk_count)))?;
        out.extend_from_slice(&chunks.to_le_bytes());
        let dataset = self.datasets.last().map(String::as_str).unwrap_or("");
        out.extend_from_slice(
            &i32_of(dataset.len(), &|| "the dataset name's length".into())?.to_le_bytes(),
        );
        out.extend_from_slice(dataset.as_bytes());
        Ok(out)
    }

    fn read_gguf(path: &Path) -> Result<Self> {
        let bad = |m: String| FormatError::invalid(path, m);
        let file = reader::read(path)?;
        let m = &file.metadata;
        if let Some(v) = m.get("general.type") {
            match v.as_str() {
                Some("imatrix") => {}
                Some(other) => {
                    return Err(bad(format!(
                        "general.type is \"{other}\", not \"imatrix\": not an importance matrix"
                    )))
                }
                None => return Err(bad("general.type is not a string".into())),
            }
        }
        let datasets = match m.get(KEY_DATASETS) {
            None => Vec::new(),
            Some(GgufValue::Array(type_id::STRING, items)) => items
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect(),
            Some(_) => return Err(bad(format!("{KEY_DATASETS} is not an array of strings"))),
        };
        let u32_key = |key: &str| -> Result<u32> {
            match m.get(key) {
                None => Ok(0),
                Some(v) => v
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| bad(format!("{key} is {v:?}, not a u32"))),
            }
        };
        let chunk_count = u32_key(KEY_CHUNK_COUNT)?;
        let chunk_size = u32_key(KEY_CHUNK_SIZE)?;

        // Pair up NAME.in_sum2 and NAME.counts; other tensors are not ours.
        type Pair<'a> = (
            Option<&'a edgec_core::Tensor>,
            Option<&'a edgec_core::Tensor>,
        );
        let mut pairs: BTreeMap<&str, Pair> = BTreeMap::new();
        for t in &file.tensors {
            if let Some(base) = t.name.strip_suffix(SUFFIX_SUM_SQ) {
                pairs.entry(base).or_default().0 = Some(t);
            } else if let Some(base) = t.name.strip_suffix(SUFFIX_COUNTS) {
                pairs.entry(base).or_default().1 = Some(t);
            }
        }
        if pairs.is_empty() {
            return Err(bad(format!(
                "no importance-matrix tensors (NAME{SUFFIX_SUM_SQ} with NAME{SUFFIX_COUNTS}) \
                 among its {} tensors",
                file.tensors.len()
            )));
        }
        let mut entries = BTreeMap::new();
        for (name, pair) in pairs {
            let (sums, counts) = match pair {
                (Some(s), Some(c)) => (s, c),
                (Some(_), None) => {
                    return Err(bad(format!(
                        "tensor {name}{SUFFIX_SUM_SQ} has no {name}{SUFFIX_COUNTS} partner"
                    )))
                }
                (None, _) => {
                    return Err(bad(format!(
                        "tensor {name}{SUFFIX_COUNTS} has no {name}{SUFFIX_SUM_SQ} partner"
                    )))
                }
            };
            if name.is_empty() {
                return Err(bad(format!(
                    "tensor {} has an empty weight name",
                    sums.name
                )));
            }
            for t in [sums, counts] {
                if t.dtype != DType::F32 {
                    return Err(bad(format!("tensor {} is {}, not F32", t.name, t.dtype)));
                }
            }
            let entry = ImatrixEntry {
                sum_sq: f32s_from_le(sums.bytes()),
                counts: f32s_from_le(counts.bytes()),
            };
            entry.check().map_err(|m| {
                bad(format!(
                    "entry {name} ({SUFFIX_SUM_SQ} shape {:?}, {SUFFIX_COUNTS} shape {:?}) {m}",
                    sums.shape, counts.shape
                ))
            })?;
            entries.insert(name.to_string(), entry);
        }
        Ok(ImportanceMatrix {
            entries,
            datasets,
            chunk_count,
            chunk_size,
        })
    }

    fn read_dat(path: &Path) -> Result<Self> {
        let buf = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
        let mut c = DatCursor {
            path,
            buf: &buf,
            pos: 0,
        };
        let n_entries = c.i32("the entry count")?;
        // An entry takes at least 17 bytes: three i32, a 1-byte name, one value.
        if n_entries < 1 || n_entries as usize > c.left() / 17 {
            return Err(c.err(format!(
                "entry count {n_entries} is not positive or more than the file can hold \
                 (not an importance matrix?)"
            )));
        }
        let mut entries = BTreeMap::new();
        for i in 0..n_entries as usize {
            let at = c.pos;
            let len = c.i32("a name length")?;
            if len < 1 || len as usize > c.left() {
                return Err(c.err(format!(
                    "entry {i}: name length {len} is not positive or runs past the end of the file"
                )));
            }
            let name = std::str::from_utf8(c.take(len as usize, "a name")?)
                .map_err(|_| c.err(format!("entry {i}: the name is not UTF-8")))?
                .to_string();
            if name.contains('\0') {
                return Err(c.err(format!("entry {i}: the name {name:?} holds a NUL")));
            }
            let ncall = c.i32("ncall")?;
            if ncall < 1 {
                return Err(c.err(format!("entry {name}: ncall {ncall} is not positive")));
            }
            let nval = c.i32("a value count")?;
            if nval < 1 || nval as usize > c.left() / 4 {
                return Err(c.err(format!(
                    "entry {name}: value count {nval} is not positive or runs past the end of the file"
                )));
            }
            let entry = ImatrixEntry {
                sum_sq: f32s_from_le(c.take(4 * nval as usize, "values")?),
                counts: vec![ncall as f32],
            };
            entry.check().map_err(|m| {
                FormatError::invalid(path, format!("entry {name} (at byte {at}) {m}"))
            })?;
            if entries.insert(name.clone(), entry).is_some() {
                return Err(FormatError::invalid(
                    path,
                    format!("entry {name} (at byte {at}) appears twice"),
                ));
            }
        }
        // The trailer (chunk count, then dataset name) is optional, and the
        // oldest files end after the chunk count.
        let mut chunk_count = 0;
        let mut datasets = Vec::new();
        if c.left() > 0 {
            let n = c.i32("the chunk count")?;
            chunk_count =
                u32::try_from(n).map_err(|_| c.err(format!("chunk count {n} is negative")))?;
        }
        if c.left() > 0 {
            let len = c.i32("the dataset name's length")?;
            if len < 0 || len as usize > c.left() {
                return Err(c.err(format!(
                    "dataset name length {len} is negative or runs past the end of the file"
                )));
            }
            let name = c.take(len as usize, "the dataset name")?;
            if !name.is_empty() {
                datasets.push(String::from_utf8_lossy(name).into_owned());
            }
        }
        if c.left() > 0 {
            return Err(c.err(format!(
                "{} unexpected bytes after the dataset name",
                c.left()
            )));
        }
        Ok(ImportanceMatrix {
            entries,
            datasets,
            chunk_count,
            chunk_size: 0,
        })
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32s_from_le(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

struct DatCursor<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> DatCursor<'a> {
    fn err(&self, msg: impl Into<String>) -> FormatError {
        FormatError::invalid(
            self.path,
            format!("legacy imatrix: {} (at byte {})", msg.into(), self.pos),
        )
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(self.err(format!(
                "truncated file: {what} needs {n} bytes, {} are left",
                self.left()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn i32(&mut self, what: &str) -> Result<i32> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}
