//! Image folders and IDX files as model inputs: shapes, layouts, transforms,
//! crops, determinism, and a clear error naming the file for each bad one.

use std::io::Write;
use std::path::{Path, PathBuf};

use edgec_calibration::idx::{read_idx, read_idx_images, read_idx_labels, write_idx, IdxType};
use edgec_calibration::images::{
    crop_windows, list_images, load_image, load_images, Channels, ImagePrep, Layout,
    PixelTransform, ResizeMode,
};
use edgec_calibration::CalibrationError;
use image::{GrayImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

fn err_text<T: std::fmt::Debug>(r: Result<T, CalibrationError>) -> String {
    r.expect_err("expected an error").to_string()
}

/// A deterministic colourful `w × h` image.
fn pattern(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            ((x * 37 + y * 11 + seed * 53) % 256) as u8,
            ((x * 5 + y * 29 + seed * 7) % 256) as u8,
            ((x * y + seed * 101) % 256) as u8,
        ])
    })
}

fn save_png(img: &RgbImage, path: &Path) -> PathBuf {
    img.save_with_format(path, ImageFormat::Png).unwrap();
    path.to_path_buf()
}

fn stretch(h: u32, w: u32) -> ImagePrep {
    ImagePrep {
        resize: ResizeMode::Stretch,
        ..ImagePrep::new(h, w)
    }
}

fn close(a: f32, b: f32, tol: f32) -> bool {
    (a - b).abs() <= tol
}

// ---------------------------------------------------------------- images

#[test]
fn folder_is_read_in_name_order_and_other_files_are_ignored() {
    let d = tempfile::tempdir().unwrap();
    save_png(&pattern(12, 9, 1), &d.path().join("b.png"));
    save_png(&pattern(12, 9, 2), &d.path().join("a.PNG"));
    pattern(12, 9, 3)
        .save_with_format(d.path().join("c.jpeg"), ImageFormat::Jpeg)
        .unwrap();
    std::fs::write(d.path().join("notes.txt"), "not an image").unwrap();
    std::fs::create_dir(d.path().join("sub.png")).unwrap(); // a folder, skipped
    save_png(&pattern(12, 9, 4), &d.path().join("sub.png/deeper.png"));

    let files = list_images(d.path()).unwrap();
    let names: Vec<_> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(names, ["a.PNG", "b.png", "c.jpeg"]);

    let loaded = load_images(d.path(), &ImagePrep::new(8, 8)).unwrap();
    assert_eq!(loaded.files, files);
    assert_eq!(loaded.batch.shape, [3, 3, 8, 8]);
    assert_eq!(loaded.batch.data.len(), 3 * 3 * 8 * 8);
    assert_eq!(loaded.file_of(1), Some(files[1].as_path()));
    assert_eq!(loaded.file_of(3), None);
    // default transform 0..=1
    assert!(loaded.batch.data.iter().all(|v| (0.0..=1.0).contains(v)));

    // a single file
    let one = load_images(&files[1], &ImagePrep::new(8, 8)).unwrap();
    assert_eq!(one.batch.shape, [1, 3, 8, 8]);
    assert_eq!(one.batch.sample(0), loaded.batch.sample(1));
}

#[test]
fn nchw_and_nhwc_hold_the_same_values_transposed() {
    let d = tempfile::tempdir().unwrap();
    save_png(&pattern(40, 30, 1), &d.path().join("a.png"));
    save_png(&pattern(25, 50, 2), &d.path().join("b.png"));
    let prep = ImagePrep::new(16, 12);
    let nchw = load_images(d.path(), &prep).unwrap().batch;
    let nhwc = load_images(
        d.path(),
        &ImagePrep {
            layout: Layout::Nhwc,
            ..prep.clone()
        },
    )
    .unwrap()
    .batch;
    assert_eq!(nchw.shape, [2, 3, 16, 12]);
    assert_eq!(nhwc.shape, [2, 16, 12, 3]);
    assert_eq!(nchw.chw(), (3, 16, 12));
    assert_eq!(nhwc.chw(), (3, 16, 12));
    for n in 0..2 {
        for c in 0..3 {
            for y in 0..16 {
                for x in 0..12 {
                    let a = nchw.data[((n * 3 + c) * 16 + y) * 12 + x];
                    let b = nhwc.data[((n * 16 + y) * 12 + x) * 3 + c];
                    assert_eq!(a.to_bits(), b.to_bits(), "n{n} c{c} y{y} x{x}");
                }
            }
        }
    }
}

