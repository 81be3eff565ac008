//! Small helpers every layer may use; they import nothing else of ours.

pub mod pathser;
pub mod size;
