//! Tokenizer conversion between Hugging Face `tokenizer.json` and the IR's
//! [`edgec_core::Vocab`] (llama.cpp's form).
