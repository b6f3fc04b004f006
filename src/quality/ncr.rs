//! Non-conformance record (NCR) life cycle as a pure state machine.
//!
//! ```text
//! Open ──contain──▶ Contained ──investigate──▶ UnderInvestigation ──propose──▶ DispositionProposed
//!                                                   ▲                               │  │
//!                                                   └────────reject (reason)────────┘  │ approve (QA e-signature)
//!                                                                                      ▼
//!   Cancelled ◀──cancel (reason)── any open state          Closed ◀──close── Approved
//!   Closed / Cancelled ──reopen (reason)──▶ Reopened ──contain / investigate──▶ …
//! ```
//!
//! Invariants: every transition not drawn above is refused with [`TransitionError`]; cancelling,
//! reopening and rejecting a proposed disposition need a non-blank reason; approval needs a
//! QA approver and a valid electronic signature (checked by the caller, stated here as
//! [`NcrContext::signed`]); an NCR is *open* — and blocks the release of its lot — until it is
//! Closed or Cancelled.

use serde::{Deserialize, Serialize};

use super::{Role, TransitionError};

/// Where an NCR stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NcrState {
    Open,
    /// Suspect product is on hold.
    Contained,
    UnderInvestigation,
    DispositionProposed,
    /// QA approved the disposition with an electronic signature.
    Approved,
    Closed,
    Cancelled,
    Reopened,
}

impl NcrState {
    pub const ALL: [NcrState; 8] = [
        NcrState::Open,
        NcrState::Contained,
        NcrState::UnderInvestigation,
        NcrState::DispositionProposed,
        NcrState::Approved,
        NcrState::Closed,
        NcrState::Cancelled,
        NcrState::Reopened,
    ];

    /// An open NCR blocks the release of its lot.
    pub fn is_open(self) -> bool {
        !matches!(self, NcrState::Closed | NcrState::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NcrState::Open => "open",
            NcrState::Contained => "contained",
            NcrState::UnderInvestigation => "under_investigation",
            NcrState::DispositionProposed => "disposition_proposed",
            NcrState::Approved => "approved",
            NcrState::Closed => "closed",
            NcrState::Cancelled => "cancelled",
            NcrState::Reopened => "reopened",
        }
    }

    pub fn parse(s: &str) -> Option<NcrState> {
        NcrState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// What is to be done with the non-conforming product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    UseAsIs,
    Rework,
    Scrap,
    ReturnToVendor,
}

impl Disposition {
    pub const ALL: [Disposition; 4] = [
        Disposition::UseAsIs,
        Disposition::Rework,
        Disposition::Scrap,
        Disposition::ReturnToVendor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::UseAsIs => "use_as_is",
            Disposition::Rework => "rework",
            Disposition::Scrap => "scrap",
            Disposition::ReturnToVendor => "return_to_vendor",
        }
    }

    pub fn parse(s: &str) -> Option<Disposition> {
        Disposition::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// How an NCR's `ncr.create` audit entry describes it (the description is the entry's
/// reason); the records check compares the NCR with the same text.
pub fn creation_text(lot: &str, line: &str, source: &str, title: &str) -> String {
    format!("state=open; lot={lot}; line={line}; source={source}; title={title}")
}

/// How an NCR's transition entries describe its state (a signed transition adds
/// `; signed: …`); the records check compares the NCR with the same text. Strings, so that a
/// record's columns are compared as they are, whatever they hold.
pub fn state_text(state: &str, disposition: Option<&str>) -> String {
    format!("state={state}; disposition={}", disposition.unwrap_or("-"))
}

/// A request to move an NCR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NcrAction {
    Contain,
    Investigate,
    Propose(Disposition),
    /// QA sends a proposed disposition back to investigation.
    RejectDisposition,
    Approve,
    Close,
    Cancel,
    Reopen,
}

impl NcrAction {
    /// Every action (each disposition once).
    pub fn all() -> Vec<NcrAction> {
        let mut v = vec![
            NcrAction::Contain,
            NcrAction::Investigate,
            NcrAction::RejectDisposition,
            NcrAction::Approve,
            NcrAction::Close,
            NcrAction::Cancel,
            NcrAction::Reopen,
        ];
        v.extend(Disposition::ALL.map(NcrAction::Propose));
        v
    }

