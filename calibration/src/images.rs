//! Images for calibrating and evaluating image classifiers: a folder of PNG
//! and JPEG files (or one file) turned into f32 input tensors, with the
//! preprocessing a model expects (size, resize mode, channels, pixel
//! transform, layout) and optional extra crops per image.
//!
//! Everything is deterministic: files are taken in file-name order, crops sit
//! at fixed positions, and resampling is plain sequential f32 arithmetic
//! (the same bytes whatever the thread count).
//!
//! Resampling uses the `image` crate's separable filters, which widen their
//! support when shrinking (antialiased, as Pillow does): [`Resample::Bilinear`]
//! (triangle filter, Pillow's and torchvision's default) or
//! [`Resample::Bicubic`] (Catmull-Rom, close to TensorFlow's bicubic resize).
//! Resampling is done in f32 on values in 0..=1 (no rounding to 8 bits in
//! between); overshoot of the bicubic filter is clamped to 0..=1.

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageBuffer, Luma, Pixel, Rgb};
use rayon::prelude::*;

use crate::error::{CalibrationError, Result};

/// The largest output height or width accepted, a guard against typos that
/// would allocate gigabytes.
pub const MAX_SIDE: u32 = 8192;
/// The largest number of crops per image.
pub const MAX_CROPS: u32 = 4096;
/// The most pixels an image is resized to on the way (the ImageNet center
/// crop resizes the whole image first).
pub const MAX_RESIZED_PIXELS: u64 = 1 << 25;
/// The fraction of the image's fitting window that each of several crops
/// covers (see [`ImagePrep::crops`]).
pub const CROP_FRACTION: f64 = 0.8;
/// The ImageNet evaluation convention: resize the shorter side to
/// `size / 0.875` (256 for 224), then center-crop `size`.
pub const CENTER_CROP_FRACTION: f64 = 0.875;

/// How an image of any size becomes `height × width`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ResizeMode {
    /// Resize (keeping the aspect ratio) so that the shorter side is
    /// `shorter` pixels, then cut the center `height × width`. `None` means
    /// `round(min(height, width) / 0.875)` (256 for 224), the ImageNet
    /// convention. If the resized image would not cover `height × width`
    /// (a `shorter` smaller than the target, or a non-square target), it is
    /// enlarged just enough to cover it. The longer side becomes
    /// `round(longer × scale)`; the crop starts at `floor((new − target) / 2)`.
    ShorterSideCenterCrop { shorter: Option<u32> },
    /// Resize to `height × width`, ignoring the aspect ratio.
    Stretch,
}

/// The colour channels of the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channels {
    /// Three channels R, G, B. Grayscale images are expanded to three equal
    /// channels; an alpha channel is dropped (not composited).
    Rgb,
    /// One channel. Colour images become luma with ITU-R BT.601 weights
    /// (0.299 R + 0.587 G + 0.114 B, as Pillow's `convert("L")`, without its
    /// rounding); grayscale images keep their values.
    Gray,
}

impl Channels {
    pub fn count(self) -> usize {
        match self {
            Channels::Rgb => 3,
            Channels::Gray => 1,
        }
    }
}

/// The memory layout of an image tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[N, C, H, W]`: channel planes (PyTorch, ONNX).
    Nchw,
    /// `[N, H, W, C]`: interleaved channels (TensorFlow, TFLite).
    Nhwc,
}

/// How pixel values become model inputs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PixelTransform {
    /// `x * scale + offset` on values `x` in 0..=255. `scale = 1/255,
    /// offset = 0` gives 0..=1; EfficientNet-Lite wants `(x - 127) / 128`,
    /// that is `scale = 1/128, offset = -127/128`.
    ScaleOffset { scale: f32, offset: f32 },
    /// `(x / 255 - mean[c]) / std[c]` per channel `c`; a one-channel output
    /// uses `mean[0]` and `std[0]`.
    MeanStd { mean: [f32; 3], std: [f32; 3] },
}

