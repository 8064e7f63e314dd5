//! (being written: see models/src/detect/mod.rs)
