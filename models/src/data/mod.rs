//! Training data: the embedded default corpus, the byte-level tokenizer, and a seeded loader
//! that splits text into train/validation and draws batches of windows.

pub mod corpus;
pub mod loader;
pub mod tokenizer;

pub use corpus::default_corpus;
pub use loader::{Batch, TextDataset};
pub use tokenizer::ByteTokenizer;
