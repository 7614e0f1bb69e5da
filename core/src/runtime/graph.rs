//! The graph interpreter: runs a [`Graph`](crate::Graph) model on candle tensors.
