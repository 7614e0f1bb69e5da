//! GGUF metadata values (the key/value section of a GGUF file).

/// GGUF value type ids (gguf spec `gguf_metadata_value_type`).
pub mod type_id {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    U64(u64),
    I64(i64),
    F64(f64),
    /// Arrays are homogeneous; `Array` keeps the element type id so that an
    /// empty array round-trips with its type.
    Array(u32, Vec<GgufValue>),
}

impl GgufValue {
    pub fn type_id(&self) -> u32 {
        use type_id::*;
        match self {
            GgufValue::U8(_) => U8,
            GgufValue::I8(_) => I8,
            GgufValue::U16(_) => U16,
            GgufValue::I16(_) => I16,
            GgufValue::U32(_) => U32,
            GgufValue::I32(_) => I32,
            GgufValue::F32(_) => F32,
            GgufValue::Bool(_) => BOOL,
            GgufValue::String(_) => STRING,
            GgufValue::U64(_) => U64,
            GgufValue::I64(_) => I64,
            GgufValue::F64(_) => F64,
            GgufValue::Array(..) => ARRAY,
        }
    }

    pub fn string_array<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> Self {
        GgufValue::Array(
            type_id::STRING,
            items
                .into_iter()
                .map(|s| GgufValue::String(s.into()))
                .collect(),
        )
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// Any integer value that fits in u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v as i64),
            GgufValue::I16(v) => Some(v as i64),
            GgufValue::I32(v) => Some(v as i64),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            GgufValue::F32(v) => Some(v),
            GgufValue::F64(v) => Some(v as f32),
            _ => self.as_i64().map(|v| v as f32),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(_, v) => Some(v),
            _ => None,
        }
    }
}

/// Ordered metadata: GGUF keeps keys in file order and so do we, so that
/// output is byte-identical from run to run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    pub entries: Vec<(String, GgufValue)>,
}

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key`, replacing an earlier value in place.
    pub fn set(&mut self, key: impl Into<String>, value: GgufValue) {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(GgufValue::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(GgufValue::as_u64)
    }

    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key).and_then(GgufValue::as_f32)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(GgufValue::as_bool)
    }
}
