//! Graph to canonical text (being written).