impl PixelTransform {
    /// ImageNet's mean and standard deviation (torchvision's models).
    pub const IMAGENET_MEAN_STD: PixelTransform = PixelTransform::MeanStd {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    /// 0..=255 to 0..=1.
    pub const UNIT: PixelTransform = PixelTransform::ScaleOffset {
        scale: 1.0 / 255.0,
        offset: 0.0,
    };
    /// `(x - 127) / 128`, EfficientNet-Lite's input.
    pub const EFFICIENTNET_LITE: PixelTransform = PixelTransform::ScaleOffset {
        scale: 1.0 / 128.0,
        offset: -127.0 / 128.0,
    };

    /// The model input for `v`, a pixel value in 0..=1, in channel `c`.
    #[inline]
    fn apply(&self, v: f32, c: usize) -> f32 {
        match *self {
            PixelTransform::ScaleOffset { scale, offset } => (v * 255.0) * scale + offset,
            PixelTransform::MeanStd { mean, std } => (v - mean[c]) / std[c],
        }
    }
}

/// The resampling filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// Triangle filter (bilinear, antialiased when shrinking).
    Bilinear,
    /// Catmull-Rom cubic (antialiased when shrinking).
    Bicubic,
}

impl Resample {
    fn filter(self) -> FilterType {
        match self {
            Resample::Bilinear => FilterType::Triangle,
            Resample::Bicubic => FilterType::CatmullRom,
        }
    }
}

/// Preprocessing of images into model inputs. The fields map onto CLI flags;
/// [`ImagePrep::new`] and the presets fill in the usual defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ImagePrep {
    /// Output height and width in pixels.
    pub height: u32,
    pub width: u32,
    pub resize: ResizeMode,
    pub resample: Resample,
    pub channels: Channels,
    pub transform: PixelTransform,
    pub layout: Layout,
    /// Samples per image. 1: the whole image, per [`ImagePrep::resize`].
    /// K > 1: K windows at fixed positions on a grid, each covering 0.8 of
    /// the largest `height:width`-shaped rectangle that fits the image (for a
    /// square target, a square of 0.8 × the shorter side), each resized to
    /// `height × width`; `resize` does not apply then. So a few large photos
    /// give many distinct samples.
    pub crops: u32,
}

impl ImagePrep {
    /// `height × width`, ImageNet-style center crop, bilinear, RGB, values
    /// 0..=1, NCHW, one sample per image.
    pub fn new(height: u32, width: u32) -> Self {
        ImagePrep {
            height,
            width,
            resize: ResizeMode::ShorterSideCenterCrop { shorter: None },
            resample: Resample::Bilinear,
            channels: Channels::Rgb,
            transform: PixelTransform::UNIT,
            layout: Layout::Nchw,
            crops: 1,
        }
    }

    /// EfficientNet-Lite's input: `size × size`, center crop, `(x - 127) / 128`,
    /// NCHW (as the ONNX export takes it).
    pub fn efficientnet_lite(size: u32) -> Self {
        ImagePrep {
            transform: PixelTransform::EFFICIENTNET_LITE,
            ..ImagePrep::new(size, size)
        }
    }

    /// torchvision's ImageNet evaluation transform: resize 256, center crop
    /// `size`, ImageNet mean and std, NCHW.
    pub fn imagenet(size: u32) -> Self {
        ImagePrep {
            transform: PixelTransform::IMAGENET_MEAN_STD,
            ..ImagePrep::new(size, size)
        }
    }

    /// The shape of one sample: `[C, H, W]` or `[H, W, C]`.
    pub fn sample_shape(&self) -> [usize; 3] {
        let (c, h, w) = (
            self.channels.count(),
            self.height as usize,
            self.width as usize,
        );
        match self.layout {
            Layout::Nchw => [c, h, w],
            Layout::Nhwc => [h, w, c],
        }
    }

    /// The number of values in one sample.
    pub fn sample_len(&self) -> usize {
        self.sample_shape().iter().product()
    }

    /// Checks the options: sizes in 1..=[`MAX_SIDE`], crops in
    /// 1..=[`MAX_CROPS`], a finite transform with non-zero std.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(CalibrationError::InvalidArgument(msg));
        for (name, v) in [("height", self.height), ("width", self.width)] {
            if v == 0 || v > MAX_SIDE {
                return bad(format!("image {name} {v}: must be 1 to {MAX_SIDE}"));
            }
        }
        if let ResizeMode::ShorterSideCenterCrop { shorter: Some(s) } = self.resize {
            if s == 0 || s > MAX_SIDE {
                return bad(format!(
                    "resize of the shorter side to {s}: must be 1 to {MAX_SIDE}"
                ));
            }
        }
        if self.crops == 0 || self.crops > MAX_CROPS {
            return bad(format!(
                "{} crops per image: must be 1 to {MAX_CROPS}",
                self.crops
            ));
        }
        match self.transform {
            PixelTransform::ScaleOffset { scale, offset } => {
                if !scale.is_finite() || !offset.is_finite() {
                    return bad(format!(
                        "pixel scale {scale} and offset {offset}: must be finite"
                    ));
                }
            }
            PixelTransform::MeanStd { mean, std } => {
                let n = self.channels.count();
                if mean[..n].iter().any(|m| !m.is_finite())
                    || std[..n].iter().any(|s| !s.is_finite() || *s == 0.0)
                {
                    return bad(format!(
                        "pixel mean {:?} and std {:?}: must be finite, std non-zero",
                        &mean[..n],
                        &std[..n]
                    ));
                }
            }
        }
        Ok(())
    }

    /// The shorter side the center-crop mode resizes to.
    fn shorter_side(&self, shorter: Option<u32>) -> u32 {
        shorter.unwrap_or_else(|| {
            let side = self.height.min(self.width) as f64 / CENTER_CROP_FRACTION;
            side.round() as u32
        })
    }
}