#[test]
fn same_size_image_keeps_its_pixels_exactly() {
    let d = tempfile::tempdir().unwrap();
    let img = pattern(7, 5, 3);
    let p = save_png(&img, &d.path().join("a.png"));
    let b = load_image(
        &p,
        &ImagePrep {
            transform: PixelTransform::ScaleOffset {
                scale: 1.0,
                offset: 0.0,
            },
            layout: Layout::Nhwc,
            ..stretch(5, 7)
        },
    )
    .unwrap();
    for (got, want) in b.data.iter().zip(img.as_raw()) {
        assert!(close(*got, *want as f32, 1e-4), "{got} vs {want}");
    }
}

#[test]
fn pixel_transforms_on_known_values() {
    let d = tempfile::tempdir().unwrap();
    let rgb = [10u8, 128, 255];
    let p = save_png(
        &RgbImage::from_pixel(31, 17, Rgb(rgb)),
        &d.path().join("solid.png"),
    );

    // EfficientNet-Lite: (x - 127) / 128, any resize of a solid image
    let b = load_image(&p, &ImagePrep::efficientnet_lite(8)).unwrap();
    assert_eq!(b.shape, [1, 3, 8, 8]);
    for (c, x) in rgb.iter().enumerate() {
        let want = (*x as f32 - 127.0) / 128.0;
        for v in &b.data[c * 64..(c + 1) * 64] {
            assert!(close(*v, want, 1e-5), "channel {c}: {v} vs {want}");
        }
    }

    // ImageNet mean/std: (x/255 - mean) / std
    let b = load_image(&p, &ImagePrep::imagenet(8)).unwrap();
    let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    for (c, x) in rgb.iter().enumerate() {
        let want = (*x as f32 / 255.0 - mean[c]) / std[c];
        for v in &b.data[c * 64..(c + 1) * 64] {
            assert!(close(*v, want, 1e-5), "channel {c}: {v} vs {want}");
        }
    }

    // bicubic on a solid image is the same colour too (no overshoot)
    let b = load_image(
        &p,
        &ImagePrep {
            resample: edgec_calibration::images::Resample::Bicubic,
            ..ImagePrep::efficientnet_lite(8)
        },
    )
    .unwrap();
    assert!(close(b.data[0], (10.0 - 127.0) / 128.0, 1e-5));
}

#[test]
fn grayscale_is_expanded_and_colour_becomes_bt601_luma() {
    let d = tempfile::tempdir().unwrap();
    let gray = GrayImage::from_fn(6, 6, |x, y| image::Luma([(x * 40 + y) as u8]));
    let p = d.path().join("gray.png");
    gray.save(&p).unwrap();
    let raw255 = PixelTransform::ScaleOffset {
        scale: 1.0,
        offset: 0.0,
    };

    let b = load_image(
        &p,
        &ImagePrep {
            transform: raw255,
            ..stretch(6, 6)
        },
    )
    .unwrap();
    assert_eq!(b.shape, [1, 3, 6, 6]);
    for c in 0..3 {
        for (i, v) in b.data[c * 36..(c + 1) * 36].iter().enumerate() {
            assert!(close(*v, gray.as_raw()[i] as f32, 1e-4));
        }
    }

    let one = ImagePrep {
        channels: Channels::Gray,
        transform: raw255,
        ..stretch(6, 6)
    };
    let b = load_image(&p, &one).unwrap();
    assert_eq!(b.shape, [1, 1, 6, 6]);
    for (v, g) in b.data.iter().zip(gray.as_raw()) {
        assert!(close(*v, *g as f32, 1e-4));
    }

    let p = save_png(
        &RgbImage::from_pixel(6, 6, Rgb([200, 100, 50])),
        &d.path().join("colour.png"),
    );
    let b = load_image(&p, &one).unwrap();
    let want = 0.299 * 200.0 + 0.587 * 100.0 + 0.114 * 50.0;
    assert!(
        b.data.iter().all(|v| close(*v, want, 1e-3)),
        "{}",
        b.data[0]
    );
    // NHWC of one channel: the same values, another shape
    let b2 = load_image(
        &p,
        &ImagePrep {
            layout: Layout::Nhwc,
            ..one
        },
    )
    .unwrap();
    assert_eq!(b2.shape, [1, 6, 6, 1]);
    assert_eq!(b.data, b2.data);
}

