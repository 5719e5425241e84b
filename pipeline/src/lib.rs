//! The product layer: the four stages a user runs (`data`, `synthesis`, `train`, `eval`),
//! local single-node mode, and the multi-process launcher. It joins the service crates;
//! none of the math or the sandboxing lives here.

#![forbid(unsafe_code)]

pub mod passk;
pub mod report;
