//! Static analyses of a graph. [`spaces`]: channel spaces, the classes of values that must
//! share one channel indexing, and what widening one of them touches.

pub mod sign;
pub mod spaces;

pub use spaces::{channel_spaces, kept_channels, Consumer, Space, Spaces, Unit};
