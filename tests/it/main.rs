//! Integration tests: one binary (fast linking on two cores), one module per area.

/// Runs each named `async fn(&Db)` of the calling module once on a fresh SQLite store and once
/// on a fresh PostgreSQL schema (`mod sqlite`, `mod postgres` test modules). Defined before the
/// modules so that every one of them can use it.
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = super::sqlite().await;
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = super::postgres().await;
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}

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
