//! The pass pipeline: read → passes → write → read back → judge.

pub mod report;