#[test]
fn alpha_is_dropped() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("rgba.png");
    RgbaImage::from_pixel(5, 5, Rgba([20, 40, 60, 0]))
        .save(&p)
        .unwrap();
    let b = load_image(
        &p,
        &ImagePrep {
            layout: Layout::Nhwc,
            transform: PixelTransform::ScaleOffset {
                scale: 1.0,
                offset: 0.0,
            },
            ..stretch(5, 5)
        },
    )
    .unwrap();
    assert_eq!(b.shape, [1, 5, 5, 3]);
    for px in b.data.chunks(3) {
        assert!(close(px[0], 20.0, 1e-4) && close(px[1], 40.0, 1e-4) && close(px[2], 60.0, 1e-4));
    }
}

#[test]
fn jpeg_is_decoded() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("solid.jpg");
    let mut enc_out = std::fs::File::create(&p).unwrap();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut enc_out, 100)
        .encode_image(&RgbImage::from_pixel(16, 16, Rgb([200, 30, 90])))
        .unwrap();
    drop(enc_out);
    let b = load_image(
        &p,
        &ImagePrep {
            transform: PixelTransform::ScaleOffset {
                scale: 1.0,
                offset: 0.0,
            },
            ..ImagePrep::new(8, 8)
        },
    )
    .unwrap();
    for (c, want) in [200.0, 30.0, 90.0].into_iter().enumerate() {
        for v in &b.data[c * 64..(c + 1) * 64] {
            assert!(close(*v, want, 3.0), "channel {c}: {v} vs {want}");
        }
    }
}

#[test]
fn center_crop_takes_the_middle() {
    let d = tempfile::tempdir().unwrap();
    // 30 × 10: red, green, blue thirds; the shorter side is already 10.
    let img = RgbImage::from_fn(30, 10, |x, _| match x {
        0..=9 => Rgb([255, 0, 0]),
        10..=19 => Rgb([0, 255, 0]),
        _ => Rgb([0, 0, 255]),
    });
    let p = save_png(&img, &d.path().join("thirds.png"));
    let prep = ImagePrep {
        resize: ResizeMode::ShorterSideCenterCrop { shorter: Some(10) },
        ..ImagePrep::new(10, 10)
    };
    let b = load_image(&p, &prep).unwrap();
    let (r, g, bl) = (&b.data[..100], &b.data[100..200], &b.data[200..]);
    assert!(r.iter().all(|v| *v == 0.0));
    assert!(g.iter().all(|v| close(*v, 1.0, 1e-6)));
    assert!(bl.iter().all(|v| *v == 0.0));
    // a plain resize keeps all three colours
    let b = load_image(&p, &stretch(10, 10)).unwrap();
    assert!(b.data[..100].iter().any(|v| *v > 0.9));
    assert!(b.data[200..].iter().any(|v| *v > 0.9));
}

