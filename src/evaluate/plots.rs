//! PNG plots for evaluation reports.