/// A batch of samples in one flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageBatch {
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
    /// `[N, C, H, W]` or `[N, H, W, C]` per `layout`.
    pub shape: [usize; 4],
    pub layout: Layout,
}

impl ImageBatch {
    /// The number of samples, N.
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }

    /// The shape of one sample, `shape[1..]`.
    pub fn sample_shape(&self) -> [usize; 3] {
        [self.shape[1], self.shape[2], self.shape[3]]
    }

    /// The number of values in one sample.
    pub fn sample_len(&self) -> usize {
        self.shape[1] * self.shape[2] * self.shape[3]
    }

    /// Sample `i`, or `None` past the end.
    pub fn sample(&self, i: usize) -> Option<&[f32]> {
        let n = self.sample_len();
        let start = i.checked_mul(n)?;
        self.data.get(start..start.checked_add(n)?)
    }

    /// The samples in order.
    pub fn samples(&self) -> impl Iterator<Item = &[f32]> {
        // chunks_exact panics on 0; an empty sample shape has no samples.
        self.data.chunks_exact(self.sample_len().max(1))
    }

    /// (channels, height, width), whatever the layout.
    pub fn chw(&self) -> (usize, usize, usize) {
        let s = self.shape;
        match self.layout {
            Layout::Nchw => (s[1], s[2], s[3]),
            Layout::Nhwc => (s[3], s[1], s[2]),
        }
    }
}

/// Images loaded from a folder or a file.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedImages {
    /// The image files in order.
    pub files: Vec<PathBuf>,
    /// Samples per file ([`ImagePrep::crops`]): sample `i` comes from
    /// `files[i / crops_per_file]`.
    pub crops_per_file: usize,
    pub batch: ImageBatch,
}

impl LoadedImages {
    /// The file sample `i` comes from.
    pub fn file_of(&self, sample: usize) -> Option<&Path> {
        self.files
            .get(sample / self.crops_per_file.max(1))
            .map(PathBuf::as_path)
    }
}

/// Whether a file name ends in `.png`, `.jpg` or `.jpeg` (any case).
pub fn is_image_file_name(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        let e = e.to_ascii_lowercase();
        e == "png" || e == "jpg" || e == "jpeg"
    })
}

/// The PNG and JPEG files directly in `dir` (by extension, any case), sorted
/// by file name (byte order). Subfolders and other files are ignored. A
/// folder without one is an error naming it.
pub fn list_images(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    let entries = std::fs::read_dir(dir).map_err(|e| CalibrationError::io(dir, e))?;
    let mut files = vec![];
    for entry in entries {
        let entry = entry.map_err(|e| CalibrationError::io(dir, e))?;
        let path = entry.path();
        if !is_image_file_name(&path) {
            continue;
        }
        // Follows symlinks: a link to an image counts, a link to a folder not.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => files.push(path),
            Ok(_) => {}
            Err(e) => return Err(CalibrationError::io(path, e)),
        }
    }
    if files.is_empty() {
        return Err(CalibrationError::Invalid {
            path: dir.into(),
            msg: "no PNG or JPEG images in the folder (files ending .png, .jpg or .jpeg)".into(),
        });
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// Decodes a PNG or JPEG file; the format is read from the content (the
/// signature), not the name. EXIF orientation is not applied, as
/// Pillow-based pipelines do not apply it either.
pub fn decode_image(path: impl AsRef<Path>) -> Result<DynamicImage> {
    let path = path.as_ref();
    let bad = |msg: String| CalibrationError::Invalid {
        path: path.into(),
        msg,
    };
    let bytes = std::fs::read(path).map_err(|e| CalibrationError::io(path, e))?;
    if bytes.is_empty() {
        return Err(CalibrationError::Empty { path: path.into() });
    }
    let format = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        image::ImageFormat::Png
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        image::ImageFormat::Jpeg
    } else {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        return Err(bad(format!(
            "not a PNG or JPEG image (it starts with {})",
            head.join(" ")
        )));
    };
    // The reader's default limits (512 MiB) refuse absurd dimensions.
    let img = image::ImageReader::with_format(std::io::Cursor::new(&bytes), format)
        .decode()
        .map_err(|e| bad(format!("cannot decode the image: {e}")))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(bad(format!(
            "the image is {}×{} pixels: empty",
            img.width(),
            img.height()
        )));
    }
    Ok(img)
}

