//! Integration tests: one binary (fast linking on two cores), one module per area.

mod api;
mod cli;
mod common;
mod pipeline;
mod quality;
mod reference;
mod synthetic;
