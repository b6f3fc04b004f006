//! The `linesight` binary as a user runs it.
