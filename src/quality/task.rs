//! Secondary (human) inspection task life cycle as a pure state machine.
//!
//! ```text
//! Pending ──claim──▶ Claimed(by) ──confirm──────────▶ Confirmed
//!    ▲                 │  │ ──override (reason)──▶ OverriddenGood
//!    └────release──────┘  └─escalate (reason)──▶ Escalated ──confirm / override (QA)──▶ …
//! ```
//!
//! Invariants: only the inspector who claimed a task decides it or releases it; an escalated
//! task is decided by a QA approver; overriding a machine reject to good and escalating need a
//! reason; Confirmed and OverriddenGood are final. The number of secondary inspections of one
//! part is capped ([`reinspection_allowed`]) so that a part cannot be re-tested into acceptance.

use serde::{Deserialize, Serialize};

use super::{Role, TransitionError};

/// Where a secondary-inspection task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    Claimed,
    Escalated,
    /// The inspector confirmed the defect.
    Confirmed,
    /// The inspector found the part good.
    OverriddenGood,
}

impl TaskState {
    pub const ALL: [TaskState; 5] = [
        TaskState::Pending,
        TaskState::Claimed,
        TaskState::Escalated,
        TaskState::Confirmed,
        TaskState::OverriddenGood,
    ];

    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Confirmed | TaskState::OverriddenGood)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Claimed => "claimed",
            TaskState::Escalated => "escalated",
            TaskState::Confirmed => "confirmed",
            TaskState::OverriddenGood => "overridden_good",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// How a task's `task.open` audit entry describes it; the records check compares the task with
/// the same text.
pub fn opening_text(inspection_id: i64, part_id: &str) -> String {
    format!("state=pending; inspection={inspection_id}; part={part_id}")
}

/// How a task's audit entries describe its state after a change; the records check compares
/// the task with the same text.
pub fn state_text(state: TaskState, claimed_by: Option<i64>) -> String {
    format!(
        "state={}; claimed_by={}",
        state.as_str(),
        claimed_by.map_or("-".into(), |u| u.to_string())
    )
}

/// A request to move a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskAction {
    Claim,
    Release,
    ConfirmDefect,
    OverrideGood,
    Escalate,
}

impl TaskAction {
    pub const ALL: [TaskAction; 5] = [
        TaskAction::Claim,
        TaskAction::Release,
        TaskAction::ConfirmDefect,
        TaskAction::OverrideGood,
        TaskAction::Escalate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TaskAction::Claim => "claim",
            TaskAction::Release => "release",
            TaskAction::ConfirmDefect => "confirm_defect",
            TaskAction::OverrideGood => "override_good",
            TaskAction::Escalate => "escalate",
        }
    }

    pub fn parse(s: &str) -> Option<TaskAction> {
        TaskAction::ALL.into_iter().find(|a| a.name() == s)
    }

    pub fn needs_reason(self) -> bool {
        matches!(self, TaskAction::OverrideGood | TaskAction::Escalate)
    }
}

/// Who asks and why.
#[derive(Debug, Clone, Copy)]
pub struct TaskContext<'a> {
    pub user_id: i64,
    pub role: Role,
    /// The user holding the claim, if any.
    pub claimed_by: Option<i64>,
    pub reason: Option<&'a str>,
}

/// The state an action leads to from `from`, ignoring who asks.
pub fn target(from: TaskState, action: TaskAction) -> Option<TaskState> {
    use TaskAction as A;
    use TaskState as S;
    match (from, action) {
        (S::Pending, A::Claim) => Some(S::Claimed),
        (S::Claimed, A::Release) => Some(S::Pending),
        (S::Claimed | S::Escalated, A::ConfirmDefect) => Some(S::Confirmed),
        (S::Claimed | S::Escalated, A::OverrideGood) => Some(S::OverriddenGood),
        (S::Claimed, A::Escalate) => Some(S::Escalated),
        _ => None,
    }
}

const INSPECTORS: [Role; 3] = [Role::Inspector, Role::QaApprover, Role::Admin];

/// Applies `action` to a task in state `from`.
pub fn apply(
    from: TaskState,
    action: TaskAction,
    ctx: TaskContext<'_>,
) -> Result<TaskState, TransitionError> {
    let to = target(from, action).ok_or(TransitionError::NotAllowed {
        entity: "a secondary inspection task",
        from: from.as_str(),
        action: action.name(),
    })?;
    let role_ok = match from {
        TaskState::Escalated => ctx.role == Role::QaApprover,
        _ => INSPECTORS.contains(&ctx.role),
    };
    if !role_ok {
        return Err(TransitionError::Forbidden {
            action: action.name(),
            role: ctx.role,
        });
    }
    if from == TaskState::Claimed && ctx.claimed_by != Some(ctx.user_id) {
        // A QA approver may hand back a task whose claimant is away (with a reason, checked
        // below), so that no part waits on an absent inspector; nobody else acts on a claim.
        let freed_by_qa = action == TaskAction::Release && ctx.role == Role::QaApprover;
        if !freed_by_qa {
            return Err(TransitionError::NotClaimant {
                action: action.name(),
            });
        }
        if ctx.claimed_by.is_some() && ctx.reason.is_none_or(|r| r.trim().is_empty()) {
            return Err(TransitionError::ReasonRequired {
                action: "release another inspector's claim",
            });
        }
    }
    if action.needs_reason() && ctx.reason.is_none_or(|r| r.trim().is_empty()) {
        return Err(TransitionError::ReasonRequired {
            action: action.name(),
        });
    }
    Ok(to)
}

