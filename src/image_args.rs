//! Image preprocessing flags, shared by `quantize` and `eval`; they become
//! the library's `ImageSpec` (a data set's `image` table in recipes).

use edgec_pipeline::graph_data::{ImageSpec, Resize, Transform};

use crate::cmd::named;

#[derive(clap::Args, Clone, Debug)]
pub struct ImageArgs {
    /// Pixel transform for image data: unit (x/255), efficientnet
    /// ((x−127)/128), signed (x/127.5−1), imagenet (ImageNet mean/std);
    /// --image-scale/--image-offset or --image-mean/--image-std set one explicitly.
    #[arg(long, default_value = "unit", value_parser = named::<Transform>)]
    pub image_transform: Transform,
    /// Pixel transform x · S + O on 0..255 values (with --image-offset).
    #[arg(long, value_name = "S", allow_hyphen_values = true)]
    pub image_scale: Option<f32>,
    /// See --image-scale.
    #[arg(
        long,
        value_name = "O",
        allow_hyphen_values = true,
        requires = "image_scale"
    )]
    pub image_offset: Option<f32>,
    /// Pixel transform (x/255 − mean[c]) / std[c]: three means (with --image-std).
    #[arg(long, value_name = "R,G,B", value_parser = parse_triple,
          requires = "image_std", conflicts_with = "image_scale")]
    pub image_mean: Option<[f32; 3]>,
    /// See --image-mean.
    #[arg(long, value_name = "R,G,B", value_parser = parse_triple, requires = "image_mean")]
    pub image_std: Option<[f32; 3]>,
    /// How photos become the input size: `crop` resizes the shorter side to
    /// size/0.875 and cuts the centre (ImageNet's convention), `stretch`
    /// resizes to the input size ignoring the aspect ratio.
    #[arg(long, default_value = "crop", value_parser = named::<Resize>)]
    pub resize: Resize,
    /// Samples per photo: 1 is the centre crop; K > 1 takes K crops at
    /// fixed positions (more samples from few photos).
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub crops: u32,
}

impl ImageArgs {
    pub fn spec(&self) -> ImageSpec {
        ImageSpec {
            transform: self.image_transform,
            scale: self.image_scale,
            offset: self.image_offset,
            mean: self.image_mean,
            std: self.image_std,
            resize: self.resize,
            crops: self.crops,
        }
    }
}

/// Three comma-separated numbers (per-channel means or standard deviations).
fn parse_triple(s: &str) -> Result<[f32; 3], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|x| {
            x.trim()
                .parse::<f32>()
                .map_err(|_| format!("{x:?} is not a number"))
        })
        .collect::<Result<_, _>>()?;
    match v.as_slice() {
        [a, b, c] if v.iter().all(|x| x.is_finite()) => Ok([*a, *b, *c]),
        _ => Err(format!("{s:?}: give three numbers, R,G,B")),
    }
}
