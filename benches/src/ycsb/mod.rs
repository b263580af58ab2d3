//! Building blocks of the YCSB peer benchmark (`src/bin/ycsb.rs`): the workloads and request
//! distribution, the peers behind one trait, I/O accounting, the physical-floor probe and the
//! SVG chart.

pub mod chart;
pub mod floor;
pub mod io;
pub mod stores;
pub mod workload;
