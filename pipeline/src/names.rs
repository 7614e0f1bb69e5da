//! Enumerations named in recipes and on the command line share one spelling:
//! their serde names. These helpers parse and print them.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Parses `s` as the variant of `T` serde names so; the error lists the names.
pub fn parse_name<T: DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| e.to_string())
}

/// The serde name of a unit variant.
pub fn name_of<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}
