//! The LLM coding agent: the tools its model may call.

pub mod tools;
