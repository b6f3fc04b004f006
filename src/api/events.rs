//! Live inspections as Server-Sent Events, for the web UI's line view.
//!
//! The stream reads new inspections from the quality store (every 500 ms) rather than from
//! an in-process channel: it then shows the results of every instance that writes to the same
//! database — `linesight run` on the line, `linesight serve` in the office, replicas on
//! PostgreSQL — and a client that reconnects with `Last-Event-ID` resumes after the newest
//! inspection it was sent.
//!
//! An inspection's id is taken when its row is inserted, before its transaction commits, so on
//! PostgreSQL with several writers a smaller id can appear after a larger one was sent. Once a
//! stream has caught up, the ids it skips over are looked up again for a while ([`HOLE_WAIT`],
//! in one query per poll) and sent when they appear, after newer ones; an event's id is always
//! the newest sent. An inspection that commits that late while the client is reconnecting is
//! not sent on the new stream (the web UI reads its counts from the server again anyway).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use utoipa::IntoParams;

use super::auth::{ALL, PassiveCaller};
use super::extract::Query;
use super::inspections::InspectionView;
use super::{ApiError, ApiState};
use crate::store::InspectionFilter;

/// Where the stream starts.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Send inspections after this id first (default: only those recorded from now on, or
    /// after the `Last-Event-ID` header of a reconnecting client).
    pub after_id: Option<i64>,
}

const POLL: Duration = Duration::from_millis(500);
/// How often a live stream checks that its caller is still signed in.
const RECHECK: Duration = Duration::from_secs(5);
const PAGE: i64 = 200;
/// How long an id skipped over is looked for (a transaction that took an id commits within
/// this, or rolled back and never will).
const HOLE_WAIT: Duration = Duration::from_secs(10);
/// Skipped ids looked for at most, the newest: out-of-order commits are of concurrent writers,
/// close to the newest id (a sequence that jumped after a restart leaves a wide gap of ids that
/// will never be used).
const MAX_HOLES: usize = 64;

/// Ids skipped over by the stream, with when they were first missed.
#[derive(Default)]
struct Holes(Vec<(i64, tokio::time::Instant)>);

impl Holes {
    /// `sent` was sent after `last` (the newest before it): the ids between are missing.
    fn after(&mut self, last: i64, sent: i64) {
        if sent <= last {
            self.0.retain(|(id, _)| *id != sent);
            return;
        }
        let now = tokio::time::Instant::now();
        let from = (last + 1).max(sent - MAX_HOLES as i64);
        self.0.extend((from..sent).map(|id| (id, now)));
        if self.0.len() > MAX_HOLES {
            self.0.drain(..self.0.len() - MAX_HOLES);
        }
    }

    /// The ids still worth looking for.
    fn current(&mut self) -> Vec<i64> {
        self.0.retain(|(_, since)| since.elapsed() < HOLE_WAIT);
        self.0.iter().map(|(id, _)| *id).collect()
    }
}

/// New inspections as they are recorded: events named `inspection`, the data an inspection
/// (JSON), the event id its id.
#[utoipa::path(get, path = "/api/v1/events", tag = "inspections", params(EventsQuery),
    responses((status = 200, content_type = "text/event-stream",
        description = "`event: inspection`, `id: <inspection id>`, `data: <Inspection JSON>`")))]
pub(super) async fn events(
    State(state): State<ApiState>,
    PassiveCaller(caller): PassiveCaller,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    caller.require(ALL, "follow inspections")?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    // A browser reconnects to the same URL (with its after_id) and sends the last id it got:
    // resume from the later of the two.
    let start = match q.after_id.max(resume) {
        Some(id) => id,
        None => latest_id(&state).await?,
    };
    let stream = futures_util::stream::unfold(
        (
            state,
            start,
            Vec::<InspectionView>::new().into_iter(),
            (caller, tokio::time::Instant::now(), Holes::default(), false),
        ),
        |(state, mut last, mut pending, (caller, mut checked, mut holes, mut caught_up))| async move {
            let mut stopping = state.stopping.clone();
            loop {
                // The stream ends with the credentials it was opened with: a signed-out or
                // idle session, a revoked token, a locked user (the browser's reconnection
                // then meets the sign-in page).
                if checked.elapsed() >= RECHECK {
                    match caller.still_valid(&state).await {
                        Ok(true) => checked = tokio::time::Instant::now(),
                        Ok(false) => return None,
                        Err(e) => {
                            tracing::warn!(error = %e, "Live view: cannot check the caller's session.");
                            checked = tokio::time::Instant::now();
                        }
                    }
                }
                if let Some(view) = pending.next() {
                    // Catching up from an older id, gaps are ids that will not come (rolled
                    // back, or a sequence that jumped): only the newest page's are looked for.
                    if caught_up {
                        holes.after(last, view.id);
                    }
                    last = last.max(view.id);
                    let event = Event::default()
                        .event("inspection")
                        .id(last.to_string())
                        .json_data(&view)
                        .unwrap_or_else(|_| Event::default().comment("unencodable inspection"));
                    return Some((
                        Ok(event),
                        (state, last, pending, (caller, checked, holes, caught_up)),
                    ));
                }
                if *stopping.borrow() {
                    return None;
                }
                // Skipped ids whose transactions committed since.
                match state.store.inspections_with_ids(&holes.current()).await {
                    Ok(late) if !late.is_empty() => {
                        pending = late
                            .into_iter()
                            .map(InspectionView::from)
                            .collect::<Vec<_>>()
                            .into_iter();
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "Live view: cannot read inspections."),
                }
                let filter = InspectionFilter {
                    after_id: Some(last),
                    limit: PAGE,
                    ..Default::default()
                };
                match state.store.list_inspections(&filter).await {
                    Ok(found) if !found.is_empty() => {
                        // A short page holds the newest there are.
                        caught_up = (found.len() as i64) < PAGE;
                        pending = found
                            .into_iter()
                            .map(InspectionView::from)
                            .collect::<Vec<_>>()
                            .into_iter();
                        continue;
                    }
                    Ok(_) => caught_up = true,
                    Err(e) => tracing::warn!(error = %e, "Live view: cannot read new inspections."),
                }
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = stopped(&mut stopping) => return None,
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Resolves when the service starts stopping (never, if nobody can tell it to).
async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn latest_id(state: &ApiState) -> Result<i64, ApiError> {
    let newest = state
        .store
        .list_inspections(&InspectionFilter {
            limit: 1,
            ..Default::default()
        })
        .await?;
    Ok(newest.first().map_or(0, |r| r.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ids_skipped_over_are_looked_for_until_they_come_or_their_time_is_up() {
        let mut holes = Holes::default();
        holes.after(9, 10);
        assert!(holes.current().is_empty(), "no gap");
        holes.after(10, 13);
        assert_eq!(holes.current(), [11, 12]);
        // 12 committed late: sent after 13, no longer looked for.
        holes.after(13, 12);
        assert_eq!(holes.current(), [11]);
        tokio::time::advance(HOLE_WAIT).await;
        assert!(holes.current().is_empty(), "11 rolled back: given up");
        // A sequence that jumped: only the newest ids below the jump are looked for.
        holes.after(13, 1_000);
        let looked_for = holes.current();
        assert_eq!(looked_for.len(), MAX_HOLES);
        assert_eq!(looked_for.first(), Some(&(1_000 - MAX_HOLES as i64)));
        assert_eq!(looked_for.last(), Some(&999));
    }
}
