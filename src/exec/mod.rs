//! Forward pass (being written).
