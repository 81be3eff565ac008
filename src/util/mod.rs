//! Small helpers every layer may use; they import nothing else of ours.

pub mod fat;
pub mod file_stamp;
pub mod json;
pub mod name;
pub mod pathser;
pub mod qemu_opt;
pub mod size;
pub mod stamped;
