//! Input samples for graph models (calibration and evaluation of imported
//! ONNX models): a folder of photos (or one photo) preprocessed into the
//! model's single image input, or a .safetensors file of tensors named by
//! graph input whose first axis runs over samples.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use edgec_calibration::images::{self, ImagePrep, Layout, PixelTransform};
use edgec_calibration::ranges::{RangeCollector, RangeMethod};
use edgec_core::runtime::graph::GraphRuntime;
use edgec_core::{DType, Model};

use serde::{Deserialize, Serialize};

use crate::progress::{Progress, Unit};

/// How pixels become input values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    /// x / 255
    #[default]
    Unit,
    /// (x − 127) / 128, EfficientNet-Lite's
    Efficientnet,
    /// x / 127.5 − 1
    Signed,
    /// (x / 255 − mean) / std with ImageNet's mean and std
    Imagenet,
}

/// How photos become a model's input: pixel transform, resizing, crops.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageSpec {
    /// A preset pixel transform (`scale`/`offset` or `mean`/`std` set one explicitly).
    pub transform: Transform,
    /// Pixel transform x · scale + offset on 0..255 values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<f32>,
    /// Pixel transform (x/255 − mean[c]) / std[c].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<[f32; 3]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub std: Option<[f32; 3]>,
    pub resize: Resize,
    /// Samples per photo: 1 is the centre crop; K > 1 takes K crops at fixed positions.
    pub crops: u32,
}

/// `crop` resizes the shorter side to size/0.875 and cuts the centre
/// (ImageNet's convention), `stretch` resizes ignoring the aspect ratio.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    #[default]
    Crop,
    Stretch,
}

impl ImageSpec {
    /// The default preprocessing (unit transform, centre crop, one crop).
    pub fn new() -> ImageSpec {
        ImageSpec {
            crops: 1,
            ..Default::default()
        }
    }

    /// Whether the spec is the default one (recipes leave it out then).
    pub fn is_default(&self) -> bool {
        *self == ImageSpec::new()
    }

    /// The pixel transform the flags ask for.
    fn transform(&self) -> PixelTransform {
        if let Some(scale) = self.scale {
            return PixelTransform::ScaleOffset {
                scale,
                offset: self.offset.unwrap_or(0.0),
            };
        }
        if let (Some(m), Some(s)) = (&self.mean, &self.std) {
            return PixelTransform::MeanStd { mean: *m, std: *s };
        }
        match self.transform {
            Transform::Unit => PixelTransform::UNIT,
            Transform::Efficientnet => PixelTransform::EFFICIENTNET_LITE,
            Transform::Signed => PixelTransform::ScaleOffset {
                scale: 1.0 / 127.5,
                offset: -1.0,
            },
            Transform::Imagenet => PixelTransform::IMAGENET_MEAN_STD,
        }
    }
}

/// One sample: a tensor per graph input.
pub type Sample = Vec<(String, Tensor)>;

/// The samples in `path` for `model`'s graph, at most `max`.
pub fn samples(
    model: &Model,
    path: &Path,
    img: &ImageSpec,
    max: Option<usize>,
) -> Result<Vec<Sample>> {
    let graph = model.graph.as_ref().context("the model has no graph")?;
    let is_tensors = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let is_idx = path.is_file() && {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        name.ends_with("-ubyte") || name.ends_with("-ubyte.gz") || name.ends_with(".idx")
    };
    let mut out = if is_tensors {
        from_tensors(model, path)?
    } else if is_idx {
        let [input] = graph.inputs.as_slice() else {
            bail!(
                "{}: IDX images need a model with one image input",
                path.display()
            );
        };
        from_idx(input, path, img)?
    } else {
        let [input] = graph.inputs.as_slice() else {
            bail!(
                "{}: image data needs a model with one image input; this one has {} inputs (give a .safetensors of tensors)",
                path.display(),
                graph.inputs.len()
            );
        };
        from_images(input, path, img)?
    };
    if let Some(m) = max {
        out.truncate(m);
    }
    if out.is_empty() {
        bail!("{}: no samples", path.display());
    }
    Ok(out)
}

