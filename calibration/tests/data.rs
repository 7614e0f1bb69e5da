//! Data files: what is read, and a clear error naming the file for each bad one.

use std::path::{Path, PathBuf};

use edgec_calibration::{
    read_jsonl_sentences, read_text, token_chunks, CalibrationError, TextTokenizer,
};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn err_text<T: std::fmt::Debug>(r: Result<T, CalibrationError>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn text_is_read_as_llama_cpp_reads_it() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "a.txt", "Hello\nworld\n\n".as_bytes());
    // one trailing newline dropped, as llama.cpp's -f
    assert_eq!(read_text(&p).unwrap(), "Hello\nworld\n");
    let p = write(d.path(), "b.txt", "café ☕".as_bytes());
    assert_eq!(read_text(&p).unwrap(), "café ☕");
}

#[test]
fn missing_file_names_the_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("nope.txt");
    let e = err_text(read_text(&p));
    assert!(e.starts_with(&p.display().to_string()), "{e}");
    assert!(e.contains("No such file"), "{e}");
    let e = err_text(read_jsonl_sentences(&p));
    assert!(e.contains("nope.txt"), "{e}");
}

#[test]
fn empty_file_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "empty.txt", b"");
    let e = err_text(read_text(&p));
    assert_eq!(e, format!("{}: the file is empty", p.display()));
    let p = write(d.path(), "blank.txt", b" \n\n\t\n");
    let e = err_text(read_text(&p));
    assert!(
        e.starts_with(&p.display().to_string()) && e.contains("only whitespace"),
        "{e}"
    );
}

#[test]
fn binary_file_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "model.bin", b"GGUF\x03\x00\x00\x00rest");
    let e = err_text(read_text(&p));
    assert_eq!(
        e,
        format!(
            "{}: a binary file, not text (NUL byte at byte 5)",
            p.display()
        )
    );
    let e = err_text(read_jsonl_sentences(&p));
    assert!(e.contains("binary"), "{e}");
}

#[test]
fn non_utf8_text_names_the_byte() {
    let d = tempfile::tempdir().unwrap();
    // Latin-1 "café"
    let p = write(d.path(), "latin1.txt", b"caf\xe9 au lait");
    let e = err_text(read_text(&p));
    assert_eq!(e, format!("{}: not UTF-8 text at byte 3", p.display()));
}

#[test]
fn fewer_tokens_than_one_chunk_is_a_typed_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-llama");
    let model = edgec_formats::read_model(&dir).unwrap();
    let tk = TextTokenizer::from_vocab(model.meta.vocab.as_ref().unwrap()).unwrap();
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "short.txt", b"Just a few words.\n");
    let text = read_text(&p).unwrap();
    let tokens = tk.encode(&text, tk.add_bos()).unwrap();
    let err = token_chunks(&tokens, 512, None).unwrap_err();
    match &err {
        CalibrationError::TooFewTokens { tokens: n, n_ctx } => {
            assert_eq!(*n, tokens.len());
            assert_eq!(*n_ctx, 512);
        }
        other => panic!("{other:?}"),
    }
    // what the CLI prints, with the file's name
    let msg = format!("{}: {err}", p.display());
    assert_eq!(
        msg,
        format!(
            "{}: {} tokens, fewer than one chunk of 512",
            p.display(),
            tokens.len()
        )
    );
    // enough tokens for chunks of 4
    let chunks = token_chunks(&tokens, 4, None).unwrap();
    assert_eq!(chunks.len(), tokens.len() / 4);
}

#[test]
fn jsonl_sentences() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "s.jsonl",
        "\u{feff}{\"text\": \"first\", \"label\": 1}\n\n  \"second\"  \r\n{\"id\": 3, \"text\": \"third ☕\"}\n"
            .as_bytes(),
    );
    assert_eq!(
        read_jsonl_sentences(&p).unwrap(),
        vec!["first", "second", "third ☕"]
    );
}

#[test]
fn jsonl_errors_name_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "bad.jsonl",
        b"{\"text\": \"ok\"}\n\n{\"text\": oops}\n",
    );
    let e = err_text(read_jsonl_sentences(&p));
    assert!(
        e.starts_with(&format!("{}:3: invalid JSON", p.display())),
        "{e}"
    );
    let p = write(d.path(), "notext.jsonl", b"{\"sentence\": \"x\"}\n");
    let e = err_text(read_jsonl_sentences(&p));
    assert_eq!(
        e,
        format!("{}:1: the object has no \"text\" field", p.display())
    );
    let p = write(d.path(), "num.jsonl", b"\"a\"\n{\"text\": 5}\n");
    let e = err_text(read_jsonl_sentences(&p));
    assert_eq!(
        e,
        format!("{}:2: \"text\" is a number, not a string", p.display())
    );
    let p = write(d.path(), "arr.jsonl", b"[1, 2]\n");
    let e = err_text(read_jsonl_sentences(&p));
    assert!(
        e.starts_with(&format!("{}:1: expected", p.display())),
        "{e}"
    );
}