#[test]
fn the_default_center_crop_resizes_the_shorter_side_to_size_over_0_875() {
    let d = tempfile::tempdir().unwrap();
    // 512 × 256 with a bright 16-pixel border top and bottom: resized to
    // 256 × 128 (shorter side 128 = 112 / 0.875), the border becomes 8 pixels,
    // and the 112-pixel center crop drops it (it keeps rows 8..120).
    let img = RgbImage::from_fn(512, 256, |_, y| {
        if !(16..240).contains(&y) {
            Rgb([255, 255, 255])
        } else {
            Rgb([0, 0, 0])
        }
    });
    let p = save_png(&img, &d.path().join("bands.png"));
    let b = load_image(&p, &ImagePrep::new(112, 112)).unwrap();
    assert_eq!(b.shape, [1, 3, 112, 112]);
    // all dark, apart from filter bleed at the very edge
    let row = |y: usize| &b.data[y * 112..(y + 1) * 112];
    assert!(row(56).iter().all(|v| *v == 0.0));
    assert!(row(2).iter().all(|v| *v < 0.01), "{:?}", &row(2)[..4]);
    // with the shorter side at 112 the border (7 pixels) is kept
    let b = load_image(
        &p,
        &ImagePrep {
            resize: ResizeMode::ShorterSideCenterCrop { shorter: Some(112) },
            ..ImagePrep::new(112, 112)
        },
    )
    .unwrap();
    assert!(b.data[..112].iter().all(|v| *v > 0.99));
}

#[test]
fn results_are_deterministic_whatever_the_thread_count() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..6 {
        save_png(
            &pattern(50 + i * 7, 40, i),
            &d.path().join(format!("{i}.png")),
        );
    }
    let prep = ImagePrep {
        crops: 3,
        ..ImagePrep::efficientnet_lite(24)
    };
    let a = load_images(d.path(), &prep).unwrap();
    let b = load_images(d.path(), &prep).unwrap();
    assert_eq!(a, b);
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| load_images(d.path(), &prep).unwrap());
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.batch.data), bits(&one_thread.batch.data));
}

#[test]
fn crops_give_distinct_samples_of_one_image() {
    let d = tempfile::tempdir().unwrap();
    let p = save_png(&pattern(200, 120, 5), &d.path().join("big.png"));
    let q = save_png(&pattern(90, 160, 6), &d.path().join("tall.png"));
    for k in [2u32, 5, 12] {
        let prep = ImagePrep {
            crops: k,
            ..ImagePrep::new(32, 32)
        };
        let loaded = load_images(d.path(), &prep).unwrap();
        assert_eq!(loaded.batch.shape, [2 * k as usize, 3, 32, 32]);
        assert_eq!(loaded.crops_per_file, k as usize);
        assert_eq!(loaded.file_of(k as usize - 1), Some(p.as_path()));
        assert_eq!(loaded.file_of(k as usize), Some(q.as_path()));
        let samples: Vec<&[f32]> = loaded.batch.samples().collect();
        for i in 0..samples.len() {
            for j in i + 1..samples.len() {
                assert_ne!(
                    samples[i], samples[j],
                    "k={k}: samples {i} and {j} are equal"
                );
            }
        }
        // the windows: inside the image, 0.8 of the shorter side, distinct
        for (iw, ih) in [(200, 120), (90, 160)] {
            let w = crop_windows(iw, ih, &prep);
            assert_eq!(w.len(), k as usize);
            let side = (0.8 * iw.min(ih) as f64).round() as u32;
            for &(x, y, cw, ch) in &w {
                assert_eq!((cw, ch), (side, side));
                assert!(x + cw <= iw && y + ch <= ih);
            }
            let mut pos: Vec<_> = w.iter().map(|c| (c.0, c.1)).collect();
            pos.sort();
            pos.dedup();
            assert_eq!(pos.len(), k as usize, "{iw}x{ih} k={k}: {w:?}");
        }
    }
    // non-square target: windows of its aspect
    let prep = ImagePrep {
        crops: 4,
        ..ImagePrep::new(20, 40)
    };
    for &(_, _, cw, ch) in &crop_windows(200, 120, &prep) {
        assert_eq!((cw, ch), (160, 80));
    }
    let b = load_image(&p, &prep).unwrap();
    assert_eq!(b.shape, [4, 3, 20, 40]);
}

