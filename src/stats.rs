//! Parameter and MAC counts (being written).
