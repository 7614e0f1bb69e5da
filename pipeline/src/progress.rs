//! Progress reporting without printing: the library reports through a sink
//! the caller provides (the CLI draws bars on a terminal; tests pass none).

/// A running count of some work.
pub trait Bar: Send + Sync {
    fn inc(&self, n: u64);
    fn set_position(&self, done: u64);
    fn set_message(&self, _message: &str) {}
    fn finish(&self) {}
}

/// How a bar counts: items (tensors, layers, samples) or tokens (with a rate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Items,
    Tokens,
}

/// Where passes report their progress.
pub trait Progress: Send + Sync {
    fn bar(&self, total: u64, what: &str, unit: Unit) -> Box<dyn Bar>;
}

/// Reports nothing.
pub struct Silent;

struct NoBar;

impl Bar for NoBar {
    fn inc(&self, _: u64) {}
    fn set_position(&self, _: u64) {}
}

impl Progress for Silent {
    fn bar(&self, _: u64, _: &str, _: Unit) -> Box<dyn Bar> {
        Box::new(NoBar)
    }
}