fn from_images(input: &edgec_core::ValueInfo, path: &Path, img: &ImageSpec) -> Result<Vec<Sample>> {
    let dims = input.fixed_dims();
    // [N, 3, H, W] or [N, H, W, 3]: the channel axis is the one of size 1 or 3.
    let (layout, channels, height, width) = match dims.as_slice() {
        [_, Some(c @ (1 | 3)), Some(h), Some(w)] => (Layout::Nchw, *c, *h, *w),
        [_, Some(h), Some(w), Some(c @ (1 | 3))] => (Layout::Nhwc, *c, *h, *w),
        _ => bail!(
            "{}: the model's input {} is not an image tensor [N, C, H, W] or [N, H, W, C] with fixed sizes",
            path.display(),
            input.name
        ),
    };
    let prep = ImagePrep {
        transform: img.transform(),
        resize: match img.resize {
            Resize::Crop => images::ResizeMode::ShorterSideCenterCrop { shorter: None },
            Resize::Stretch => images::ResizeMode::Stretch,
        },
        layout,
        crops: img.crops,
        channels: if channels == 1 {
            images::Channels::Gray
        } else {
            images::Channels::Rgb
        },
        ..ImagePrep::new(height as u32, width as u32)
    };
    let loaded = images::load_images(path, &prep)?;
    let shape: Vec<usize> = std::iter::once(1)
        .chain(loaded.batch.sample_shape())
        .collect();
    loaded
        .batch
        .samples()
        .map(|s| {
            let t = Tensor::from_vec(s.to_vec(), shape.as_slice(), &Device::Cpu)?;
            Ok(vec![(input.name.clone(), t)])
        })
        .collect()
}

/// IDX images (e.g. Fashion-MNIST), one channel, through the pixel transform.
fn from_idx(input: &edgec_core::ValueInfo, path: &Path, img: &ImageSpec) -> Result<Vec<Sample>> {
    let (scale, offset) = match img.transform() {
        PixelTransform::ScaleOffset { scale, offset } => (scale, offset),
        PixelTransform::MeanStd { mean, std } => (1.0 / (255.0 * std[0]), -mean[0] / std[0]),
    };
    let dims = input.fixed_dims();
    let layout = match dims.as_slice() {
        [_, Some(1), _, _] => Layout::Nchw,
        [_, _, _, Some(1)] => Layout::Nhwc,
        _ => bail!(
            "{}: the model's input {} is not a one-channel image [N, 1, H, W] or [N, H, W, 1]",
            path.display(),
            input.name
        ),
    };
    let batch = edgec_calibration::idx::read_idx_images(path, scale, offset, layout)?;
    let sample_shape = batch.sample_shape();
    for (got, want) in sample_shape.iter().zip(&dims[1..]) {
        if want.is_some_and(|w| w != *got) {
            bail!(
                "{}: images of {:?} do not fit the model's input {} {:?}",
                path.display(),
                sample_shape,
                input.name,
                input.shape
            );
        }
    }
    let shape: Vec<usize> = std::iter::once(1).chain(sample_shape).collect();
    batch
        .samples()
        .map(|s| {
            let t = Tensor::from_vec(s.to_vec(), shape.as_slice(), &Device::Cpu)?;
            Ok(vec![(input.name.clone(), t)])
        })
        .collect()
}

/// The tensors of a .safetensors file, in file order, as candle tensors:
/// F32 as f32, I32 and I64 as i64 (the graph runtime's integer type).
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let mut out = Vec::new();
    for (name, view) in file.tensors() {
        let (shape, data) = (view.shape().to_vec(), view.data());
        let t = match view.dtype() {
            safetensors::Dtype::F32 => Tensor::from_vec(
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect::<Vec<_>>(),
                shape,
                &Device::Cpu,
            )?,
            safetensors::Dtype::I64 => Tensor::from_vec(
                data.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("chunks of 8")))
                    .collect::<Vec<_>>(),
                shape,
                &Device::Cpu,
            )?,
            safetensors::Dtype::I32 => Tensor::from_vec(
                data.chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect::<Vec<_>>(),
                shape,
                &Device::Cpu,
            )?,
            // int8 inputs of integer models (a .tflite with int8 I/O)
            safetensors::Dtype::I8 => Tensor::from_vec(
                data.iter().map(|&b| b as i8 as i64).collect::<Vec<_>>(),
                shape,
                &Device::Cpu,
            )?,
            d => bail!(
                "{}: {name} is {d:?}; give F32, I64, I32 or I8 tensors",
                path.display()
            ),
        };
        out.push((name, t));
    }
    Ok(out)
}

fn from_tensors(model: &Model, path: &Path) -> Result<Vec<Sample>> {
    let graph = model.graph.as_ref().expect("checked by the caller");
    let tensors = read_tensors(path)?;
    let mut per_input: Vec<(String, Vec<Tensor>)> = Vec::new();
    let mut count = None;
    for input in &graph.inputs {
        let (_, all) = tensors
            .iter()
            .find(|(n, _)| *n == input.name)
            .with_context(|| {
                format!(
                    "{}: no tensor named {} (a graph input)",
                    path.display(),
                    input.name
                )
            })?;
        let Some(&n) = all.dims().first() else {
            bail!("{}: {} has no sample axis", path.display(), input.name);
        };
        if all.dtype().is_float() != (input.dtype == DType::F32) {
            bail!(
                "{}: {} is {:?}, the graph input wants {}",
                path.display(),
                input.name,
                all.dtype(),
                input.dtype
            );
        }
        if count.is_some_and(|c| c != n) {
            bail!(
                "{}: the inputs have different sample counts",
                path.display()
            );
        }
        count = Some(n);
        // One sample per row, with the batch axis kept (size 1).
        let rows = (0..n)
            .map(|i| all.narrow(0, i, 1))
            .collect::<candle_core::Result<Vec<_>>>()?;
        per_input.push((input.name.clone(), rows));
    }
    let n = count.unwrap_or(0);
    Ok((0..n)
        .map(|i| {
            per_input
                .iter()
                .map(|(name, rows)| (name.clone(), rows[i].clone()))
                .collect()
        })
        .collect())
}

