//! Layers built from [`Var`](ela_autograd::Var) ops, generic over the backend.
//!
//! | layer | parameters (names under its scope) | init |
//! |---|---|---|
//! | [`Linear`] | `weight [out, in]`, `bias [out]` (optional) | uniform(+-1/sqrt(in)) or normal(std) |
//! | [`Embedding`] | `weight [vocab, dim]` | normal(0, std) |
//! | [`RmsNorm`] | `weight [dim]` | ones |
//! | [`LayerNorm`] | `weight [dim]`, `bias [dim]` (optional) | ones, zeros |
//! | [`SwiGlu`] | `w_gate.weight`, `w_up.weight [hidden, dim]`, `w_down.weight [dim, hidden]` | as Linear |
//! | [`Conv2d`] | `weight [out, in/groups, kh, kw]`, `bias [out]` (optional) | uniform(+-1/sqrt(fan_in)) |
//! | [`BatchNorm2d`] | `weight [c]`, `bias [c]`; buffers `running_mean`, `running_var` | ones, zeros; 0, 1 |
//!
//! [`Rope`] (rotary position embedding) has no parameters. Backward passes come from the
//! autograd of the ops each forward is written with; nothing here has a hand-written gradient.

mod conv;
mod linear;
mod mlp;
mod norm;
mod rope;

pub use conv::{BatchNorm2d, BatchNormConfig, Conv2d, Conv2dConfig};
pub use linear::{Embedding, Linear, LinearConfig, LinearInit};
pub use mlp::SwiGlu;
pub use norm::{LayerNorm, RmsNorm};
pub use rope::{apply_rope, rope_tables, Rope};
