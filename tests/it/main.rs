//! Integration tests: one binary (fast linking on two cores), one module per area.

mod api;
mod cameras;
mod cli;
mod common;
mod models;
mod outbox;
mod pipeline;
mod quality;
mod reference;
mod synthetic;