/// How activation ranges are chosen from calibration data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RangeArg {
    Minmax,
    /// 99.99th percentile of each tail
    Percentile,
    /// least expected uint8 quantization error
    Mse,
    /// least KL-divergence between the observed and quantized histograms
    Entropy,
}

impl RangeArg {
    pub fn method(self) -> RangeMethod {
        match self {
            RangeArg::Minmax => RangeMethod::MinMax,
            RangeArg::Percentile => RangeMethod::Percentile(99.99),
            RangeArg::Mse => RangeMethod::Mse,
            RangeArg::Entropy => RangeMethod::Entropy,
        }
    }
}

/// Value name → (min, max) to quantize over.
pub type Ranges = HashMap<String, (f32, f32)>;
/// Value name → per-channel means.
pub type Means = HashMap<String, Vec<f64>>;

/// Calibration statistics of a graph on `samples`: the range of every float
/// value (graph inputs and node outputs) by `method`, and the per-channel
/// (axis 1) means of the values in `means_for`. One pass gives the extremes
/// and the means; a second fills histograms when the method needs them.
pub fn activation_stats(
    model: &Model,
    samples: &[Sample],
    method: RangeMethod,
    means_for: &HashSet<String>,
    progress: &dyn Progress,
) -> Result<(Ranges, Means)> {
    let mut rt = GraphRuntime::new(model)?;
    let ranges = Arc::new(Mutex::new(RangeCollector::default()));
    let sums: Arc<Mutex<ChannelSums>> = Arc::default();
    let first_pass = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (r, m, f, names) = (
        Arc::clone(&ranges),
        Arc::clone(&sums),
        Arc::clone(&first_pass),
        means_for.clone(),
    );
    let observe = Arc::new(move |name: &str, t: &Tensor| {
        if !t.dtype().is_float() {
            return;
        }
        let Ok(v) = t.flatten_all().and_then(|t| t.to_vec1::<f32>()) else {
            return;
        };
        r.lock().expect("range lock").observe(name, &v);
        if names.contains(name) && f.load(std::sync::atomic::Ordering::Relaxed) {
            m.lock().expect("means lock").add(name, t.dims(), &v);
        }
    });
    let hook = Arc::clone(&observe);
    rt.set_hook(Some(Arc::new(move |name: &str, t: &Tensor| hook(name, t))));
    let passes = if method.needs_histogram() { 2 } else { 1 };
    let bar = progress.bar((samples.len() * passes) as u64, "calibrate", Unit::Items);
    for pass in 0..passes {
        if pass == 1 {
            ranges.lock().expect("range lock").start_histograms();
            first_pass.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        for s in samples {
            // graph inputs are not node outputs: the hook does not see them
            for (name, t) in s {
                observe(name, t);
            }
            let refs: Vec<(&str, Tensor)> =
                s.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
            rt.run(&refs)?;
            bar.inc(1);
        }
    }
    bar.finish();
    rt.set_hook(None);
    let ranges = ranges.lock().expect("range lock").ranges(method);
    let means = std::mem::take(&mut *sums.lock().expect("means lock")).means();
    Ok((ranges.into_iter().collect(), means))
}

/// Per-channel (axis 1) sums and counts of observed values.
#[derive(Default)]
struct ChannelSums(HashMap<String, (Vec<f64>, u64)>);

impl ChannelSums {
    fn add(&mut self, name: &str, dims: &[usize], v: &[f32]) {
        let (Some(&n), Some(&c)) = (dims.first(), dims.get(1)) else {
            return;
        };
        let inner: usize = dims[2..].iter().product();
        let (acc, count) = self
            .0
            .entry(name.to_string())
            .or_insert_with(|| (vec![0.0; c], 0));
        if acc.len() != c || v.len() != n * c * inner {
            return;
        }
        for b in 0..n {
            for (ch, a) in acc.iter_mut().enumerate() {
                let start = (b * c + ch) * inner;
                *a += v[start..start + inner]
                    .iter()
                    .map(|&x| x as f64)
                    .sum::<f64>();
            }
        }
        *count += (n * inner) as u64;
    }

    fn means(self) -> HashMap<String, Vec<f64>> {
        self.0
            .into_iter()
            .map(|(k, (acc, n))| (k, acc.iter().map(|a| a / n.max(1) as f64).collect()))
            .collect()
    }
}
