//! The coding agent: the model client, its tools and the tool loop.

pub mod llm;
pub mod tools;