/// The samples of one decoded image: `prep.crops` of them, each
/// `prep.sample_len()` values in `prep.layout`.
pub fn image_samples(img: &DynamicImage, prep: &ImagePrep) -> Result<Vec<Vec<f32>>> {
    prep.validate()?;
    samples(img, prep).map_err(CalibrationError::InvalidArgument)
}

/// Like [`image_samples`], with errors naming the file.
fn file_samples(path: &Path, prep: &ImagePrep) -> Result<Vec<Vec<f32>>> {
    samples(&decode_image(path)?, prep).map_err(|msg| CalibrationError::Invalid {
        path: path.into(),
        msg,
    })
}

fn samples(img: &DynamicImage, prep: &ImagePrep) -> Result<Vec<Vec<f32>>, String> {
    if img.width() == 0 || img.height() == 0 {
        return Err("an empty image (0 pixels)".into());
    }
    match prep.channels {
        Channels::Rgb => samples_of(&img.to_rgb32f(), prep),
        Channels::Gray => samples_of(&to_gray(img), prep),
    }
}

/// Loads one image file: `prep.crops` samples.
pub fn load_image(path: impl AsRef<Path>, prep: &ImagePrep) -> Result<ImageBatch> {
    prep.validate()?;
    Ok(batch_of(file_samples(path.as_ref(), prep)?, prep))
}

/// Loads a folder of images (see [`list_images`]) or a single image file,
/// decoding files in parallel; the result is the same whatever the thread
/// count. An image that fails to decode is an error naming it (the first
/// such file in order).
pub fn load_images(path: impl AsRef<Path>, prep: &ImagePrep) -> Result<LoadedImages> {
    let path = path.as_ref();
    prep.validate()?;
    let meta = std::fs::metadata(path).map_err(|e| CalibrationError::io(path, e))?;
    let files = if meta.is_dir() {
        list_images(path)?
    } else {
        vec![path.to_path_buf()]
    };
    let per_file: Vec<Result<Vec<Vec<f32>>>> =
        files.par_iter().map(|f| file_samples(f, prep)).collect();
    let mut samples = Vec::with_capacity(files.len() * prep.crops as usize);
    for r in per_file {
        samples.extend(r?);
    }
    Ok(LoadedImages {
        files,
        crops_per_file: prep.crops as usize,
        batch: batch_of(samples, prep),
    })
}

fn batch_of(samples: Vec<Vec<f32>>, prep: &ImagePrep) -> ImageBatch {
    let n = samples.len();
    let s = prep.sample_shape();
    let mut data = Vec::with_capacity(n * prep.sample_len());
    for x in samples {
        data.extend_from_slice(&x);
    }
    ImageBatch {
        data,
        shape: [n, s[0], s[1], s[2]],
        layout: prep.layout,
    }
}

type Gray32F = ImageBuffer<Luma<f32>, Vec<f32>>;

fn to_gray(img: &DynamicImage) -> Gray32F {
    if !img.color().has_color() {
        return img.to_luma32f();
    }
    let rgb = img.to_rgb32f();
    let (w, h) = rgb.dimensions();
    let data = rgb
        .as_raw()
        .chunks_exact(3)
        .map(|p| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2])
        .collect();
    // The buffer holds exactly w * h values.
    ImageBuffer::from_raw(w, h, data).expect("w * h luma values")
}

/// The pixel types the samples are made from: RGB or luma, f32 in 0..=1.
trait Plane: Pixel<Subpixel = f32> + 'static {}
impl Plane for Rgb<f32> {}
impl Plane for Luma<f32> {}