    pub fn name(self) -> &'static str {
        match self {
            NcrAction::Contain => "contain",
            NcrAction::Investigate => "investigate",
            NcrAction::Propose(_) => "propose",
            NcrAction::RejectDisposition => "reject_disposition",
            NcrAction::Approve => "approve",
            NcrAction::Close => "close",
            NcrAction::Cancel => "cancel",
            NcrAction::Reopen => "reopen",
        }
    }

    /// Actions that must say why.
    pub fn needs_reason(self) -> bool {
        matches!(
            self,
            NcrAction::Cancel | NcrAction::Reopen | NcrAction::RejectDisposition
        )
    }

    /// Roles allowed to take the action.
    pub fn allowed_roles(self) -> &'static [Role] {
        match self {
            NcrAction::Approve | NcrAction::RejectDisposition => &[Role::QaApprover],
            NcrAction::Cancel | NcrAction::Reopen | NcrAction::Close => {
                &[Role::QaApprover, Role::Admin]
            }
            NcrAction::Contain | NcrAction::Investigate | NcrAction::Propose(_) => {
                &[Role::Inspector, Role::QaApprover, Role::Admin]
            }
        }
    }
}

/// Who asks, why, and whether a valid signature accompanies the request.
#[derive(Debug, Clone, Copy)]
pub struct NcrContext<'a> {
    pub role: Role,
    pub reason: Option<&'a str>,
    /// A valid e-signature with meaning "approved", bound to the NCR's current content.
    pub signed: bool,
}

/// The state an action leads to from `from`, ignoring who asks (the shape of the graph).
pub fn target(from: NcrState, action: NcrAction) -> Option<NcrState> {
    use NcrAction as A;
    use NcrState as S;
    match (from, action) {
        (S::Open | S::Reopened, A::Contain) => Some(S::Contained),
        (S::Contained | S::Reopened, A::Investigate) => Some(S::UnderInvestigation),
        (S::UnderInvestigation, A::Propose(_)) => Some(S::DispositionProposed),
        (S::DispositionProposed, A::RejectDisposition) => Some(S::UnderInvestigation),
        (S::DispositionProposed, A::Approve) => Some(S::Approved),
        (S::Approved, A::Close) => Some(S::Closed),
        (
            S::Open | S::Contained | S::UnderInvestigation | S::DispositionProposed | S::Reopened,
            A::Cancel,
        ) => Some(S::Cancelled),
        (S::Closed | S::Cancelled, A::Reopen) => Some(S::Reopened),
        _ => None,
    }
}