/// Whether one more secondary inspection of a part is allowed, given how many it already had.
pub fn reinspection_allowed(previous_tasks: u32, cap: u32) -> bool {
    previous_tasks < cap
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn allowed() -> Vec<(TaskState, TaskAction, TaskState)> {
        use TaskAction as A;
        use TaskState as S;
        vec![
            (S::Pending, A::Claim, S::Claimed),
            (S::Claimed, A::Release, S::Pending),
            (S::Claimed, A::ConfirmDefect, S::Confirmed),
            (S::Claimed, A::OverrideGood, S::OverriddenGood),
            (S::Claimed, A::Escalate, S::Escalated),
            (S::Escalated, A::ConfirmDefect, S::Confirmed),
            (S::Escalated, A::OverrideGood, S::OverriddenGood),
        ]
    }

    fn ctx_for(from: TaskState) -> TaskContext<'static> {
        TaskContext {
            user_id: 7,
            role: if from == TaskState::Escalated {
                Role::QaApprover
            } else {
                Role::Inspector
            },
            claimed_by: Some(7),
            reason: Some("looked under the microscope"),
        }
    }

    #[test]
    fn every_pair_is_allowed_or_refused_as_the_table_says() {
        let table = allowed();
        for from in TaskState::ALL {
            for action in TaskAction::ALL {
                let expected = table
                    .iter()
                    .find(|(f, a, _)| *f == from && *a == action)
                    .map(|t| t.2);
                let got = apply(from, action, ctx_for(from));
                match expected {
                    Some(to) => assert_eq!(got, Ok(to), "{from:?} {action:?}"),
                    None => assert!(
                        matches!(got, Err(TransitionError::NotAllowed { .. })),
                        "{from:?} {action:?} must be refused, got {got:?}"
                    ),
                }
            }
        }
        for s in TaskState::ALL {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
            if s.is_final() {
                assert!(TaskAction::ALL.iter().all(|a| target(s, *a).is_none()));
            }
        }
    }

    #[test]
    fn only_the_claimant_decides_a_claimed_task() {
        for (from, action, _) in allowed() {
            if from != TaskState::Claimed {
                continue;
            }
            for claimed_by in [None, Some(8)] {
                let ctx = TaskContext {
                    claimed_by,
                    ..ctx_for(from)
                };
                assert_eq!(
                    apply(from, action, ctx),
                    Err(TransitionError::NotClaimant {
                        action: action.name()
                    })
                );
            }
        }
        // A QA approver hands back another inspector's claim, saying why; decides nothing.
        let qa = |reason| TaskContext {
            user_id: 9,
            role: Role::QaApprover,
            claimed_by: Some(8),
            reason,
        };
        assert_eq!(
            apply(
                TaskState::Claimed,
                TaskAction::Release,
                qa(Some("on leave"))
            ),
            Ok(TaskState::Pending)
        );
        assert!(matches!(
            apply(TaskState::Claimed, TaskAction::Release, qa(None)),
            Err(TransitionError::ReasonRequired { .. })
        ));
        assert!(matches!(
            apply(TaskState::Claimed, TaskAction::ConfirmDefect, qa(Some("x"))),
            Err(TransitionError::NotClaimant { .. })
        ));
    }

    #[test]
    fn escalated_tasks_are_for_qa_and_operators_do_nothing() {
        for (from, action, to) in allowed() {
            for role in Role::ALL {
                let ctx = TaskContext {
                    role,
                    ..ctx_for(from)
                };
                let expect_ok = if from == TaskState::Escalated {
                    role == Role::QaApprover
                } else {
                    role != Role::Operator
                };
                let got = apply(from, action, ctx);
                if expect_ok {
                    assert_eq!(got, Ok(to));
                } else {
                    assert!(matches!(got, Err(TransitionError::Forbidden { .. })));
                }
            }
        }
    }

    #[test]
    fn override_and_escalate_need_a_reason() {
        for (from, action, _) in allowed() {
            let ctx = TaskContext {
                reason: Some(" "),
                ..ctx_for(from)
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
                assert!(got.is_ok());
            }
        }
    }

    #[test]
    fn reinspection_is_capped() {
        assert!(reinspection_allowed(0, 2));
        assert!(reinspection_allowed(1, 2));
        assert!(!reinspection_allowed(2, 2));
        assert!(!reinspection_allowed(0, 0));
    }

    proptest! {
        #[test]
        fn final_states_are_absorbing(actions in proptest::collection::vec(proptest::sample::select(TaskAction::ALL.to_vec()), 0..40)) {
            let mut state = TaskState::Pending;
            for action in actions {
                let before = state;
                if let Ok(next) = apply(state, action, ctx_for(state)) {
                    prop_assert!(!before.is_final());
                    state = next;
                }
            }
        }
    }
}
