//! A newcomer's first ten minutes, as README.md tells them: `tributary demo` (what
//! `scripts/demo` runs) and the five-minute quickstart. Both run on the embedded cluster, so
//! these tests need no broker; they spawn the built `tributary` binary
//! (`cargo build --bin tributary` first).
//!
//! Run: `cargo test -p integration-tests --test newcomer`.

mod demo;
mod quickstart;
