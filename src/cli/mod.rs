//! The command line's own tools, built on the library: the data generator (`tributary
//! generate`) and the embedded-cluster demo (`tributary demo`).

pub mod demo;
pub mod generate;