/// Applies `action` to an NCR in state `from`: the new state, or why not.
pub fn apply(
    from: NcrState,
    action: NcrAction,
    ctx: NcrContext<'_>,
) -> Result<NcrState, TransitionError> {
    let to = target(from, action).ok_or(TransitionError::NotAllowed {
        entity: "an NCR",
        from: from.as_str(),
        action: action.name(),
    })?;
    if !action.allowed_roles().contains(&ctx.role) {
        return Err(TransitionError::Forbidden {
            action: action.name(),
            role: ctx.role,
        });
    }
    if action.needs_reason() && ctx.reason.is_none_or(|r| r.trim().is_empty()) {
        return Err(TransitionError::ReasonRequired {
            action: action.name(),
        });
    }
    if action == NcrAction::Approve && !ctx.signed {
        return Err(TransitionError::SignatureRequired {
            action: action.name(),
        });
    }
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The whole table, written out by hand: (from, action) pairs that are allowed.
    fn allowed() -> Vec<(NcrState, NcrAction, NcrState)> {
        use NcrAction as A;
        use NcrState as S;
        let mut v = vec![
            (S::Open, A::Contain, S::Contained),
            (S::Reopened, A::Contain, S::Contained),
            (S::Contained, A::Investigate, S::UnderInvestigation),
            (S::Reopened, A::Investigate, S::UnderInvestigation),
            (
                S::DispositionProposed,
                A::RejectDisposition,
                S::UnderInvestigation,
            ),
            (S::DispositionProposed, A::Approve, S::Approved),
            (S::Approved, A::Close, S::Closed),
            (S::Closed, A::Reopen, S::Reopened),
            (S::Cancelled, A::Reopen, S::Reopened),
        ];
        for d in Disposition::ALL {
            v.push((S::UnderInvestigation, A::Propose(d), S::DispositionProposed));
        }
        for s in [
            S::Open,
            S::Contained,
            S::UnderInvestigation,
            S::DispositionProposed,
            S::Reopened,
        ] {
            v.push((s, A::Cancel, S::Cancelled));
        }
        v
    }

    fn full_ctx(action: NcrAction) -> NcrContext<'static> {
        NcrContext {
            role: action.allowed_roles()[0],
            reason: Some("because"),
            signed: true,
        }
    }

    #[test]
    fn every_pair_is_allowed_or_refused_as_the_table_says() {
        let table = allowed();
        let mut allowed_count = 0;
        for from in NcrState::ALL {
            for action in NcrAction::all() {
                let expected = table
                    .iter()
                    .find(|(f, a, _)| *f == from && *a == action)
                    .map(|t| t.2);
                let got = apply(from, action, full_ctx(action));
                match expected {
                    Some(to) => {
                        allowed_count += 1;
                        assert_eq!(got, Ok(to), "{from:?} --{action:?}-->");
                    }
                    None => assert_eq!(
                        got,
                        Err(TransitionError::NotAllowed {
                            entity: "an NCR",
                            from: from.as_str(),
                            action: action.name()
                        }),
                        "{from:?} --{action:?}--> must be refused"
                    ),
                }
            }
        }
        assert_eq!(allowed_count, table.len());
        assert_eq!(allowed_count, 18);
    }

    #[test]
    fn reasons_are_required_for_cancel_reopen_and_reject() {
        for (from, action, _) in allowed() {
            for reason in [None, Some(""), Some("   ")] {
                let ctx = NcrContext {
                    reason,
                    ..full_ctx(action)
                };
                let got = apply(from, action, ctx);
                if action.needs_reason() {
                    assert_eq!(
                        got,
                        Err(TransitionError::ReasonRequired {
                            action: action.name()
                        })
                    );
                } else {
                    assert!(got.is_ok(), "{from:?} {action:?} {reason:?}");
                }
            }
        }
        assert!(NcrAction::Cancel.needs_reason() && NcrAction::Reopen.needs_reason());
    }

    #[test]
    fn approval_needs_a_signature_and_a_qa_approver() {
        let from = NcrState::DispositionProposed;
        let unsigned = NcrContext {
            role: Role::QaApprover,
            reason: None,
            signed: false,
        };
        assert_eq!(
            apply(from, NcrAction::Approve, unsigned),
            Err(TransitionError::SignatureRequired { action: "approve" })
        );
        for role in [Role::Operator, Role::Inspector, Role::Admin] {
            let ctx = NcrContext {
                role,
                reason: None,
                signed: true,
            };
            assert_eq!(
                apply(from, NcrAction::Approve, ctx),
                Err(TransitionError::Forbidden {
                    action: "approve",
                    role
                })
            );
        }
    }

    #[test]
    fn roles_are_enforced_on_every_allowed_edge() {
        for (from, action, to) in allowed() {
            for role in Role::ALL {
                let ctx = NcrContext {
                    role,
                    ..full_ctx(action)
                };
                let got = apply(from, action, ctx);
                if action.allowed_roles().contains(&role) {
                    assert_eq!(got, Ok(to));
                } else {
                    assert!(
                        matches!(got, Err(TransitionError::Forbidden { .. })),
                        "{role:?} {action:?}"
                    );
                }
            }
        }
        // Operators never move an NCR.
        assert!(
            NcrAction::all()
                .iter()
                .all(|a| !a.allowed_roles().contains(&Role::Operator))
        );
    }

    #[test]
    fn names_round_trip() {
        for s in NcrState::ALL {
            assert_eq!(NcrState::parse(s.as_str()), Some(s));
        }
        for d in Disposition::ALL {
            assert_eq!(Disposition::parse(d.as_str()), Some(d));
        }
        assert_eq!(NcrState::parse("nope"), None);
    }

    fn action_strategy() -> impl Strategy<Value = NcrAction> {
        proptest::sample::select(NcrAction::all())
    }

    proptest! {
        /// Any sequence of requests only ever visits reachable states, and the NCR can only be
        /// closed after an approval.
        #[test]
        fn random_walks_stay_on_the_graph(actions in proptest::collection::vec(action_strategy(), 0..60)) {
            let mut state = NcrState::Open;
            let mut approved_since_open = false;
            for action in actions {
                match apply(state, action, full_ctx(action)) {
                    Ok(next) => {
                        prop_assert_eq!(Some(next), target(state, action));
                        if next == NcrState::Approved { approved_since_open = true; }
                        if next == NcrState::Reopened { approved_since_open = false; }
                        if next == NcrState::Closed { prop_assert!(approved_since_open); }
                        state = next;
                    }
                    Err(_) => prop_assert_eq!(target(state, action), None),
                }
            }
        }
    }
}
