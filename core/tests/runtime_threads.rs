//! `RuntimeOptions::threads`, in its own test binary because it sets
//! process-wide thread settings.

use std::path::PathBuf;

use edgec_core::runtime::{Runtime, RuntimeOptions};

#[test]
fn thread_count_does_not_change_logits() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-qwen2");
    let model = edgec_formats::read_model(&dir).unwrap();
    let toks: Vec<u32> = (0..70u32).map(|i| (i * 37 + 5) % 512).collect();
    let run = |threads| {
        let rt = Runtime::new(
            &model,
            &RuntimeOptions {
                threads,
                quantized_matmul: true,
            },
        )
        .unwrap();
        rt.logits(&toks).unwrap()
    };
    let one = run(Some(1));
    let three = run(Some(3));
    let default = run(None);
    assert_eq!(one.len(), 70 * 512);
    let diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    assert!(diff(&one, &three) < 1e-5, "{}", diff(&one, &three));
    assert!(diff(&one, &default) < 1e-5);
    assert!(matches!(
        Runtime::new(
            &model,
            &RuntimeOptions {
                threads: Some(0),
                quantized_matmul: true
            }
        ),
        Err(edgec_core::runtime::RuntimeError::Threads(_))
    ));
}