#[test]
fn tiny_and_elongated_images() {
    let d = tempfile::tempdir().unwrap();
    let p = save_png(&pattern(1, 1, 0), &d.path().join("dot.png"));
    let b = load_image(
        &p,
        &ImagePrep {
            crops: 3,
            ..ImagePrep::new(4, 4)
        },
    )
    .unwrap();
    assert_eq!(b.shape, [3, 3, 4, 4]);
    assert_eq!(
        load_image(&p, &ImagePrep::new(4, 4)).unwrap().shape,
        [1, 3, 4, 4]
    );

    let p = save_png(&pattern(1, 5000, 0), &d.path().join("line.png"));
    let e = err_text(load_image(&p, &ImagePrep::new(224, 224)));
    assert!(e.contains("line.png") && e.contains("too elongated"), "{e}");
    // a plain resize of it is fine
    assert_eq!(load_image(&p, &stretch(8, 8)).unwrap().shape, [1, 3, 8, 8]);
}

#[test]
fn bad_images_and_folders_are_errors_naming_them() {
    let d = tempfile::tempdir().unwrap();
    save_png(&pattern(8, 8, 1), &d.path().join("a.png"));
    // a PNG signature and garbage
    let bad = d.path().join("b-corrupt.png");
    let mut f = std::fs::File::create(&bad).unwrap();
    f.write_all(b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDRgarbage-garbage")
        .unwrap();
    drop(f);
    let e = err_text(load_images(d.path(), &ImagePrep::new(8, 8)));
    assert!(
        e.contains("b-corrupt.png") && e.contains("cannot decode"),
        "{e}"
    );

    // a PNG cut in half
    let whole = std::fs::read(d.path().join("a.png")).unwrap();
    let cut = d.path().join("cut.png");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let e = err_text(load_image(&cut, &ImagePrep::new(8, 8)));
    assert!(e.contains("cut.png") && e.contains("cannot decode"), "{e}");

    // text named .jpg
    let txt = d.path().join("text.jpg");
    std::fs::write(&txt, "hello").unwrap();
    let e = err_text(load_image(&txt, &ImagePrep::new(8, 8)));
    assert!(
        e.contains("text.jpg") && e.contains("not a PNG or JPEG"),
        "{e}"
    );

    // an empty file
    let empty = d.path().join("empty.png");
    std::fs::write(&empty, "").unwrap();
    let e = err_text(load_image(&empty, &ImagePrep::new(8, 8)));
    assert!(e.contains("empty.png") && e.contains("empty"), "{e}");

    // an empty folder, and one with no image among its files
    let e1 = d.path().join("none");
    std::fs::create_dir(&e1).unwrap();
    let e = err_text(load_images(&e1, &ImagePrep::new(8, 8)));
    assert!(
        e.contains("none") && e.contains("no PNG or JPEG images"),
        "{e}"
    );
    std::fs::write(e1.join("readme.txt"), "x").unwrap();
    let e = err_text(list_images(&e1));
    assert!(e.contains("no PNG or JPEG images"), "{e}");

    // a missing path
    let missing = d.path().join("missing-dir");
    let e = err_text(load_images(&missing, &ImagePrep::new(8, 8)));
    assert!(e.contains("missing-dir"), "{e}");
    let e = err_text(load_image(d.path().join("nope.png"), &ImagePrep::new(8, 8)));
    assert!(e.contains("nope.png"), "{e}");
}

/// CRC-32 as PNG chunks use it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn absurd_png_dimensions_are_refused_not_allocated() {
    // A valid PNG header claiming 100000 × 100000 RGB pixels (30 GB).
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    // the start of the first row, so that the decoder gets as far as sizing
    // its buffer
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&[0; 64]).unwrap();
    let mut idat = b"IDAT".to_vec();
    idat.extend_from_slice(&z.finish().unwrap());
    png.extend_from_slice(&(idat.len() as u32 - 4).to_be_bytes());
    png.extend_from_slice(&idat);
    png.extend_from_slice(&crc32(&idat).to_be_bytes());
    png.extend_from_slice(&[0, 0, 0, 0]);
    png.extend_from_slice(b"IEND");
    png.extend_from_slice(&crc32(b"IEND").to_be_bytes());
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("huge.png");
    std::fs::write(&p, png).unwrap();
    let e = err_text(load_image(&p, &ImagePrep::new(8, 8)));
    assert!(e.contains("huge.png") && e.contains("limit"), "{e}");
}

