//! Integration tests: one binary (fast linking on two cores), one module per area.

mod cameras;
mod cli;
mod common;
mod outbox;
mod models;
mod pipeline;
mod quality;
mod reference;
mod synthetic;
