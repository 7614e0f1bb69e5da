//! Stages (one part of a network at a time) against the whole forward pass
//! on the tiny fixtures.

use std::collections::BTreeSet;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use edgec_core::runtime::{Part, Runtime, RuntimeError, RuntimeOptions, Stage};
use edgec_core::{Family, Model};

fn fixture(name: &str) -> Model {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name);
    edgec_formats::read_model(&dir).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

fn family(m: &Model) -> &Family {
    m.meta.family.as_ref().unwrap()
}

fn vocab(m: &Model) -> u32 {
    match family(m) {
        Family::Llama(p) => p.vocab_size as u32,
        Family::Bert(p) => p.vocab_size as u32,
    }
}

fn ids(m: &Model, b: usize, s: usize) -> Tensor {
    let v = vocab(m);
    let ids: Vec<u32> = (0..(b * s) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) % v)
        .collect();
    Tensor::from_vec(ids, (b, s), &Device::Cpu).unwrap()
}

/// A model holding only `part`'s tensors.
fn only(m: &Model, part: Part) -> Model {
    let names: BTreeSet<String> = part.tensors(family(m)).into_iter().collect();
    Model {
        meta: m.meta.clone(),
        tensors: m
            .tensors
            .iter()
            .filter(|t| names.contains(&t.name))
            .cloned()
            .collect(),
        graph: None,
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

const ALL: [&str; 3] = ["tiny-llama", "tiny-qwen2", "tiny-bert"];

#[test]
fn stages_chain_to_the_whole_forward_pass_bit_for_bit() {
    let opts = RuntimeOptions::default();
    for name in ALL {
        let m = fixture(name);
        // llama: more positions than one attention tile (128); bert: all
        // its positions
        let len = if name == "tiny-bert" { 128 } else { 140 };
        let ids = ids(&m, 2, len);
        let want = Runtime::new(&m, &opts).unwrap().forward(&ids).unwrap();
        let mut x = ids.clone();
        for part in Part::all(family(&m)) {
            // each stage from a model that has nothing but its part's tensors
            let part_model = only(&m, part);
            let stage = Stage::new(&part_model, part, &opts)
                .unwrap_or_else(|e| panic!("{name} {part:?}: {e}"));
            assert_eq!(stage.part(), part);
            x = stage.forward(&x).unwrap();
        }
        assert_eq!(x.dims(), want.dims(), "{name}");
        assert!(
            bits(&x) == bits(&want),
            "{name}: stages differ from forward"
        );
    }
}

#[test]
fn head_logits_from_match_logits_batch() {
    let opts = RuntimeOptions::default();
    for name in ["tiny-llama", "tiny-qwen2"] {
        let m = fixture(name);
        let (b, s) = (3, 20);
        let ids = ids(&m, b, s);
        let rows: Vec<Vec<u32>> = (0..b)
            .map(|i| ids.get(i).unwrap().to_vec1::<u32>().unwrap())
            .collect();
        let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        let want = Runtime::new(&m, &opts)
            .unwrap()
            .logits_batch(&refs, s - 1)
            .unwrap();
        let mut x = ids.clone();
        for part in Part::all(family(&m)) {
            if part == Part::Head {
                break;
            }
            x = Stage::new(&m, part, &opts).unwrap().forward(&x).unwrap();
        }
        let head = Stage::new(&m, Part::Head, &opts).unwrap();
        let got = head.logits_from(&x, s - 1).unwrap();
        assert_eq!(got, want, "{name}");
        assert!(head.logits_from(&x, s).is_err());
    }
}

#[test]
fn parts_cover_every_tensor_once_but_a_tied_embedding() {
    for name in ALL {
        let m = fixture(name);
        let f = family(&m);
        let mut seen: Vec<String> = Part::all(f)
            .into_iter()
            .flat_map(|p| p.tensors(f))
            .collect();
        seen.sort();
        let tied = matches!(f, Family::Llama(p) if p.tie_word_embeddings);
        if tied {
            // the head reads the embedding table too
            let i = seen
                .iter()
                .position(|n| n == "model.embed_tokens.weight")
                .unwrap();
            seen.remove(i);
        }
        let mut want: Vec<String> = f.expected_tensors().into_iter().map(|(n, _)| n).collect();
        want.sort();
        assert_eq!(seen, want, "{name}");
    }
    // layer 1's prefix must not take layer 10's tensors
    let m = fixture("tiny-llama");
    assert!(Part::Layer(1)
        .tensors(family(&m))
        .iter()
        .all(|n| n.starts_with("model.layers.1.")));
}

#[test]
fn replaced_weights_are_used() {
    let opts = RuntimeOptions::default();
    let m = fixture("tiny-llama");
    let x = Stage::new(&m, Part::Embeddings, &opts)
        .unwrap()
        .forward(&ids(&m, 1, 9))
        .unwrap();
    let name = "model.layers.0.mlp.down_proj.weight";
    let w = m.tensor(name).unwrap();
    let halved: Vec<f32> = w.to_f32().unwrap().iter().map(|v| v * 0.5).collect();
    let replaced = edgec_core::Tensor::from_f32(name, w.shape.clone(), halved).unwrap();
    let plain = Stage::new(&m, Part::Layer(0), &opts)
        .unwrap()
        .forward(&x)
        .unwrap();
    let swapped = Stage::with_replaced(&m, Part::Layer(0), &opts, std::slice::from_ref(&replaced))
        .unwrap()
        .forward(&x)
        .unwrap();
    // the same as a whole model whose tensor was replaced
    let mut m2 = m.clone();
    for t in &mut m2.tensors {
        if t.name == name {
            *t = replaced.clone();
        }
    }
    let want = Stage::new(&m2, Part::Layer(0), &opts)
        .unwrap()
        .forward(&x)
        .unwrap();
    assert!(bits(&swapped) == bits(&want));
    assert!(bits(&swapped) != bits(&plain));
    // a tensor of another part is refused
    assert!(matches!(
        Stage::with_replaced(&m, Part::Layer(1), &opts, &[replaced]),
        Err(RuntimeError::Input(_))
    ));
}

#[test]
fn bad_stage_inputs_are_errors() {
    let opts = RuntimeOptions::default();
    let m = fixture("tiny-llama");
    assert!(matches!(
        Stage::new(&m, Part::Layer(2), &opts),
        Err(RuntimeError::Input(_))
    ));
    // a model missing the part's tensors
    assert!(matches!(
        Stage::new(&only(&m, Part::Layer(0)), Part::Layer(1), &opts),
        Err(RuntimeError::Model(_))
    ));
    let layer = Stage::new(&m, Part::Layer(0), &opts).unwrap();
    let flat = Tensor::zeros((4, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(layer.forward(&flat).is_err());
    let narrow = Tensor::zeros((1, 4, 63), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(layer.forward(&narrow).is_err());
    assert!(layer.logits_from(&narrow, 0).is_err());
    let emb = Stage::new(&m, Part::Embeddings, &opts).unwrap();
    let out_of_vocab = Tensor::from_vec(vec![600u32], (1, 1), &Device::Cpu).unwrap();
    assert!(emb.forward(&out_of_vocab).is_err());
    // BERT's head passes hidden states through
    let b = fixture("tiny-bert");
    let head = Stage::new(&b, Part::Head, &opts).unwrap();
    let h = Tensor::ones((1, 3, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(bits(&head.forward(&h).unwrap()) == bits(&h));
}
