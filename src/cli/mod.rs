//! The command line's own tools, built on the library: the data generator (`tributary
//! generate`), the embedded-cluster demo (`tributary demo`) and the live view of a group
//! (`tributary top`).

pub mod demo;
pub mod generate;
pub mod top;