#[cfg(unix)]
#[test]
fn unreadable_folder_is_an_error_naming_it() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let sub = d.path().join("locked");
    std::fs::create_dir(&sub).unwrap();
    save_png(&pattern(8, 8, 1), &sub.join("a.png"));
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o000)).unwrap();
    let r = load_images(&sub, &ImagePrep::new(8, 8));
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
    // root reads it anyway; anyone else gets an error naming the folder
    if let Err(e) = r {
        assert!(e.to_string().contains("locked"), "{e}");
    }
}

#[test]
fn bad_options_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = save_png(&pattern(8, 8, 1), &d.path().join("a.png"));
    let cases = [
        ImagePrep::new(0, 8),
        ImagePrep::new(8, 100_000),
        ImagePrep {
            crops: 0,
            ..ImagePrep::new(8, 8)
        },
        ImagePrep {
            resize: ResizeMode::ShorterSideCenterCrop { shorter: Some(0) },
            ..ImagePrep::new(8, 8)
        },
        ImagePrep {
            transform: PixelTransform::MeanStd {
                mean: [0.5; 3],
                std: [0.2, 0.0, 0.2],
            },
            ..ImagePrep::new(8, 8)
        },
        ImagePrep {
            transform: PixelTransform::ScaleOffset {
                scale: f32::NAN,
                offset: 0.0,
            },
            ..ImagePrep::new(8, 8)
        },
    ];
    for prep in cases {
        match load_image(&p, &prep) {
            Err(CalibrationError::InvalidArgument(_)) => {}
            other => panic!("{prep:?}: {other:?}"),
        }
    }
    // one channel only looks at the first mean and std
    let gray = ImagePrep {
        channels: Channels::Gray,
        transform: PixelTransform::MeanStd {
            mean: [0.5, f32::NAN, 0.0],
            std: [0.25, 0.0, 0.0],
        },
        ..ImagePrep::new(8, 8)
    };
    assert_eq!(load_image(&p, &gray).unwrap().shape, [1, 1, 8, 8]);
}

// ---------------------------------------------------------------- IDX

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx_bytes(code: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, code, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

#[test]
fn idx_round_trips_every_type_plain_and_gzip() {
    let d = tempfile::tempdir().unwrap();
    let values: Vec<f64> = vec![0.0, 1.0, 2.0, 100.0, 7.0, 3.0];
    let signed: Vec<f64> = vec![-128.0, -1.0, 0.0, 1.0, 5.0, 127.0];
    let wide: Vec<f64> = vec![-30000.0, -1.0, 0.0, 1.0, 12345.0, 32767.0];
    let floats: Vec<f64> = vec![-1.5, 0.25, 3.0e10, 0.0, -0.0, 1e-3];
    for (dtype, vals) in [
        (IdxType::U8, &values),
        (IdxType::I8, &signed),
        (IdxType::I16, &wide),
        (IdxType::I32, &wide),
        (IdxType::F32, &floats),
        (IdxType::F64, &floats),
    ] {
        let p = d.path().join(format!("{dtype:?}.idx"));
        write_idx(&p, dtype, &[2, 3], vals).unwrap();
        let gz = d.path().join(format!("{dtype:?}.idx.gz"));
        std::fs::write(&gz, gzip(&std::fs::read(&p).unwrap())).unwrap();
        // gzip is recognised by its magic bytes, not the name
        let gz_no_ext = d.path().join(format!("{dtype:?}-gz-data"));
        std::fs::copy(&gz, &gz_no_ext).unwrap();
        for f in [&p, &gz, &gz_no_ext] {
            let a = read_idx(f).unwrap();
            assert_eq!(a.dtype, dtype);
            assert_eq!(a.shape, [2, 3]);
            let want: Vec<f32> = vals.iter().map(|v| *v as f32).collect();
            assert_eq!(a.data, want, "{dtype:?} {}", f.display());
        }
    }
}

#[test]
fn idx_labels_and_images() {
    let d = tempfile::tempdir().unwrap();
    let labels = d.path().join("labels.gz");
    std::fs::write(&labels, gzip(&idx_bytes(0x08, &[5], &[3, 0, 9, 1, 255]))).unwrap();
    assert_eq!(read_idx_labels(&labels).unwrap(), [3, 0, 9, 1, 255]);

    let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| (i * 10) as u8).collect();
    let images = d.path().join("images");
    std::fs::write(&images, idx_bytes(0x08, &[2, 3, 4], &pixels)).unwrap();
    let nchw = read_idx_images(&images, 1.0 / 255.0, 0.0, Layout::Nchw).unwrap();
    assert_eq!(nchw.shape, [2, 1, 3, 4]);
    assert_eq!(nchw.len(), 2);
    let nhwc = read_idx_images(&images, 1.0 / 255.0, 0.0, Layout::Nhwc).unwrap();
    assert_eq!(nhwc.shape, [2, 3, 4, 1]);
    assert_eq!(nchw.data, nhwc.data);
    assert!(close(nchw.sample(1).unwrap()[0], 120.0 / 255.0, 1e-7));
    let centred = read_idx_images(&images, 1.0 / 128.0, -127.0 / 128.0, Layout::Nchw).unwrap();
    assert_eq!(centred.data[0], -127.0 / 128.0);
    assert!(close(centred.data[23], (230.0 - 127.0) / 128.0, 1e-6));

    // labels of another rank or type, images of another rank
    let e = err_text(read_idx_labels(&images));
    assert!(e.contains("images") && e.contains("rank 1"), "{e}");
    let fl = d.path().join("float-labels");
    write_idx(&fl, IdxType::F32, &[2], &[1.0, 2.0]).unwrap();
    assert!(err_text(read_idx_labels(&fl)).contains("must be integers"));
    let neg = d.path().join("neg-labels");
    write_idx(&neg, IdxType::I8, &[2], &[1.0, -2.0]).unwrap();
    assert!(err_text(read_idx_labels(&neg)).contains("negative"));
    let e = err_text(read_idx_images(&labels, 1.0, 0.0, Layout::Nchw));
    assert!(e.contains("labels.gz") && e.contains("rank 3"), "{e}");
    let empty = d.path().join("empty-images");
    std::fs::write(&empty, idx_bytes(0x08, &[0, 28, 28], &[])).unwrap();
    assert!(err_text(read_idx_images(&empty, 1.0, 0.0, Layout::Nchw)).contains("empty"));
    assert_eq!(read_idx(&empty).unwrap().shape, [0, 28, 28]);
}

