//! Tensors a sequential calibration has already encoded, kept in a
//! temporary file until the writer lays them out.
//!
//! A 4-bit 7B model is about 4 GB of encoded bytes: held in memory they
//! would be most of the sweep's peak, which is meant to be one layer. The
//! file's pages belong to the page cache, not to the process.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Mutex;

use crate::writers::gguf::ErrorStats;

pub struct EncodedStore {
    file: Mutex<File>,
    len: u64,
    index: HashMap<String, Entry>,
}

struct Entry {
    offset: u64,
    len: usize,
    errors: ErrorStats,
}

impl EncodedStore {
    /// An empty store whose file lives in `dir` (the system's temporary
    /// folder without one); the file is gone when the store drops.
    pub fn new(dir: Option<&Path>) -> std::io::Result<Self> {
        let file = match dir {
            Some(d) => tempfile::tempfile_in(d)?,
            None => tempfile::tempfile()?,
        };
        Ok(EncodedStore {
            file: Mutex::new(file),
            len: 0,
            index: HashMap::new(),
        })
    }

    pub fn insert(
        &mut self,
        name: String,
        bytes: &[u8],
        errors: ErrorStats,
    ) -> std::io::Result<()> {
        let file = self.file.get_mut().expect("encoded store lock");
        file.seek(SeekFrom::Start(self.len))?;
        file.write_all(bytes)?;
        self.index.insert(
            name,
            Entry {
                offset: self.len,
                len: bytes.len(),
                errors,
            },
        );
        self.len += bytes.len() as u64;
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// A tensor's bytes and rounding errors, read back from the file.
    pub fn get(&self, name: &str) -> std::io::Result<Option<(Vec<u8>, ErrorStats)>> {
        let Some(e) = self.index.get(name) else {
            return Ok(None);
        };
        let mut bytes = vec![0u8; e.len];
        let mut file = self.file.lock().expect("encoded store lock");
        file.seek(SeekFrom::Start(e.offset))?;
        file.read_exact(&mut bytes)?;
        Ok(Some((bytes, e.errors)))
    }

    /// Bytes stored, all tensors together.
    pub fn bytes(&self) -> u64 {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_come_back_as_stored() {
        let mut s = EncodedStore::new(None).unwrap();
        let e = ErrorStats::default();
        s.insert("a".into(), &[1, 2, 3], e).unwrap();
        s.insert("b".into(), &[9; 1000], e).unwrap();
        assert_eq!(s.get("a").unwrap().unwrap().0, vec![1, 2, 3]);
        assert_eq!(s.get("b").unwrap().unwrap().0, vec![9; 1000]);
        assert!(s.get("c").unwrap().is_none());
        assert!(s.contains("b") && !s.contains("c"));
        assert_eq!(s.bytes(), 1003);
    }
}