fn samples_of<P: Plane>(
    img: &ImageBuffer<P, Vec<f32>>,
    prep: &ImagePrep,
) -> Result<Vec<Vec<f32>>, String> {
    let (h, w) = (prep.height, prep.width);
    let filter = prep.resample.filter();
    if prep.crops > 1 {
        return Ok(crop_windows(img.width(), img.height(), prep)
            .into_iter()
            .map(|(x, y, cw, ch)| {
                let window = imageops::crop_imm(img, x, y, cw, ch).to_image();
                to_tensor(&imageops::resize(&window, w, h, filter), prep)
            })
            .collect());
    }
    let out = match prep.resize {
        ResizeMode::Stretch => imageops::resize(img, w, h, filter),
        ResizeMode::ShorterSideCenterCrop { shorter } => {
            let s = prep.shorter_side(shorter) as f64;
            let (iw, ih) = (img.width() as f64, img.height() as f64);
            // The shorter side to s, but never smaller than the crop.
            let f = (s / iw.min(ih)).max(h as f64 / ih).max(w as f64 / iw);
            let nw = ((iw * f).round().min(u32::MAX as f64) as u32).max(w);
            let nh = ((ih * f).round().min(u32::MAX as f64) as u32).max(h);
            // A very elongated image would need an absurd intermediate image
            // (the resize also holds width × new height pixels).
            let px = (nw as u64 * nh as u64).max(img.width() as u64 * nh as u64);
            if px > MAX_RESIZED_PIXELS {
                return Err(format!(
                    "the image is {}×{}: too elongated to resize its shorter side to {s} \
                     (use a plain resize or crops)",
                    img.width(),
                    img.height()
                ));
            }
            let resized = imageops::resize(img, nw, nh, filter);
            imageops::crop_imm(&resized, (nw - w) / 2, (nh - h) / 2, w, h).to_image()
        }
    };
    Ok(vec![to_tensor(&out, prep)])
}

/// The `prep.crops` windows `(x, y, width, height)` of an `iw × ih` image:
/// 0.8 of the largest `height:width` rectangle that fits, on a grid of
/// columns and rows in proportion to the free room in x and y, the first
/// row's left window first; a short last row is spread across the width.
/// None for an empty image.
pub fn crop_windows(iw: u32, ih: u32, prep: &ImagePrep) -> Vec<(u32, u32, u32, u32)> {
    if iw == 0 || ih == 0 {
        return vec![];
    }
    let k = prep.crops.max(1) as usize;
    let aspect = prep.width as f64 / prep.height as f64;
    let (fw, fh) = if iw as f64 / ih as f64 >= aspect {
        (ih as f64 * aspect, ih as f64)
    } else {
        (iw as f64, iw as f64 / aspect)
    };
    let cw = ((fw * CROP_FRACTION).round() as u32).clamp(1, iw);
    let ch = ((fh * CROP_FRACTION).round() as u32).clamp(1, ih);
    let (free_x, free_y) = ((iw - cw) as f64, (ih - ch) as f64);
    let cols = if free_y <= 0.0 {
        k
    } else {
        ((k as f64 * free_x / free_y).sqrt().round() as usize).clamp(1, k)
    };
    let rows = k.div_ceil(cols);
    // Position j of n evenly spread over [0, free].
    let at = |j: usize, n: usize, free: f64| -> u32 {
        if n <= 1 {
            (free / 2.0).round() as u32
        } else {
            (free * j as f64 / (n - 1) as f64).round() as u32
        }
    };
    (0..k)
        .map(|i| {
            let (row, col) = (i / cols, i % cols);
            let in_row = if row + 1 == rows {
                k - row * cols
            } else {
                cols
            };
            (at(col, in_row, free_x), at(row, rows, free_y), cw, ch)
        })
        .collect()
}

fn to_tensor<P: Plane>(img: &ImageBuffer<P, Vec<f32>>, prep: &ImagePrep) -> Vec<f32> {
    let c = P::CHANNEL_COUNT as usize;
    let raw = img.as_raw(); // interleaved H × W × C
    let t = &prep.transform;
    match prep.layout {
        Layout::Nhwc => raw
            .iter()
            .enumerate()
            .map(|(i, &v)| t.apply(v, i % c))
            .collect(),
        Layout::Nchw => {
            let hw = raw.len() / c;
            let mut out = vec![0.0; raw.len()];
            for (i, px) in raw.chunks_exact(c).enumerate() {
                for (ch, &v) in px.iter().enumerate() {
                    out[ch * hw + i] = t.apply(v, ch);
                }
            }
            out
        }
    }
}