#[test]
fn hostile_idx_files_are_errors_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let check = |name: &str, bytes: Vec<u8>, want: &str| {
        let p = d.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        let e = err_text(read_idx(&p));
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
        // the same content gzip-compressed
        let gz = d.path().join(format!("{name}.gz"));
        std::fs::write(&gz, gzip(&bytes)).unwrap();
        let e = err_text(read_idx(&gz));
        assert!(e.contains(name) && e.contains(want), "{name}.gz: {e}");
    };
    check(
        "trunc",
        idx_bytes(0x08, &[10, 28, 28], &[0; 100]),
        "truncated IDX data",
    );
    check(
        "trailing",
        idx_bytes(0x08, &[2], &[1, 2, 3]),
        "bytes after the IDX data",
    );
    check(
        "overflow",
        idx_bytes(0x0E, &[u32::MAX, u32::MAX, u32::MAX], &[]),
        "element count overflows",
    );
    check(
        "absurd",
        idx_bytes(0x08, &[60000, 60000, 28], &[0; 16]),
        "more than the limit",
    );
    // within the element limit but far larger than the file: refused before
    // any allocation of that size (plain) or as the stream ends (gzip)
    check(
        "huge",
        idx_bytes(0x0D, &[1 << 15, 1 << 15], &[0; 64]),
        "truncated IDX data",
    );
    check(
        "magic",
        b"\x08\x03\x00\x00\x00\x00\x00\x01".to_vec(),
        "bad magic number",
    );
    check(
        "dtype",
        idx_bytes(0x0A, &[1], &[0]),
        "unknown IDX element type code 0x0a",
    );
    check("rank0", vec![0, 0, 8, 0], "rank 0");
    check(
        "header",
        vec![0, 0, 8, 3, 0, 0, 0, 1, 0, 0],
        "truncated IDX header",
    );
    check("short", vec![0, 0], "shorter than the 4-byte magic");
    check(
        "nan",
        idx_bytes(0x0D, &[2], &[0, 0, 0, 0, 0x7f, 0xc0, 0, 0]),
        "not a finite number",
    );
    check("empty", vec![], "shorter than the 4-byte magic");

    // a gzip stream cut short, and one with a bad checksum
    let good = gzip(&idx_bytes(0x08, &[64], &[7; 64]));
    let cut = d.path().join("cut.gz");
    std::fs::write(&cut, &good[..good.len() - 10]).unwrap();
    let e = err_text(read_idx(&cut));
    assert!(e.contains("cut.gz") && e.contains("gzip data"), "{e}");
    let mut crc = good.clone();
    let n = crc.len();
    crc[n - 8] ^= 0xff; // the CRC32 of the trailer
    let bad_crc = d.path().join("crc.gz");
    std::fs::write(&bad_crc, &crc).unwrap();
    let e = err_text(read_idx(&bad_crc));
    assert!(e.contains("crc.gz") && e.contains("gzip data"), "{e}");

    let e = err_text(read_idx(d.path().join("absent.idx")));
    assert!(e.contains("absent.idx"), "{e}");
}

// ---------------------------------------------------------------- real data

const FASHION: &str = "/usr/share/datasets/fashion-mnist";

/// Needs Debian's dataset-fashion-mnist (`bash fixtures/fetch-images.sh`
/// installs it); ignored so that `cargo test` stays self-contained; the
/// conformance suite runs it with `--ignored`.
#[test]
#[ignore = "needs /usr/share/datasets/fashion-mnist: run bash fixtures/fetch-images.sh"]
fn real_fashion_mnist_test_set() {
    let images = Path::new(FASHION).join("t10k-images-idx3-ubyte.gz");
    let labels = Path::new(FASHION).join("t10k-labels-idx1-ubyte.gz");
    assert!(
        images.exists() && labels.exists(),
        "{} missing: run `bash fixtures/fetch-images.sh`",
        images.display()
    );
    let a = read_idx(&images).unwrap();
    assert_eq!(a.dtype, IdxType::U8);
    assert_eq!(a.shape, [10000, 28, 28]);
    let b = read_idx_images(&images, 1.0 / 255.0, 0.0, Layout::Nhwc).unwrap();
    assert_eq!(b.shape, [10000, 28, 28, 1]);
    assert!(b.data.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(b.data.contains(&1.0));
    let l = read_idx_labels(&labels).unwrap();
    assert_eq!(l.len(), 10000);
    // the test set has 1000 of each of the 10 classes
    let mut counts = [0usize; 10];
    for &c in &l {
        assert!(c < 10, "label {c}");
        counts[c as usize] += 1;
    }
    assert_eq!(counts, [1000; 10]);
}

/// Needs the photos `bash fixtures/fetch-images.sh` puts in
/// `$EDGEC_CACHE/images` (default `~/.cache/edgec/images`).
#[test]
#[ignore = "needs the photos: run bash fixtures/fetch-images.sh"]
fn real_photos_load() {
    let cache = std::env::var_os("EDGEC_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/edgec")
        });
    let root = cache.join("images");
    let mut seen = vec![];
    for split in ["calib", "heldout"] {
        let dir = root.join(split);
        assert!(
            dir.is_dir(),
            "{} missing: run `bash fixtures/fetch-images.sh`",
            dir.display()
        );
        let prep = ImagePrep {
            crops: 4,
            ..ImagePrep::efficientnet_lite(224)
        };
        let loaded = load_images(&dir, &prep).unwrap();
        assert!(
            loaded.files.len() >= 6,
            "{}: {} photos",
            dir.display(),
            loaded.files.len()
        );
        assert_eq!(loaded.batch.shape, [4 * loaded.files.len(), 3, 224, 224]);
        assert!(loaded.batch.data.iter().all(|v| (-1.0..=1.0).contains(v)));
        seen.extend(loaded.files.iter().map(|f| std::fs::read(f).unwrap()));
    }
    // calibration and held-out photos differ
    let n = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), n, "a photo is in both calib/ and heldout/");
}
