//! Quality records against both databases: every test function below runs once on a fresh
//! SQLite file and once on a fresh PostgreSQL schema (`LINESIGHT_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; scripts/test starts the server).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};

use linesight::quality::{
    Disposition, LockoutPolicy, Meaning, NcrAction, NcrState, NewInspection, QualityConfig, Role,
    SignatureError, TaskAction, TaskState, TransitionError, Verdict,
};
use linesight::store::{
    ActivationState, Backend, Credentials, NewModelActivation, NewNcr, NewUser, Store, StoreConfig,
    StoreError, User,
};

pub struct Db {
    pub store: Store,
    pub config: StoreConfig,
    _dir: Option<tempfile::TempDir>,
}

fn pg_url() -> String {
    std::env::var("LINESIGHT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        url: Some(format!("sqlite://{}", dir.path().join("q.db").display())),
        ..StoreConfig::default()
    };
    let store = Store::open(&config).await.expect("SQLite store opens");
    Db {
        store,
        config,
        _dir: Some(dir),
    }
}

pub async fn postgres() -> Db {
    static N: AtomicU32 = AtomicU32::new(0);
    let schema = format!(
        "lt_test_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let admin = StoreConfig {
        url: Some(pg_url()),
        max_connections: 1,
        ..StoreConfig::default()
    };
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&admin.effective_url())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {} is not reachable ({e}); scripts/test starts it",
                pg_url()
            )
        });
    sweep_schemas_of_dead_runs(&pool).await;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let config = StoreConfig {
        pg_schema: Some(schema),
        ..admin
    };
    let config = StoreConfig {
        max_connections: 8,
        ..config
    };
    let store = Store::open(&config).await.expect("PostgreSQL store opens");
    Db {
        store,
        config,
        _dir: None,
    }
}

/// A failed test keeps its schema for inspection; the next run drops those whose test
/// process is gone (the schema name carries its process id).
async fn sweep_schemas_of_dead_runs(pool: &sqlx::AnyPool) {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'lt\\_test\\_%'",
        )
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        for name in names {
            let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .execute(pool)
                    .await;
            }
        }
    })
    .await;
}

impl Db {
    /// A second "service instance": its own pools on the same database.
    pub async fn another_instance(&self) -> Store {
        Store::open(&self.config).await.unwrap()
    }

    pub async fn finish(self) {
        self.store.close().await;
        if let Some(schema) = &self.config.pg_schema {
            let pool = sqlx::AnyPool::connect(&pg_url()).await.unwrap();
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
    }
}

on_both_databases!(
    ncr_workflow_records_every_transition_and_holds_the_lot,
    invalid_transitions_are_refused_and_leave_no_trace,
    signatures_need_the_password_and_bind_to_one_record_version,
    repeated_wrong_passwords_lock_the_account,
    ncrs_hold_their_lot_and_approval_takes_four_eyes_on_the_version_signed,
    a_trigger_gets_one_inspection_and_a_late_answer_keeps_its_verdict,
    audit_trail_refuses_update_and_delete_and_reveals_tampering,
    records_changed_added_or_removed_outside_linesight_are_found,
    task_ncr_and_lot_states_changed_outside_linesight_are_found,
    accounts_tokens_and_model_activations_changed_outside_linesight_are_found,
    web_ui_sessions_added_replaced_or_restored_outside_linesight_are_found,
    inspections_open_tasks_by_the_rules_and_cap_reinspection,
    a_part_found_defective_is_not_re_tested_into_acceptance,
    tasks_are_decided_by_their_claimant_and_critical_defects_raise_ncrs,
    reject_rate_above_the_limit_raises_one_ncr,
    fifty_concurrent_writers_lose_nothing,
    accept_sampling_counts_each_accepted_part_once_under_concurrent_writers,
    two_instances_never_claim_the_same_task,
    images_expire_by_age_and_quota_but_records_keep_their_reference,
    image_rows_are_recorded_with_their_inspection_or_not_at_all,
    an_image_retention_deletes_while_it_is_recorded_again_is_written_again,
    images_recorded_again_concurrently_with_retention_never_lose_their_file,
    files_no_record_names_are_swept_after_the_grace_period,
    api_sessions_tokens_listings_holds_and_attachments,
    accounts_change_passwords_and_are_disabled_and_enabled,
);

const PASSWORD: &str = "s3cret-pass";

fn policy() -> LockoutPolicy {
    LockoutPolicy {
        max_failures: 3,
        lockout_ms: 60_000,
    }
}

async fn user(store: &Store, name: &str, role: Role) -> User {
    store
        .add_user(
            NewUser {
                username: name.into(),
                full_name: format!("{name} Fullname"),
                role,
                password: PASSWORD.into(),
            },
            "test",
        )
        .await
        .unwrap()
}

fn creds(name: &str, password: &str) -> Credentials {
    Credentials {
        username: name.into(),
        password: password.into(),
        client: None,
    }
}

fn new_ncr(lot: &str) -> NewNcr {
    NewNcr {
        lot: lot.into(),
        line: "line-1".into(),
        title: "Scratches on washers".into(),
        description: "Found at final inspection".into(),
    }
}

fn inspection(part: &str, lot: &str, score: f64) -> NewInspection {
    NewInspection {
        part_id: part.into(),
        lot: lot.into(),
        line: "line-1".into(),
        recipe: "washer".into(),
        camera: "cam0".into(),
        model_name: "padim".into(),
        model_sha256: "ab".repeat(32),
        threshold: 0.5,
        score,
        verdict: if score > 0.5 {
            Verdict::Defect
        } else {
            Verdict::Good
        },
        regions_json: "[]".into(),
        image_ref: None,
        overlay_ref: None,
        timings_json: "{\"total_ms\":3.2}".into(),
        source: "automatic".into(),
        defect_class: None,
    }
}

fn no_sampling() -> QualityConfig {
    QualityConfig {
        accept_sampling: false,
        ..QualityConfig::default()
    }
}

/// The chain holds, and every inspection and signature agrees with the entry that recorded it
/// (what `audit verify` checks): the entries verified.
async fn assert_chain_intact(store: &Store) -> u64 {
    let check = store.verify_audit_against(&[]).await.unwrap();
    assert_eq!(check.records.mismatches_total, 0, "{:?}", check.records);
    match check.chain {
        Ok(v) => v.checked,
        Err(b) => panic!("audit chain broken: {b}"),
    }
}

/// Drives an NCR from Open to DispositionProposed.
async fn to_proposed(store: &Store, id: i64, inspector: &User) {
    for action in [
        NcrAction::Contain,
        NcrAction::Investigate,
        NcrAction::Propose(Disposition::Rework),
    ] {
        store
            .transition_ncr(id, inspector, action, None, None)
            .await
            .unwrap();
    }
}

async fn ncr_workflow_records_every_transition_and_holds_the_lot(db: &Db) {
    let s = &db.store;
    let ins = user(s, "ina", Role::Inspector).await;
    let qa = user(s, "quinn", Role::QaApprover).await;
    let ncr = s.create_ncr(&new_ncr("LOT-7"), &ins).await.unwrap();
    assert_eq!(ncr.state, NcrState::Open);

    match s.release_lot("LOT-7", &qa).await {
        Err(StoreError::LotHasOpenNcr { ncrs, .. }) => assert_eq!(ncrs, vec![ncr.id]),
        other => panic!("release with an open NCR must fail, got {other:?}"),
    }
    to_proposed(s, ncr.id, &ins).await;
    let sig = s
        .sign_ncr(
            ncr.id,
            &creds("quinn", PASSWORD),
            Meaning::Approved,
            policy(),
        )
        .await
        .unwrap();
    assert_eq!(sig.full_name, "quinn Fullname");
    let approved = s
        .transition_ncr(ncr.id, &qa, NcrAction::Approve, None, Some(sig.id))
        .await
        .unwrap();
    assert_eq!(approved.state, NcrState::Approved);
    assert_eq!(approved.disposition, Some(Disposition::Rework));
    assert!(
        s.release_lot("LOT-7", &qa).await.is_err(),
        "approved is not closed"
    );
    s.transition_ncr(ncr.id, &qa, NcrAction::Close, None, None)
        .await
        .unwrap();
    s.release_lot("LOT-7", &qa).await.unwrap();

    let history = s.ncr_transitions(ncr.id).await.unwrap();
    let path: Vec<(NcrState, NcrState)> = history.iter().map(|t| (t.from, t.to)).collect();
    assert_eq!(
        path,
        vec![
            (NcrState::Open, NcrState::Contained),
            (NcrState::Contained, NcrState::UnderInvestigation),
            (NcrState::UnderInvestigation, NcrState::DispositionProposed),
            (NcrState::DispositionProposed, NcrState::Approved),
            (NcrState::Approved, NcrState::Closed),
        ]
    );
    assert_eq!(history[3].signature_id, Some(sig.id));
    assert_eq!(history[3].actor_id, qa.id);

    // Reopening needs a reason and puts the lot back on hold.
    let err = s
        .transition_ncr(ncr.id, &qa, NcrAction::Reopen, Some(" "), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Transition(TransitionError::ReasonRequired { .. })
        ),
        "{err}"
    );
    s.transition_ncr(
        ncr.id,
        &qa,
        NcrAction::Reopen,
        Some("customer complaint"),
        None,
    )
    .await
    .unwrap();
    assert!(s.release_lot("LOT-7", &qa).await.is_err());
    let audit = s.audit_for("ncr", &ncr.id.to_string()).await.unwrap();
    let last = audit.last().unwrap();
    assert_eq!(last.action, "ncr.reopen");
    assert_eq!(last.actor, "quinn");
    assert_eq!(last.reason.as_deref(), Some("customer complaint"));
    assert_eq!(
        last.old_value.as_deref(),
        Some("state=closed; disposition=rework")
    );
    assert!(audit.iter().any(|e| {
        e.action == "ncr.approve"
            && e.new_value
                .as_deref()
                .is_some_and(|v| v.contains("signed: quinn Fullname (quinn)"))
    }));
    assert_chain_intact(s).await;
}

async fn ncrs_hold_their_lot_and_approval_takes_four_eyes_on_the_version_signed(db: &Db) {
    let s = &db.store;
    let ins = user(s, "ina", Role::Inspector).await;
    let qa = user(s, "quinn", Role::QaApprover).await;
    let qa2 = user(s, "quade", Role::QaApprover).await;
    let dir = tempfile::tempdir().unwrap();

    // A lot released before an NCR is raised against it is held again, with the NCR as reason.
    s.release_lot("LOT-H", &qa).await.unwrap();
    let ncr = s.create_ncr(&new_ncr("LOT-H"), &ins).await.unwrap();
    let lot = s.lot("LOT-H").await.unwrap();
    assert!(lot.held && lot.released_at_ms.is_none(), "{lot:?}");
    assert_eq!(
        lot.hold_reason.as_deref(),
        Some(format!("NCR {} raised: Scratches on washers", ncr.id).as_str())
    );
    assert_eq!(lot.held_by.as_deref(), Some("ina"));
    let holds = s.audit_for("lot", "LOT-H").await.unwrap();
    let hold = holds.last().unwrap();
    assert_eq!(
        (hold.action.as_str(), hold.old_value.as_deref()),
        ("lot.hold", Some("released"))
    );

    // "Approved" is a QA approver's decision on a proposed disposition, nothing else.
    let approve = |who: &str| creds(who, PASSWORD);
    let err = s
        .sign_ncr(ncr.id, &approve("quinn"), Meaning::Approved, policy())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("proposed disposition only"),
        "{err}"
    );
    to_proposed(s, ncr.id, &ins).await;
    let err = s
        .sign_ncr(ncr.id, &approve("ina"), Meaning::Approved, policy())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Transition(TransitionError::Forbidden { .. })
        ),
        "{err}"
    );
    s.sign_ncr(ncr.id, &approve("ina"), Meaning::Reviewed, policy())
        .await
        .unwrap();

    // Evidence added after a signature makes a new version: that signature no longer approves.
    let early = s
        .sign_ncr(ncr.id, &approve("quinn"), Meaning::Approved, policy())
        .await
        .unwrap();
    let before = s.ncr(ncr.id).await.unwrap().version;
    s.add_attachment(dir.path(), ncr.id, "photo.jpg", "image/jpeg", b"jpeg", &ins)
        .await
        .unwrap();
    assert_eq!(s.ncr(ncr.id).await.unwrap().version, before + 1);
    let err = s
        .transition_ncr(ncr.id, &qa, NcrAction::Approve, None, Some(early.id))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Signature(_)), "{err}");
    // A signature is spent on approval only.
    let sig = s
        .sign_ncr(ncr.id, &approve("quinn"), Meaning::Approved, policy())
        .await
        .unwrap();
    let err = s
        .transition_ncr(
            ncr.id,
            &qa,
            NcrAction::RejectDisposition,
            Some("no"),
            Some(sig.id),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("only approve takes a signature"),
        "{err}"
    );
    s.transition_ncr(ncr.id, &qa, NcrAction::Approve, None, Some(sig.id))
        .await
        .unwrap();
    let err = s
        .add_attachment(dir.path(), ncr.id, "late.jpg", "image/jpeg", b"late", &ins)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is approved"), "{err}");

    // Four eyes: a QA approver who proposed the disposition does not approve it, nor sign it
    // as approved (a signature that stood on the record as an approval they may not give).
    let own = s.create_ncr(&new_ncr("LOT-Q"), &qa).await.unwrap();
    to_proposed(s, own.id, &qa).await;
    let err = s
        .sign_ncr(own.id, &approve("quinn"), Meaning::Approved, policy())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Transition(TransitionError::OwnProposal { .. })
        ),
        "{err}"
    );
    assert!(
        s.ncr_signatures(own.id).await.unwrap().is_empty(),
        "nothing signed"
    );
    // Nor do they cancel it, which would release its lot without the approval; withdrawing
    // their proposal first changes nothing. Another QA approver may.
    for pending in [true, false] {
        if !pending {
            s.transition_ncr(
                own.id,
                &qa,
                NcrAction::RejectDisposition,
                Some("withdrawn"),
                None,
            )
            .await
            .unwrap();
        }
        let err = s
            .transition_ncr(own.id, &qa, NcrAction::Cancel, Some("raised twice"), None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Transition(TransitionError::ProposerCancels { .. })
            ),
            "{err}"
        );
    }
    assert!(
        s.release_lot("LOT-Q", &qa).await.is_err(),
        "the lot stays held"
    );
    s.transition_ncr(
        own.id,
        &qa,
        NcrAction::Propose(Disposition::Rework),
        None,
        None,
    )
    .await
    .unwrap();
    let sig = s
        .sign_ncr(own.id, &approve("quade"), Meaning::Approved, policy())
        .await
        .unwrap();
    s.transition_ncr(own.id, &qa2, NcrAction::Approve, None, Some(sig.id))
        .await
        .unwrap();
    let other = s.create_ncr(&new_ncr("LOT-C"), &qa).await.unwrap();
    to_proposed(s, other.id, &qa).await;
    s.transition_ncr(
        other.id,
        &qa2,
        NcrAction::Cancel,
        Some("raised twice"),
        None,
    )
    .await
    .unwrap();

    // Closing and releasing, then reopening: held again.
    s.transition_ncr(ncr.id, &qa, NcrAction::Close, None, None)
        .await
        .unwrap();
    s.release_lot("LOT-H", &qa).await.unwrap();
    assert!(!s.lot("LOT-H").await.unwrap().held);
    s.transition_ncr(ncr.id, &qa, NcrAction::Reopen, Some("complaint"), None)
        .await
        .unwrap();
    let lot = s.lot("LOT-H").await.unwrap();
    assert!(lot.held && lot.released_at_ms.is_none(), "{lot:?}");
    assert_eq!(
        lot.hold_reason.as_deref(),
        Some(format!("NCR {} reopened: complaint", ncr.id).as_str())
    );
    assert_chain_intact(s).await;
}

async fn a_trigger_gets_one_inspection_and_a_late_answer_keeps_its_verdict(db: &Db) {
    let s = &db.store;
    let cfg = no_sampling();
    // A try that committed although its caller saw an error: the next try records nothing.
    s.journal_trigger("t-1", "press", Some("P1"), Some("L1"), None, 1)
        .await
        .unwrap();
    let new = inspection("P1", "L1", 0.9);
    s.record_inspection_for_trigger(&new, &cfg, "system", Some("t-1"), &[])
        .await
        .unwrap();
    let err = s
        .record_inspection_for_trigger(&new, &cfg, "system", Some("t-1"), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TriggerAnswered { .. }), "{err}");
    assert_eq!(s.inspection_count().await.unwrap(), 1);
    // Answered "late" meanwhile (another instance's orphan scan): the defect is still recorded
    // and the answer stands.
    s.journal_trigger("t-2", "press", Some("P2"), Some("L1"), None, 1)
        .await
        .unwrap();
    s.answer_trigger("t-2", linesight::store::TriggerAnswer::Late, "orphan", 2)
        .await
        .unwrap();
    s.record_inspection_for_trigger(
        &inspection("P2", "L1", 0.9),
        &cfg,
        "system",
        Some("t-2"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(s.inspection_count().await.unwrap(), 2);
    let t = s.trigger("t-2").await.unwrap().unwrap();
    assert_eq!(t.state.as_str(), "late");
}

async fn invalid_transitions_are_refused_and_leave_no_trace(db: &Db) {
    let s = &db.store;
    let ins = user(s, "ina", Role::Inspector).await;
    let op = user(s, "otto", Role::Operator).await;
    let ncr = s.create_ncr(&new_ncr("LOT-1"), &ins).await.unwrap();
    let audit_before = assert_chain_intact(s).await;
    let err = s
        .transition_ncr(ncr.id, &ins, NcrAction::Close, None, None)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "cannot close an NCR in state open");
    let err = s
        .transition_ncr(ncr.id, &op, NcrAction::Contain, None, None)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "role operator may not contain");
    let err = s
        .transition_ncr(ncr.id, &ins, NcrAction::Cancel, None, None)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Transition(TransitionError::Forbidden { .. })
    ));
    assert!(s.ncr_transitions(ncr.id).await.unwrap().is_empty());
    assert_eq!(s.ncr(ncr.id).await.unwrap().version, 0);
    assert_eq!(assert_chain_intact(s).await, audit_before);
    // Approval without a signature.
    to_proposed(s, ncr.id, &ins).await;
    let qa = user(s, "quinn", Role::QaApprover).await;
    let err = s
        .transition_ncr(ncr.id, &qa, NcrAction::Approve, None, None)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Transition(TransitionError::SignatureRequired { .. })
    ));
}

async fn signatures_need_the_password_and_bind_to_one_record_version(db: &Db) {
    let s = &db.store;
    let ins = user(s, "ina", Role::Inspector).await;
    let qa = user(s, "quinn", Role::QaApprover).await;
    let a = s.create_ncr(&new_ncr("LOT-A"), &ins).await.unwrap();
    let b = s.create_ncr(&new_ncr("LOT-B"), &ins).await.unwrap();
    to_proposed(s, a.id, &ins).await;
    to_proposed(s, b.id, &ins).await;

    // Wrong password: no signature.
    let err = s
        .sign_ncr(
            a.id,
            &creds("quinn", "wrong-pass"),
            Meaning::Approved,
            policy(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidCredentials), "{err}");

    // A signature on A cannot approve B.
    let sig_a = s
        .sign_ncr(a.id, &creds("quinn", PASSWORD), Meaning::Approved, policy())
        .await
        .unwrap();
    let err = s
        .transition_ncr(b.id, &qa, NcrAction::Approve, None, Some(sig_a.id))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Signature(SignatureError::OtherRecord { .. })
        ),
        "{err}"
    );
    assert_eq!(
        s.ncr(b.id).await.unwrap().state,
        NcrState::DispositionProposed
    );

    // Copying the signature row onto B in the database does not help either.
    sqlx::query("UPDATE signatures SET record_id = $1 WHERE id = $2")
        .bind(b.id.to_string())
        .bind(sig_a.id)
        .execute(s.raw_pool())
        .await
        .unwrap();
    let err = s
        .transition_ncr(b.id, &qa, NcrAction::Approve, None, Some(sig_a.id))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Signature(SignatureError::Tampered { .. })),
        "{err}"
    );

    // A signature made before the record changed is void.
    let sig_b = s
        .sign_ncr(b.id, &creds("quinn", PASSWORD), Meaning::Approved, policy())
        .await
        .unwrap();
    s.transition_ncr(
        b.id,
        &qa,
        NcrAction::RejectDisposition,
        Some("needs scrap"),
        None,
    )
    .await
    .unwrap();
    s.transition_ncr(
        b.id,
        &ins,
        NcrAction::Propose(Disposition::Scrap),
        None,
        None,
    )
    .await
    .unwrap();
    let err = s
        .transition_ncr(b.id, &qa, NcrAction::Approve, None, Some(sig_b.id))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Signature(SignatureError::RecordChanged { .. })
        ),
        "{err}"
    );

    // The wrong meaning, or someone else's signature, does not count.
    let reviewed = s
        .sign_ncr(b.id, &creds("quinn", PASSWORD), Meaning::Reviewed, policy())
        .await
        .unwrap();
    let err = s
        .transition_ncr(b.id, &qa, NcrAction::Approve, None, Some(reviewed.id))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Signature(SignatureError::WrongMeaning { .. })
    ));
    user(s, "quade", Role::QaApprover).await;
    let by_other = s
        .sign_ncr(b.id, &creds("quade", PASSWORD), Meaning::Approved, policy())
        .await
        .unwrap();
    let err = s
        .transition_ncr(b.id, &qa, NcrAction::Approve, None, Some(by_other.id))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("made by quade"), "{err}");

    // A fresh signature on the current version works, once.
    let good = s
        .sign_ncr(b.id, &creds("quinn", PASSWORD), Meaning::Approved, policy())
        .await
        .unwrap();
    let approved = s
        .transition_ncr(b.id, &qa, NcrAction::Approve, None, Some(good.id))
        .await
        .unwrap();
    assert_eq!(approved.state, NcrState::Approved);
    assert_eq!(approved.disposition, Some(Disposition::Scrap));
    assert_eq!(
        s.signature(good.id).await.unwrap().record_hash,
        sig_hash_of_previous_version(s, b.id).await
    );
    // The trail holds; `audit verify` names the copied signature row, and only it.
    let check = s.verify_audit_against(&[]).await.unwrap();
    assert!(check.chain.is_ok(), "{:?}", check.chain);
    let found: Vec<_> = check
        .records
        .mismatches
        .iter()
        .map(|m| (m.entity.as_str(), m.id))
        .collect();
    assert_eq!(
        found,
        vec![("signature", Some(sig_a.id))],
        "{:?}",
        check.records
    );
}

/// The content hash the approval signature was bound to: the version before approval.
async fn sig_hash_of_previous_version(s: &Store, id: i64) -> String {
    let mut r = s.ncr(id).await.unwrap();
    r.version -= 1;
    r.state = NcrState::DispositionProposed;
    r.content_hash()
}

async fn repeated_wrong_passwords_lock_the_account(db: &Db) {
    let s = &db.store;
    user(s, "ina", Role::Inspector).await;
    for _ in 0..3 {
        let err = s
            .authenticate(&creds("ina", "guess-guess"), policy())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidCredentials), "{err}");
    }
    let err = s
        .authenticate(&creds("ina", PASSWORD), policy())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(
        s.authenticate(&creds("nobody", PASSWORD), policy())
            .await
            .is_err()
    );
    s.unlock_user("ina", "admin", "identity checked by phone")
        .await
        .unwrap();
    let u = s
        .authenticate(&creds("ina", PASSWORD), policy())
        .await
        .unwrap();
    assert_eq!(u.role, Role::Inspector);
    // A success resets the count: two failures do not lock.
    for _ in 0..2 {
        let _ = s.authenticate(&creds("ina", "guess-guess"), policy()).await;
    }
    s.authenticate(&creds("ina", PASSWORD), policy())
        .await
        .unwrap();
    // A lockout ends by itself after lockout_ms.
    user(s, "ivo", Role::Inspector).await;
    let short = LockoutPolicy {
        max_failures: 1,
        lockout_ms: 300,
    };
    let _ = s.authenticate(&creds("ivo", "guess-guess"), short).await;
    assert!(matches!(
        s.authenticate(&creds("ivo", PASSWORD), short).await,
        Err(StoreError::Locked { .. })
    ));
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    s.authenticate(&creds("ivo", PASSWORD), short)
        .await
        .unwrap();

    // Guesses sent at once get no more passwords checked than the limit allows, and the
    // account is locked at the end of the burst.
    user(s, "ada", Role::Inspector).await;
    let burst = (0..24).map(|i| {
        let s = s.clone();
        tokio::spawn(async move {
            s.authenticate(&creds("ada", &format!("guess-{i:04}")), policy())
                .await
        })
    });
    let answers = futures::future::join_all(burst).await;
    let checked = answers
        .iter()
        .filter(|a| matches!(a, Ok(Err(StoreError::InvalidCredentials))))
        .count();
    let refused = answers
        .iter()
        .filter(|a| matches!(a, Ok(Err(StoreError::Locked { .. }))))
        .count();
    assert_eq!(
        (checked, refused),
        (3, 21),
        "guesses checked, and refused as locked, of 24"
    );
    assert!(matches!(
        s.authenticate(&creds("ada", PASSWORD), policy()).await,
        Err(StoreError::Locked { .. })
    ));
    let locks = s.audit_for("user", "ada").await.unwrap();
    assert!(locks.iter().any(|e| e.action == "user.locked"));
    // A client sending more requests at once than the limit, with the right password, is
    // not locked out.
    user(s, "mes", Role::Operator).await;
    let parallel = (0..6).map(|_| {
        let s = s.clone();
        tokio::spawn(async move { s.authenticate(&creds("mes", PASSWORD), policy()).await })
    });
    for answer in futures::future::join_all(parallel).await {
        answer.unwrap().unwrap();
    }

    let audit = s.audit_for("user", "ina").await.unwrap();
    assert!(audit.iter().any(|e| e.action == "user.locked"));
    assert!(audit.iter().any(|e| e.action == "user.unlock"));
    assert!(
        audit
            .iter()
            .all(|e| !e.new_value.as_deref().unwrap_or("").contains("argon2")),
        "no password hash in the audit trail"
    );
    let err = s
        .add_user(
            NewUser {
                username: "ina".into(),
                full_name: "Again".into(),
                role: Role::Admin,
                password: PASSWORD.into(),
            },
            "test",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UserExists(_)));
    // Nobody signs in as the machine that writes the automatic entries.
    let err = s
        .add_user(
            NewUser {
                username: "System".into(),
                full_name: "Sys Admin".into(),
                role: Role::Admin,
                password: PASSWORD.into(),
            },
            "test",
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
}

async fn audit_trail_refuses_update_and_delete_and_reveals_tampering(db: &Db) {
    let s = &db.store;
    let ins = user(s, "ina", Role::Inspector).await;
    for lot in ["L1", "L2", "L3"] {
        s.create_ncr(&new_ncr(lot), &ins).await.unwrap();
    }
    // The user, then each NCR and the hold it puts on its lot.
    let n = assert_chain_intact(s).await;
    assert_eq!(n, 7);
    let err = sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
        .execute(s.raw_pool())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = sqlx::query("DELETE FROM audit_log WHERE seq = 4")
        .execute(s.raw_pool())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    assert_eq!(assert_chain_intact(s).await, 7);

    // Someone with the database owner's rights drops the triggers and edits a row.
    match s.backend() {
        Backend::Sqlite => {
            for t in ["audit_log_no_update", "audit_log_no_delete"] {
                sqlx::query(&format!("DROP TRIGGER {t}"))
                    .execute(s.raw_pool())
                    .await
                    .unwrap();
            }
        }
        Backend::Postgres => {
            sqlx::query("DROP TRIGGER audit_log_no_update_delete ON audit_log")
                .execute(s.raw_pool())
                .await
                .unwrap();
        }
    }
    // The newest entry as an MQTT health message carried it off the site.
    let head = s.audit_head().await.unwrap().expect("entries were written");
    let anchor = linesight::quality::audit::Anchor {
        seq: head.seq,
        hash: head.hash,
    };
    sqlx::query("UPDATE audit_log SET new_value = 'state=closed' WHERE seq = 3")
        .execute(s.raw_pool())
        .await
        .unwrap();
    let b = s.verify_audit().await.unwrap().unwrap_err();
    assert_eq!(b.seq, 3, "{b}");
    assert!(b.problem.contains("altered"), "{b}");

    // Whoever knows how the hashes are made computes the chain again from the altered entry
    // on: a chain that holds, which only the anchor contradicts.
    let mut prev = s.audit_entries(2, 1).await.unwrap().remove(0).hash;
    for mut e in s.audit_entries(3, 100).await.unwrap() {
        e.prev_hash = prev;
        e.hash = e.compute_hash();
        sqlx::query("UPDATE audit_log SET prev_hash = $1, hash = $2 WHERE seq = $3")
            .bind(&e.prev_hash)
            .bind(&e.hash)
            .bind(e.seq)
            .execute(s.raw_pool())
            .await
            .unwrap();
        prev = e.hash;
    }
    assert_eq!(assert_chain_intact(s).await, 7);
    let b = s
        .verify_audit_against(std::slice::from_ref(&anchor))
        .await
        .unwrap()
        .chain
        .unwrap_err();
    assert_eq!(b.seq, 7, "{b}");
    assert!(b.problem.contains("rewritten"), "{b}");

    // The newest entries removed instead.
    sqlx::query("DELETE FROM audit_log WHERE seq >= 6")
        .execute(s.raw_pool())
        .await
        .unwrap();
    let check = s.verify_audit_against(&[]).await.unwrap();
    assert_eq!(check.chain.map(|v| v.checked), Ok(5));
    // The chain that is left holds; the records whose entries went with the tail do not: the
    // third NCR and the hold of its lot.
    assert_eq!(check.records.mismatches_total, 2, "{:?}", check.records);
    assert!(reported(&check.records, "ncr", 3).contains("its audit entries were removed"));
    assert!(
        check
            .records
            .mismatches
            .iter()
            .any(|m| m.entity == "lot" && m.name.as_deref() == Some("L3")),
        "{:?}",
        check.records
    );
    let b = s
        .verify_audit_against(&[anchor])
        .await
        .unwrap()
        .chain
        .unwrap_err();
    assert_eq!(b.seq, 7, "{b}");
    assert!(b.problem.contains("ends at entry 5"), "{b}");
}

/// What the records check says of `entity` `id`; fails when it says nothing.
fn reported(check: &linesight::quality::audit::RecordCheck, entity: &str, id: i64) -> String {
    check
        .mismatches
        .iter()
        .find(|m| m.entity == entity && m.id == Some(id))
        .unwrap_or_else(|| panic!("{entity} {id} not reported: {check:?}"))
        .problem
        .clone()
}

/// What the records check says of the account `name`; fails when it says nothing.
fn reported_user(check: &linesight::quality::audit::RecordCheck, name: &str) -> String {
    check
        .mismatches
        .iter()
        .find(|m| m.entity == "user" && m.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("user {name} not reported: {check:?}"))
        .problem
        .clone()
}

/// What the records check says of lot `name`; fails when it says nothing.
fn reported_lot(check: &linesight::quality::audit::RecordCheck, name: &str) -> String {
    check
        .mismatches
        .iter()
        .find(|m| m.entity == "lot" && m.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("lot {name} not reported: {check:?}"))
        .problem
        .clone()
}

async fn task_ncr_and_lot_states_changed_outside_linesight_are_found(db: &Db) {
    let s = &db.store;
    let cfg = no_sampling();
    let ina = user(s, "ina", Role::Inspector).await;
    let quinn = user(s, "quinn", Role::QaApprover).await;
    // Three rejects, three tasks: one confirmed, one overridden, one left pending.
    for part in ["P1", "P2", "P3"] {
        s.record_inspection(&inspection(part, "L1", 0.9), &cfg, "system")
            .await
            .unwrap();
    }
    let confirmed = s.claim_next_task(&ina).await.unwrap().unwrap();
    s.act_on_task(confirmed.id, &ina, TaskAction::ConfirmDefect, None, &cfg)
        .await
        .unwrap();
    let overridden = s.claim_next_task(&ina).await.unwrap().unwrap();
    s.act_on_task(
        overridden.id,
        &ina,
        TaskAction::OverrideGood,
        Some("dust on the lens"),
        &cfg,
    )
    .await
    .unwrap();
    let pending = overridden.id + 1;
    // NCRs: one worked to a proposed disposition, one with an attachment, one to be deleted.
    let worked = s.create_ncr(&new_ncr("LOT-A"), &ina).await.unwrap();
    to_proposed(s, worked.id, &ina).await;
    let attached = s.create_ncr(&new_ncr("LOT-B"), &ina).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = s
        .add_attachment(
            dir.path(),
            attached.id,
            "photo.jpg",
            "image/jpeg",
            b"jpeg",
            &ina,
        )
        .await
        .unwrap();
    let deleted = s.create_ncr(&new_ncr("LOT-C"), &ina).await.unwrap();
    // One approved with QA's signature, and a signature of QA's on another NCR.
    let approved = s.create_ncr(&new_ncr("LOT-D"), &ina).await.unwrap();
    to_proposed(s, approved.id, &ina).await;
    let signature = s
        .sign_ncr(
            approved.id,
            &creds("quinn", PASSWORD),
            Meaning::Approved,
            policy(),
        )
        .await
        .unwrap();
    s.transition_ncr(
        approved.id,
        &quinn,
        NcrAction::Approve,
        None,
        Some(signature.id),
    )
    .await
    .unwrap();
    let other = s
        .sign_ncr(
            worked.id,
            &creds("quinn", PASSWORD),
            Meaning::Approved,
            policy(),
        )
        .await
        .unwrap();
    // Lots: one held by hand, one held and released.
    s.hold_lot("LOT-H", &quinn, "seal suspect").await.unwrap();
    s.hold_lot("LOT-R", &quinn, "label check").await.unwrap();
    s.release_lot("LOT-R", &quinn).await.unwrap();

    let check = s.verify_records().await.unwrap();
    assert_eq!(
        (
            check.tasks,
            check.ncrs,
            check.attachments,
            check.lots,
            check.mismatches_total
        ),
        (3, 4, 1, 6, 0),
        "{check:?}"
    );

    // Changed in the tables, as someone with the database's password could; the audit trail
    // itself stays intact.
    let raw = |sql: String| async move {
        sqlx::query(&sql).execute(s.raw_pool()).await.unwrap();
    };
    raw(format!(
        "UPDATE tasks SET state = 'overridden_good', decision_reason = 'fine' WHERE id = {}",
        confirmed.id
    ))
    .await;
    raw(format!(
        "UPDATE tasks SET decided_by = {} WHERE id = {}",
        quinn.id, overridden.id
    ))
    .await;
    raw(format!(
        "INSERT INTO tasks (inspection_id, part_id, lot, opening_reason, state, version, created_at_ms, updated_at_ms) \
         SELECT inspection_id, part_id, lot, opening_reason, 'pending', 0, created_at_ms, updated_at_ms \
         FROM tasks WHERE id = {}",
        confirmed.id
    ))
    .await;
    raw(format!("DELETE FROM tasks WHERE id = {pending}")).await;
    raw(format!(
        "UPDATE ncrs SET state = 'closed', disposition = 'use_as_is' WHERE id = {}",
        worked.id
    ))
    .await;
    raw(format!(
        "UPDATE ncr_transitions SET reason = 'agreed by phone', actor_id = {} \
         WHERE ncr_id = {} AND action = 'contain'",
        quinn.id, worked.id
    ))
    .await;
    raw(format!(
        "UPDATE ncrs SET title = 'Cosmetic only' WHERE id = {}",
        attached.id
    ))
    .await;
    raw(format!(
        "UPDATE ncr_attachments SET sha256 = '{}' WHERE id = {}",
        "0".repeat(64),
        file.id
    ))
    .await;
    raw(format!("DELETE FROM ncrs WHERE id = {}", deleted.id)).await;
    // The approval made to rest on the signature given to the other NCR.
    raw(format!(
        "UPDATE ncr_transitions SET signature_id = {} WHERE ncr_id = {} AND action = 'approve'",
        other.id, approved.id
    ))
    .await;
    raw(format!(
        "UPDATE lots SET held_at_ms = NULL, held_by = NULL, hold_reason = NULL, released_at_ms = 1, \
         released_by = {} WHERE lot = 'LOT-H'",
        quinn.id
    ))
    .await;
    raw("DELETE FROM lots WHERE lot = 'LOT-R'".into()).await;
    raw(format!(
        "INSERT INTO lots (lot, released_at_ms, released_by) VALUES ('LOT-X', 1, {})",
        quinn.id
    ))
    .await;
    assert!(s.verify_audit().await.unwrap().is_ok(), "the chain holds");

    let check = s.verify_records().await.unwrap();
    assert_eq!(
        (check.tasks, check.ncrs, check.lots, check.mismatches_total),
        (4, 4, 7, 12),
        "{check:?}"
    );
    let task = |id: i64| reported(&check, "task", id);
    let changed = task(confirmed.id);
    assert!(
        changed.contains(&format!(
            "\"state=overridden_good; claimed_by={}\" in the record, \"state=confirmed; claimed_by={}\" in the trail",
            ina.id, ina.id
        )) && changed.contains("decision reason \"fine\" in the record, nothing in the trail")
            && changed.ends_with("altered outside linesight"),
        "{changed}"
    );
    assert!(
        task(overridden.id).contains("decided by \"quinn\" in the record, \"ina\" in the trail"),
        "{check:?}"
    );
    assert!(task(pending).contains("removed outside linesight"));
    let added = confirmed.id.max(pending) + 1;
    assert!(task(added).contains("added outside linesight"), "{check:?}");

    let ncr = |id: i64| reported(&check, "ncr", id);
    let closed = ncr(worked.id);
    assert!(
        closed.contains(
            "\"state=closed; disposition=use_as_is\" in the record, \"state=disposition_proposed; disposition=rework\" in the trail"
        ) && closed.contains("reason \"agreed by phone\" in the record, nothing in the trail")
            && closed.contains("by \"quinn\" in the record, \"ina\" in the trail"),
        "{closed}"
    );
    assert!(
        ncr(attached.id).contains("title=Cosmetic only"),
        "{check:?}"
    );
    assert!(ncr(deleted.id).contains("removed outside linesight"));
    let resigned = ncr(approved.id);
    assert!(
        resigned.contains(&format!(
            "signature {} signs ncr {}, not this NCR",
            other.id, worked.id
        )),
        "{resigned}"
    );
    assert!(
        reported(&check, "attachment", file.id).contains(&format!("sha256={}", "0".repeat(64))),
        "{check:?}"
    );
    assert!(
        reported_lot(&check, "LOT-H")
            .starts_with("\"released\" in the record, \"held\" in the trail"),
        "{check:?}"
    );
    assert!(reported_lot(&check, "LOT-R").contains("removed outside linesight"));
    assert!(reported_lot(&check, "LOT-X").contains("added outside linesight"));
}

/// What the records check says of the web UI session of account `name`; fails when it says
/// nothing.
fn reported_session(check: &linesight::quality::audit::RecordCheck, name: &str) -> String {
    check
        .mismatches
        .iter()
        .find(|m| m.entity == "web UI session" && m.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("session of {name} not reported: {check:?}"))
        .problem
        .clone()
}

async fn web_ui_sessions_added_replaced_or_restored_outside_linesight_are_found(db: &Db) {
    let s = &db.store;
    const IDLE_MS: i64 = 3_600_000;
    let ada = user(s, "ada", Role::Admin).await;
    for (name, role) in [
        ("ina", Role::Inspector),
        ("quinn", Role::QaApprover),
        ("ivo", Role::Inspector),
    ] {
        user(s, name, role).await;
        s.sign_in(&creds(name, PASSWORD), policy(), IDLE_MS)
            .await
            .unwrap();
    }
    // Twice for one account, and once without a password (a tool that vouches for its user).
    s.sign_in(&creds("ina", PASSWORD), policy(), IDLE_MS)
        .await
        .unwrap();
    s.create_session(&ada, IDLE_MS, None).await.unwrap();
    let check = s.verify_records().await.unwrap();
    assert_eq!(
        (check.users, check.sessions, check.mismatches_total),
        (4, 5, 0),
        "{check:?}"
    );
    let sign_ins = s.audit_for("user", "ina").await.unwrap();
    assert!(
        sign_ins
            .iter()
            .filter(|e| e.action == "user.sign_in")
            .all(|e| e.new_value.as_deref().unwrap().contains("; credential=")),
        "{sign_ins:?}"
    );

    // Ivo's session, kept aside, then ended by a password reset.
    let row = |name: &'static str| async move {
        sqlx::query_as::<_, (String, i64, String, i64, i64, i64)>(
            "SELECT s.secret_sha256, s.user_id, s.csrf_token, s.created_at_ms, s.last_seen_ms, s.expires_at_ms \
             FROM api_sessions s JOIN users u ON u.id = s.user_id WHERE u.username = $1",
        )
        .bind(name)
        .fetch_one(s.raw_pool())
        .await
        .unwrap()
    };
    let ivo = row("ivo").await;
    s.reset_password("ivo", "a-t3mporary-pass", "ada", "forgotten")
        .await
        .unwrap();
    let check = s.verify_records().await.unwrap();
    assert_eq!(
        (check.sessions, check.mismatches_total),
        (4, 0),
        "{check:?}"
    );

    // Changed in the table, as someone with the database's password could: Ivo's session
    // put back after the reset ended it, Quinn's secret replaced by one whose cookie somebody
    // else holds, and a session for Ada that no sign-in opened.
    let insert = |(secret, user_id, csrf, created, seen, expires): (
        String,
        i64,
        String,
        i64,
        i64,
        i64,
    )| async move {
        sqlx::query(
            "INSERT INTO api_sessions (secret_sha256, user_id, csrf_token, created_at_ms, last_seen_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(secret)
        .bind(user_id)
        .bind(csrf)
        .bind(created)
        .bind(seen)
        .bind(expires)
        .execute(s.raw_pool())
        .await
        .unwrap();
    };
    insert(ivo.clone()).await;
    sqlx::query(
        "UPDATE api_sessions SET secret_sha256 = $1 WHERE user_id = (SELECT id FROM users WHERE username = 'quinn')",
    )
    .bind("b".repeat(64))
    .execute(s.raw_pool())
    .await
    .unwrap();
    insert(("c".repeat(64), ada.id, "x".into(), ivo.3 - 1, ivo.4, ivo.5)).await;
    assert!(s.verify_audit().await.unwrap().is_ok(), "the chain holds");

    let check = s.verify_records().await.unwrap();
    assert_eq!(
        (check.sessions, check.mismatches_total),
        (6, 3),
        "{check:?}"
    );
    assert!(
        reported_session(&check, "ivo").contains("(user.password_reset) ended every session of the account after that: it was restored outside linesight"),
        "{check:?}"
    );
    assert!(
        reported_session(&check, "quinn")
            .contains("but its secret is not the one the sign-in entry "),
        "{check:?}"
    );
    assert!(
        reported_session(&check, "ada")
            .contains("but no sign-in entry records it: it was added outside linesight"),
        "{check:?}"
    );
    // Ina's two sessions and Ada's own agree; the sessions still work as they are (the check
    // reports, it changes nothing).
    assert!(
        !check
            .mismatches
            .iter()
            .any(|m| m.name.as_deref() == Some("ina")),
        "{check:?}"
    );
}

async fn accounts_tokens_and_model_activations_changed_outside_linesight_are_found(db: &Db) {
    let s = &db.store;
    for (name, role) in [
        ("ada", Role::Admin),
        ("quinn", Role::QaApprover),
        ("ina", Role::Inspector),
        ("olga", Role::Operator),
        ("zed", Role::Operator),
    ] {
        user(s, name, role).await;
    }
    s.add_user_with_temporary_password(
        NewUser {
            username: "ivo".into(),
            full_name: "Ivo Petrov".into(),
            role: Role::Inspector,
            password: PASSWORD.into(),
        },
        "ada",
    )
    .await
    .unwrap();
    s.change_password(&creds("quinn", PASSWORD), "quinn-s-0wn-pass", policy())
        .await
        .unwrap();
    s.reset_password("ina", "a-t3mporary-pass", "ada", "forgotten")
        .await
        .unwrap();
    s.set_user_disabled("olga", true, "ada", "left")
        .await
        .unwrap();
    let (kept, _) = s
        .create_token("ada", "line 3 cell", None, "ada")
        .await
        .unwrap();
    let (revoked, _) = s.create_token("ada", "old MES", None, "ada").await.unwrap();
    s.revoke_token(revoked.id, "ada", "MES replaced")
        .await
        .unwrap();
    let activation = |slot: &str, sha: &str, state: ActivationState| NewModelActivation {
        slot: slot.into(),
        package_path: format!("/models/{sha}"),
        sha256: sha.repeat(64 / sha.len()),
        state,
        reason: (state == ActivationState::Refused).then(|| "golden scores differ".into()),
        actor: "cli:ada".into(),
    };
    let mut made = Vec::new();
    for (slot, sha, state) in [
        ("default", "a1", ActivationState::Active),
        ("default", "b2", ActivationState::Refused),
        ("default", "c3", ActivationState::Active),
        ("blister-10", "d4", ActivationState::Active),
    ] {
        made.push(
            s.record_model_activation(activation(slot, sha, state))
                .await
                .unwrap(),
        );
    }

    let check = s.verify_records().await.unwrap();
    assert_eq!(
        (
            check.users,
            check.tokens,
            check.model_activations,
            check.mismatches_total
        ),
        (6, 2, 4, 0),
        "{check:?}"
    );

    // Changed in the tables, as someone with the database's password could; the audit trail
    // itself stays intact.
    let raw = |sql: String| async move {
        sqlx::query(&sql).execute(s.raw_pool()).await.unwrap();
    };
    raw("UPDATE users SET role = 'admin' WHERE username = 'ina'".into()).await;
    // Quinn's hash replaced by one whose password somebody else knows: they could sign as
    // Quinn.
    raw("UPDATE users SET password_hash = (SELECT password_hash FROM users WHERE username = 'ada') \
         WHERE username = 'quinn'"
        .into())
    .await;
    raw("UPDATE users SET password_change_due = 0 WHERE username = 'ivo'".into()).await;
    raw("UPDATE users SET disabled_at_ms = NULL WHERE username = 'olga'".into()).await;
    raw("DELETE FROM users WHERE username = 'zed'".into()).await;
    raw("INSERT INTO users (username, full_name, role, password_hash, failed_attempts, created_at_ms, \
         password_set_at_ms) SELECT 'mallory', 'M', 'qa_approver', password_hash, 0, created_at_ms, \
         created_at_ms FROM users WHERE username = 'ada'"
        .into())
    .await;
    raw(format!(
        "UPDATE api_tokens SET revoked_at_ms = NULL WHERE id = {}",
        revoked.id
    ))
    .await;
    raw(format!(
        "UPDATE api_tokens SET secret_sha256 = '{}' WHERE id = {}",
        "0".repeat(64),
        kept.id
    ))
    .await;
    raw(format!(
        "INSERT INTO api_tokens (name, secret_sha256, user_id, created_by, created_at_ms) \
         SELECT 'spare', '{}', user_id, created_by, created_at_ms FROM api_tokens WHERE id = {}",
        "1".repeat(64),
        kept.id
    ))
    .await;
    match s.backend() {
        Backend::Sqlite => {
            for t in ["model_activations_no_update", "model_activations_no_delete"] {
                raw(format!("DROP TRIGGER {t}")).await;
            }
        }
        Backend::Postgres => {
            raw("DROP TRIGGER model_activations_no_change ON model_activations".into()).await
        }
    }
    // The recipe's model swapped for another, a refusal deleted, an activation added.
    raw(format!(
        "UPDATE model_activations SET sha256 = '{}' WHERE id = {}",
        "e5".repeat(32),
        made[3].id
    ))
    .await;
    raw(format!(
        "DELETE FROM model_activations WHERE id = {}",
        made[1].id
    ))
    .await;
    raw(format!(
        "INSERT INTO model_activations (slot, package_path, sha256, state, actor, at_ms) \
         VALUES ('default', '/models/f6', '{}', 'active', 'cli:ada', {})",
        "f6".repeat(32),
        made[2].at_ms
    ))
    .await;
    // The first model made the slot's newest active one again: its row moved to the end.
    raw(format!(
        "INSERT INTO model_activations (slot, package_path, sha256, state, actor, at_ms) \
         SELECT slot, package_path, sha256, state, actor, at_ms FROM model_activations WHERE id = {}",
        made[0].id
    ))
    .await;
    raw(format!(
        "DELETE FROM model_activations WHERE id = {}",
        made[0].id
    ))
    .await;
    assert!(s.verify_audit().await.unwrap().is_ok(), "the chain holds");

    let check = s.verify_records().await.unwrap();
    assert_eq!(
        (
            check.users,
            check.tokens,
            check.model_activations,
            check.mismatches_total
        ),
        (7, 3, 6, 14),
        "{check:?}"
    );
    assert!(
        reported_user(&check, "ina").contains(
            "\"full_name=ina Fullname; role=admin\" in the record, \"full_name=ina Fullname; role=inspector\" in the trail"
        ),
        "{check:?}"
    );
    assert!(
        reported_user(&check, "quinn").contains("password hash (fingerprint ")
            && reported_user(&check, "quinn").contains(") not the one entry "),
        "{check:?}"
    );
    assert!(
        reported_user(&check, "ivo")
            .contains("a password change not due in the record, due in the trail"),
        "{check:?}"
    );
    assert!(
        reported_user(&check, "olga").starts_with("enabled in the record, disabled at "),
        "{check:?}"
    );
    assert!(reported_user(&check, "zed").contains("removed outside linesight"));
    assert!(reported_user(&check, "mallory").contains("added outside linesight"));
    let token = |id: i64| reported(&check, "token", id);
    assert!(
        token(revoked.id).starts_with("not revoked in the record, revoked at "),
        "{check:?}"
    );
    assert!(
        token(kept.id).contains("secret digest (fingerprint "),
        "{check:?}"
    );
    assert!(
        token(revoked.id.max(kept.id) + 1).contains("added outside linesight"),
        "{check:?}"
    );
    let activations: Vec<&str> = check
        .mismatches
        .iter()
        .filter(|m| m.entity == "model activation")
        .map(|m| m.problem.as_str())
        .collect();
    assert_eq!(activations.len(), 5, "{check:?}");
    assert!(
        reported(&check, "model activation", made[3].id + 2)
            .contains(&format!("before activation {} (entry ", made[2].id))
            && reported(&check, "model activation", made[3].id + 2)
                .contains("but after it in the table: the order was altered outside linesight"),
        "{check:?}"
    );
    assert!(
        reported(&check, "model activation", made[3].id).contains(&format!(
            "model.activate of {} /models/d4 in slot \"blister-10\"",
            "e5".repeat(32)
        )),
        "{check:?}"
    );
    assert!(
        reported(&check, "model activation", made[3].id + 1)
            .contains("added or altered outside linesight"),
        "{check:?}"
    );
    let lost: Vec<&&str> = activations
        .iter()
        .filter(|p| p.contains("removed or altered outside linesight"))
        .collect();
    assert!(
        lost.len() == 2
            && lost.iter().any(|p| p.contains("model.refuse of b2b2"))
            && lost.iter().any(|p| p.contains("model.activate of d4d4")),
        "{lost:?}"
    );
}

async fn records_changed_added_or_removed_outside_linesight_are_found(db: &Db) {
    let s = &db.store;
    let mut ids = Vec::new();
    // Scores whose text form is long, as a model gives them.
    for (i, score) in [
        0.1234567890123457,
        0.9876543210987654,
        0.3333333333333333,
        0.7,
    ]
    .into_iter()
    .enumerate()
    {
        let r = s
            .record_inspection(
                &inspection(&format!("P{i}"), "L1", score),
                &no_sampling(),
                "system",
            )
            .await
            .unwrap();
        ids.push(r.inspection_id);
    }
    let check = s.verify_records().await.unwrap();
    assert_eq!(
        (check.inspections, check.mismatches_total),
        (4, 0),
        "{check:?}"
    );

    // A reject turned into a pass, an inspection nobody made, and one that disappears: the
    // records are not chained, and the audit trail itself stays intact.
    let raw = |sql: String| async move {
        sqlx::query(&sql).execute(s.raw_pool()).await.unwrap();
    };
    raw(format!(
        "UPDATE inspections SET verdict = 'good', score = 0.2 WHERE id = {}",
        ids[1]
    ))
    .await;
    raw(format!(
        "INSERT INTO inspections (part_id, lot, line, recipe, camera, model_name, model_sha256, threshold, score, verdict, \
         regions_json, timings_json, source, at_ms) \
         SELECT part_id, lot, line, recipe, camera, model_name, model_sha256, threshold, 0.01, 'good', regions_json, \
         timings_json, source, at_ms FROM inspections WHERE id = {}",
        ids[0]
    ))
    .await;
    raw(format!("DELETE FROM inspections WHERE id = {}", ids[2])).await;
    assert!(s.verify_audit().await.unwrap().is_ok(), "the chain holds");
    let check = s.verify_records().await.unwrap();
    assert_eq!(
        (check.inspections, check.mismatches_total),
        (5, 3),
        "{check:?}"
    );
    let problem = |id: i64| reported(&check, "inspection", id);
    let altered = problem(ids[1]);
    assert!(
        altered.contains("score 0.2 in the record, 0.9876543210987654 in the trail")
            && altered.contains("verdict \"good\" in the record, \"defect\" in the trail")
            && altered.ends_with("altered outside linesight"),
        "{altered}"
    );
    assert!(problem(ids[2]).contains("removed outside linesight"));
    let added = *ids.last().unwrap() + 1;
    assert!(problem(added).contains("added outside linesight"));
    assert!(
        check
            .mismatches
            .iter()
            .all(|m| m.id != Some(ids[0]) && m.id != Some(ids[3])),
        "{check:?}"
    );

    // Electronic signatures: one given to another person with its own hash made again, one
    // moved to another NCR, one handed to another account (its hash made again), one left
    // alone.
    let ins = user(s, "ina", Role::Inspector).await;
    user(s, "quinn", Role::QaApprover).await;
    let mut sigs = Vec::new();
    for lot in ["LOT-A", "LOT-B", "LOT-C", "LOT-D"] {
        let ncr = s.create_ncr(&new_ncr(lot), &ins).await.unwrap();
        to_proposed(s, ncr.id, &ins).await;
        let quinn = creds("quinn", PASSWORD);
        sigs.push(
            s.sign_ncr(ncr.id, &quinn, Meaning::Approved, policy())
                .await
                .unwrap(),
        );
    }
    let before = s.verify_records().await.unwrap();
    assert_eq!(
        (before.signatures, before.mismatches_total),
        (4, 3),
        "{before:?}"
    );
    let mut forged = sigs[0].clone();
    forged.username = "ina".into();
    forged.full_name = "ina Fullname".into();
    forged.signature_hash = forged.compute_hash();
    let mut handed = sigs[2].clone();
    handed.signer_id = ins.id;
    handed.signature_hash = handed.compute_hash();
    for sig in [&forged, &handed] {
        sqlx::query(
            "UPDATE signatures SET signer_id = $1, username = $2, full_name = $3, signature_hash = $4 \
             WHERE id = $5",
        )
        .bind(sig.signer_id)
        .bind(&sig.username)
        .bind(&sig.full_name)
        .bind(&sig.signature_hash)
        .bind(sig.id)
        .execute(s.raw_pool())
        .await
        .unwrap();
    }
    sqlx::query("UPDATE signatures SET record_id = $1 WHERE id = $2")
        .bind(sigs[2].record_id.clone())
        .bind(sigs[1].id)
        .execute(s.raw_pool())
        .await
        .unwrap();
    let check = s.verify_records().await.unwrap();
    assert_eq!(
        (check.signatures, check.mismatches_total),
        (4, 6),
        "{check:?}"
    );
    let signature = |id: i64| reported(&check, "signature", id);
    let given = signature(sigs[0].id);
    assert!(
        given.contains("signer ina in the record, quinn in the trail")
            && !given.contains("own hash"),
        "{given}"
    );
    let moved = signature(sigs[1].id);
    assert!(
        moved.contains("its content does not match its own hash")
            && moved.contains(&format!("signs ncr {} in the record", sigs[2].record_id)),
        "{moved}"
    );
    let other_account = signature(sigs[2].id);
    assert!(
        other_account.contains(&format!(
            "it names quinn but belongs to account {} (ina)",
            ins.id
        )) && !other_account.contains("own hash"),
        "{other_account}"
    );
    assert!(
        check
            .mismatches
            .iter()
            .all(|m| m.id != Some(sigs[3].id) || m.entity != "signature"),
        "{check:?}"
    );
}

async fn inspections_open_tasks_by_the_rules_and_cap_reinspection(db: &Db) {
    let s = &db.store;
    let cfg = QualityConfig {
        reinspection_cap: 2,
        ..no_sampling()
    };
    let reject = s
        .record_inspection(&inspection("P1", "L", 0.9), &cfg, "system")
        .await
        .unwrap();
    let t = reject.task.expect("a reject opens a task");
    assert_eq!(
        (t.opening_reason.as_str(), t.state),
        ("reject", TaskState::Pending)
    );
    let uncertain = s
        .record_inspection(&inspection("P2", "L", 0.47), &cfg, "system")
        .await
        .unwrap();
    assert_eq!(uncertain.task.unwrap().opening_reason, "uncertain");
    let clear = s
        .record_inspection(&inspection("P3", "L", 0.1), &cfg, "system")
        .await
        .unwrap();
    assert!(clear.task.is_none() && clear.task_refused.is_none());
    // The same part rejected again: one more task, then the cap.
    let second = s
        .record_inspection(&inspection("P1", "L", 0.8), &cfg, "system")
        .await
        .unwrap();
    assert!(second.task.is_some());
    let third = s
        .record_inspection(&inspection("P1", "L", 0.8), &cfg, "system")
        .await
        .unwrap();
    assert!(third.task.is_none());
    assert!(
        third.task_refused.unwrap().contains("already had 2"),
        "capped"
    );
    let stored = s.inspection(third.inspection_id).await.unwrap();
    assert_eq!(stored.inspection, inspection("P1", "L", 0.8));

    // Accept sampling: every 15th good part of a lot (lot size 1200, level II → 80).
    let cfg = QualityConfig::default();
    let mut sampled = Vec::new();
    for i in 0..30 {
        let r = s
            .record_inspection(
                &inspection(&format!("S{i}"), "SAMPLED", 0.1),
                &cfg,
                "system",
            )
            .await
            .unwrap();
        if let Some(t) = r.task {
            assert_eq!(t.opening_reason, "sampled");
            sampled.push(i);
        }
    }
    assert_eq!(sampled, vec![14, 29]);
    let bad = NewInspection {
        model_sha256: "xyz".into(),
        ..inspection("P9", "L", 0.2)
    };
    let err = s.record_inspection(&bad, &cfg, "system").await.unwrap_err();
    assert!(err.to_string().contains("model_sha256"), "{err}");
    assert_chain_intact(s).await;
}

/// A pass of a part found defective before goes to a person (opening reason `retest`); once
/// the part's secondary inspections have run out, a pass is not accepted: an NCR (one per
/// part) holds the lot for QA. A part an inspector found good after its reject, or never
/// rejected, passes as usual.
async fn a_part_found_defective_is_not_re_tested_into_acceptance(db: &Db) {
    let s = &db.store;
    let cfg = QualityConfig {
        reinspection_cap: 3,
        ..no_sampling()
    };
    let ina = user(s, "ina", Role::Inspector).await;
    let record = |part: &'static str, lot: &'static str, score: f64| {
        let cfg = cfg.clone();
        async move {
            s.record_inspection(&inspection(part, lot, score), &cfg, "system")
                .await
                .unwrap()
        }
    };

    // Confirmed defective by an inspector.
    record("R2", "LOT-S", 0.9).await;
    let t = s.claim_next_task(&ina).await.unwrap().unwrap();
    assert_eq!(t.part_id, "R2");
    s.act_on_task(t.id, &ina, TaskAction::ConfirmDefect, None, &cfg)
        .await
        .unwrap();
    for _ in 0..2 {
        let pass = record("R2", "LOT-S", 0.1).await;
        assert_eq!(
            pass.task.expect("a person decides").opening_reason,
            "retest"
        );
    }
    let past_cap = record("R2", "LOT-S", 0.1).await;
    assert!(past_cap.task.is_none());
    let why = past_cap.task_refused.unwrap();
    assert!(why.contains("this pass is not accepted"), "{why}");
    let ncr = s
        .ncr(past_cap.raised_ncr.expect("QA decides"))
        .await
        .unwrap();
    assert_eq!((ncr.lot.as_str(), ncr.source.as_str()), ("LOT-S", "retest"));
    assert!(ncr.description.contains("Part R2"), "{}", ncr.description);
    assert_eq!(s.open_ncrs("LOT-S").await.unwrap(), vec![ncr.id]);
    let again = record("R2", "LOT-S", 0.1).await;
    assert!(again.raised_ncr.is_none(), "one NCR per part");
    let why = again.task_refused.unwrap();
    assert!(
        why.contains(&format!("its NCR {} (open) decides", ncr.id)),
        "{why}"
    );
    // A part never rejected passes without a person.
    let other = record("R3", "LOT-S", 0.1).await;
    assert!(other.task.is_none() && other.task_refused.is_none());
    // What the pipeline asks before it decides to keep a pass's image for the inspector.
    assert!(s.part_found_defective("R2").await.unwrap());
    assert!(!s.part_found_defective("R3").await.unwrap());

    // Rejected by the machine, its task still open: a pass goes to a person; once an
    // inspector found the reject good, passes stand on their own.
    let reject = record("R1", "LOT-R", 0.9).await;
    let retest = record("R1", "LOT-R", 0.1).await;
    assert_eq!(retest.task.unwrap().opening_reason, "retest");
    let t = s.claim_task(reject.task.unwrap().id, &ina).await.unwrap();
    s.act_on_task(t.id, &ina, TaskAction::OverrideGood, Some("dust"), &cfg)
        .await
        .unwrap();
    let later = record("R1", "LOT-R", 0.1).await;
    assert!(
        later.task.is_none() && later.task_refused.is_none(),
        "cleared by the inspector"
    );
    // Confirmed defective, then reworked: an inspector finding its re-test good clears it; a
    // defect confirmed on a later re-test makes it found defective again.
    let rejected = record("R4", "LOT-R", 0.9).await;
    let reworked = record("R4", "LOT-R", 0.1).await;
    let t = s.claim_task(rejected.task.unwrap().id, &ina).await.unwrap();
    s.act_on_task(t.id, &ina, TaskAction::ConfirmDefect, None, &cfg)
        .await
        .unwrap();
    let t = s.claim_task(reworked.task.unwrap().id, &ina).await.unwrap();
    s.act_on_task(
        t.id,
        &ina,
        TaskAction::OverrideGood,
        Some("reworked, clean"),
        &cfg,
    )
    .await
    .unwrap();
    let passes = record("R4", "LOT-R", 0.1).await;
    assert!(passes.task.is_none(), "cleared on its re-test");
    assert!(!s.part_found_defective("R4").await.unwrap());
    assert!(!s.part_found_defective("R1").await.unwrap());
    assert!(s.open_ncrs("LOT-R").await.unwrap().is_empty());
    assert_chain_intact(s).await;
}

async fn tasks_are_decided_by_their_claimant_and_critical_defects_raise_ncrs(db: &Db) {
    let s = &db.store;
    let cfg = QualityConfig {
        critical_defect_classes: vec!["crack".into()],
        ..no_sampling()
    };
    let ina = user(s, "ina", Role::Inspector).await;
    let ivo = user(s, "ivo", Role::Inspector).await;
    let qa = user(s, "quinn", Role::QaApprover).await;
    let op = user(s, "otto", Role::Operator).await;
    let crack = NewInspection {
        defect_class: Some("crack".into()),
        ..inspection("P1", "LOT-C", 0.9)
    };
    s.record_inspection(&crack, &cfg, "system").await.unwrap();
    s.record_inspection(&inspection("P2", "LOT-C", 0.8), &cfg, "system")
        .await
        .unwrap();

    let err = s.claim_next_task(&op).await.unwrap_err();
    assert!(matches!(
        err,
        StoreError::Transition(TransitionError::Forbidden { .. })
    ));
    let t1 = s.claim_next_task(&ina).await.unwrap().unwrap();
    assert_eq!((t1.part_id.as_str(), t1.claimed_by), ("P1", Some(ina.id)));
    let err = s
        .act_on_task(t1.id, &ivo, TaskAction::ConfirmDefect, None, &cfg)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Transition(TransitionError::NotClaimant { .. })
    ));
    let (done, ncr) = s
        .act_on_task(t1.id, &ina, TaskAction::ConfirmDefect, None, &cfg)
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Confirmed);
    assert_eq!(done.decided_by, Some(ina.id));
    let ncr = s
        .ncr(ncr.expect("a confirmed crack raises an NCR"))
        .await
        .unwrap();
    assert_eq!(
        (ncr.lot.as_str(), ncr.source.as_str()),
        ("LOT-C", "confirmed_defect")
    );
    assert_eq!(s.open_ncrs("LOT-C").await.unwrap(), vec![ncr.id]);

    let t2 = s.claim_next_task(&ivo).await.unwrap().unwrap();
    let err = s
        .act_on_task(t2.id, &ivo, TaskAction::OverrideGood, None, &cfg)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Transition(TransitionError::ReasonRequired { .. })
    ));
    let (esc, _) = s
        .act_on_task(t2.id, &ivo, TaskAction::Escalate, Some("cannot tell"), &cfg)
        .await
        .unwrap();
    assert_eq!(esc.state, TaskState::Escalated);
    let err = s
        .act_on_task(t2.id, &ivo, TaskAction::OverrideGood, Some("fine"), &cfg)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Transition(TransitionError::Forbidden { .. })
    ));
    let (good, none) = s
        .act_on_task(
            t2.id,
            &qa,
            TaskAction::OverrideGood,
            Some("stain, wipes off"),
            &cfg,
        )
        .await
        .unwrap();
    assert_eq!((good.state, none), (TaskState::OverriddenGood, None));
    let err = s
        .act_on_task(t2.id, &qa, TaskAction::ConfirmDefect, None, &cfg)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("overridden_good"), "{err}");
    assert!(s.claim_next_task(&ina).await.unwrap().is_none());
    let finished = s
        .tasks_in_state(TaskState::OverriddenGood, 10)
        .await
        .unwrap();
    assert_eq!(
        finished.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![t2.id]
    );
    assert!(
        s.tasks_in_state(TaskState::Pending, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let other = s.create_ncr(&new_ncr("LOT-D"), &qa).await.unwrap();
    let listed = s.list_ncrs(None, true, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![other.id, ncr.id]
    );
    let listed = s.list_ncrs(Some("LOT-D"), false, 10).await.unwrap();
    assert_eq!(listed, vec![other]);
    assert_chain_intact(s).await;
}

async fn reject_rate_above_the_limit_raises_one_ncr(db: &Db) {
    let s = &db.store;
    let cfg = QualityConfig {
        reject_rate_window: 20,
        reject_rate_min_inspections: 10,
        reject_rate_alert: 0.2,
        ..no_sampling()
    };
    let mut raised = Vec::new();
    for i in 0..8 {
        s.record_inspection(&inspection(&format!("G{i}"), "LOT-R", 0.1), &cfg, "system")
            .await
            .unwrap();
    }
    // 8 good, then rejects: 2/10 = 20 % is not above the limit, 3/11 is.
    for i in 0..6 {
        let r = s
            .record_inspection(&inspection(&format!("D{i}"), "LOT-R", 0.9), &cfg, "system")
            .await
            .unwrap();
        if let Some(id) = r.raised_ncr {
            raised.push((i, id));
        }
    }
    assert_eq!(raised.len(), 1, "one NCR while it stays open: {raised:?}");
    assert_eq!(raised[0].0, 2);
    let ncr = s.ncr(raised[0].1).await.unwrap();
    assert_eq!(ncr.source, "reject_rate");
    assert!(
        ncr.description.contains("3 rejects in the last 11"),
        "{}",
        ncr.description
    );
    let qa = user(s, "quinn", Role::QaApprover).await;
    assert!(matches!(
        s.release_lot("LOT-R", &qa).await,
        Err(StoreError::LotHasOpenNcr { .. })
    ));
}

async fn fifty_concurrent_writers_lose_nothing(db: &Db) {
    const WRITERS: usize = 50;
    const EACH: usize = 20;
    let cfg = no_sampling();
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let store = db.store.clone();
        let cfg = cfg.clone();
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..EACH {
                let score = if i % 5 == 0 { 0.9 } else { 0.2 };
                let r = store
                    .record_inspection(
                        &inspection(&format!("W{w}-{i}"), &format!("LOT-{}", w % 5), score),
                        &cfg,
                        "system",
                    )
                    .await
                    .unwrap_or_else(|e| panic!("writer {w} write {i}: {e}"));
                ids.push(r.inspection_id);
            }
            ids
        }));
    }
    let mut all = HashSet::new();
    for h in handles {
        for id in h.await.unwrap() {
            assert!(all.insert(id), "inspection id {id} handed out twice");
        }
    }
    assert_eq!(all.len(), WRITERS * EACH);
    assert_eq!(
        db.store.inspection_count().await.unwrap(),
        (WRITERS * EACH) as i64
    );
    let entries = assert_chain_intact(&db.store).await;
    // 20 % rejects exceed the 5 % alert: each of the 5 lots gets exactly one NCR, however the
    // writers interleave.
    let mut ncrs = 0;
    for lot in 0..5 {
        let open = db.store.open_ncrs(&format!("LOT-{lot}")).await.unwrap();
        assert_eq!(open.len(), 1, "LOT-{lot}: {open:?}");
        ncrs += open.len();
    }
    // One entry per inspection, one per task (every 5th is a reject), two per NCR (the NCR and
    // the hold of its lot), none lost.
    assert_eq!(
        entries,
        (WRITERS * EACH + WRITERS * EACH / 5 + 2 * ncrs) as u64
    );
}

async fn accept_sampling_counts_each_accepted_part_once_under_concurrent_writers(db: &Db) {
    // Default rules: one good part in 15 of a lot is sampled (lot size 1200, level II).
    const WRITERS: usize = 6;
    const EACH: usize = 15;
    let cfg = QualityConfig::default();
    assert_eq!(cfg.accept_sampling_interval(), 15);
    // Half the writers are a second service instance on the same database: the lot counter
    // row must count each accepted part once, whoever writes it.
    let other = db.another_instance().await;
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let store = if w % 2 == 0 {
            db.store.clone()
        } else {
            other.clone()
        };
        let cfg = cfg.clone();
        handles.push(tokio::spawn(async move {
            let mut sampled = 0;
            for i in 0..EACH {
                let r = store
                    .record_inspection(
                        &inspection(&format!("C{w}-{i}"), "CONC", 0.1),
                        &cfg,
                        "system",
                    )
                    .await
                    .unwrap_or_else(|e| panic!("writer {w} write {i}: {e}"));
                if let Some(t) = r.task {
                    assert_eq!(t.opening_reason, "sampled");
                    sampled += 1;
                }
            }
            sampled
        }));
    }
    let mut sampled = 0;
    for h in handles {
        sampled += h.await.unwrap();
    }
    // 90 accepted parts: the 15th, 30th, … 90th, however the writers interleave.
    assert_eq!(sampled, WRITERS * EACH / 15);
    // Rejects are not counted; the next good part of the lot is the 91st.
    for i in 0..14 {
        let reject = db
            .store
            .record_inspection(&inspection(&format!("R{i}"), "CONC", 0.9), &cfg, "system")
            .await
            .unwrap();
        assert_eq!(reject.task.unwrap().opening_reason, "reject");
    }
    let mut next = Vec::new();
    for i in 0..15 {
        let r = db
            .store
            .record_inspection(&inspection(&format!("N{i}"), "CONC", 0.1), &cfg, "system")
            .await
            .unwrap();
        if r.task.is_some() {
            next.push(i);
        }
    }
    assert_eq!(next, vec![14], "the 105th accepted part");
    other.close().await;
}

async fn two_instances_never_claim_the_same_task(db: &Db) {
    const TASKS: usize = 60;
    let cfg = no_sampling();
    let first = db.store.clone();
    let second = db.another_instance().await;
    for i in 0..TASKS {
        first
            .record_inspection(&inspection(&format!("P{i}"), "LOT-T", 0.9), &cfg, "system")
            .await
            .unwrap();
    }
    // Users first (argon2 takes a while), then every claimer starts at once.
    let mut inspectors = Vec::new();
    for (n, store) in [first.clone(), second.clone()].into_iter().enumerate() {
        for k in 0..4 {
            inspectors.push((
                store.clone(),
                user(&store, &format!("insp{n}{k}"), Role::Inspector).await,
            ));
        }
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(inspectors.len()));
    let mut claimers = Vec::new();
    for (store, inspector) in inspectors {
        let start = start.clone();
        claimers.push(tokio::spawn(async move {
            start.wait().await;
            let mut got = Vec::new();
            while let Some(t) = store.claim_next_task(&inspector).await.unwrap() {
                assert_eq!(t.claimed_by, Some(inspector.id));
                got.push(t.id);
            }
            got
        }));
    }
    let mut seen = HashSet::new();
    let mut per_instance = [0usize; 2];
    for (c, h) in claimers.into_iter().enumerate() {
        let got = h.await.unwrap();
        per_instance[c / 4] += got.len();
        for id in got {
            assert!(seen.insert(id), "task {id} claimed twice");
        }
    }
    assert_eq!(seen.len(), TASKS, "every task claimed exactly once");
    if db.store.backend() == Backend::Postgres {
        // PostgreSQL queues lock waiters fairly; both instances get work. (SQLite's busy
        // handler gives no such promise across connections, only correctness.)
        assert!(per_instance.iter().all(|&n| n > 0), "{per_instance:?}");
    }
    second.close().await;
    assert_chain_intact(&first).await;
}

async fn image_rows_are_recorded_with_their_inspection_or_not_at_all(db: &Db) {
    let s = &db.store;
    let dir = tempfile::tempdir().unwrap();
    let files = linesight::store::write_images(dir.path(), vec![vec![9u8; 50], vec![8u8; 30]])
        .await
        .unwrap();
    assert!(
        linesight::store::image_path(dir.path(), &files[0].hash)
            .unwrap()
            .is_file()
    );
    let with_refs = |model_sha256: String| NewInspection {
        image_ref: Some(files[0].hash.clone()),
        overlay_ref: Some(files[1].hash.clone()),
        model_sha256,
        ..inspection("P1", "L", 0.1)
    };
    // Refused: neither the inspection nor its image rows (a quota of 0 finds nothing to evict).
    let err = s
        .record_inspection_with_images(&with_refs("xyz".into()), &files, &no_sampling(), "system")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("model_sha256"), "{err}");
    let r = s
        .enforce_image_retention(dir.path(), 90, 0, 1)
        .await
        .unwrap();
    assert_eq!((r.evicted, r.bytes_freed), (0, 0));
    // Recorded: both rows with it, in the same commit.
    let rec = s
        .record_inspection_with_images(
            &with_refs("ab".repeat(32)),
            &files,
            &no_sampling(),
            "system",
        )
        .await
        .unwrap();
    let stored = s.inspection(rec.inspection_id).await.unwrap();
    assert_eq!(
        stored.inspection.image_ref.as_deref(),
        Some(files[0].hash.as_str())
    );
    // The overlay's file deleted by hand: its record is marked too, but frees nothing.
    std::fs::remove_file(&files[1].path).unwrap();
    let r = s
        .enforce_image_retention(dir.path(), 90, 0, 1)
        .await
        .unwrap();
    assert_eq!((r.evicted, r.missing, r.bytes_freed), (2, 1, 50));
    assert_chain_intact(s).await;
}

/// Content addressing lets an upload be byte-identical to an image that retention is deleting.
/// A file deleted between its writing and its record is found missing in the recording
/// transaction: nothing is recorded, and writing again then recording succeeds. An image
/// recorded again is dated by its newest record, so expiry counts from there.
async fn an_image_retention_deletes_while_it_is_recorded_again_is_written_again(db: &Db) {
    let s = &db.store;
    let dir = tempfile::tempdir().unwrap();
    let day = 86_400_000;
    let bytes = vec![7u8; 64];
    let hash = s.put_image(dir.path(), &bytes, 0).await.unwrap();
    let path = linesight::store::image_path(dir.path(), &hash).unwrap();
    // A second upload of the same bytes finds the file there and does not write it...
    let files = linesight::store::write_images(dir.path(), vec![bytes.clone()])
        .await
        .unwrap();
    assert_eq!(files[0].hash, hash);
    // ...then retention expires the first one before that upload is recorded.
    let r = s
        .enforce_image_retention(dir.path(), 1, 1 << 30, 2 * day)
        .await
        .unwrap();
    assert_eq!(r.expired, 1);
    assert!(!path.exists());
    let new = NewInspection {
        image_ref: Some(hash.clone()),
        ..inspection("P-again", "L", 0.1)
    };
    let err = s
        .record_inspection_with_images(&new, &files, &no_sampling(), "system")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, linesight::store::StoreError::ImageGone { hash: h } if *h == hash),
        "{err}"
    );
    assert!(
        s.list_inspections(&linesight::store::InspectionFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty(),
        "nothing recorded without its file"
    );
    // The upload path writes the file again and records.
    let rec = write_and_record(s, dir.path(), bytes.clone(), &new).await;
    assert!(path.is_file(), "written again");
    let stored = s.inspection(rec.inspection_id).await.unwrap();
    assert_eq!(stored.inspection.image_ref.as_deref(), Some(hash.as_str()));
    // Recorded at the wall clock's time now: a pass at day 3 of the test clock keeps it.
    let r = s
        .enforce_image_retention(dir.path(), 1, 1 << 30, 3 * day)
        .await
        .unwrap();
    assert_eq!((r.expired, r.evicted), (0, 0));
    assert!(path.is_file());
    // Recorded again later, an image expires a retention period after that record.
    let other = s.put_image(dir.path(), &[5u8; 32], 0).await.unwrap();
    assert_eq!(
        s.put_image(dir.path(), &[5u8; 32], 5 * day).await.unwrap(),
        other
    );
    let r = s
        .enforce_image_retention(dir.path(), 1, 1 << 30, 5 * day + 1)
        .await
        .unwrap();
    assert_eq!(r.expired, 0, "dated by its newest record");
    assert!(
        linesight::store::image_path(dir.path(), &other)
            .unwrap()
            .is_file()
    );
    assert_chain_intact(s).await;
}

/// Records `new` with its image `bytes` the way an upload does: written (again if need be),
/// then recorded.
async fn write_and_record(
    s: &Store,
    dir: &std::path::Path,
    bytes: Vec<u8>,
    new: &NewInspection,
) -> linesight::store::RecordedInspection {
    linesight::store::write_and_record_images(dir, vec![bytes], |files| {
        let new = new.clone();
        async move {
            s.record_inspection_with_images(&new, &files, &no_sampling(), "system")
                .await
        }
    })
    .await
    .unwrap()
}

/// One task records the same bytes over and over while another evicts every image (a quota of
/// 0) over and over: at the end, an image row still live has its file.
async fn images_recorded_again_concurrently_with_retention_never_lose_their_file(db: &Db) {
    let s = &db.store;
    let dir = tempfile::tempdir().unwrap();
    let bytes = vec![3u8; 256];
    let stop = std::sync::atomic::AtomicBool::new(false);
    let evictions = std::sync::atomic::AtomicU64::new(0);
    // At least 300 records, and on until retention has come between them a few times (a
    // loaded machine may let the writer run ahead).
    let writer = async {
        let mut i = 0;
        while i < 300 || (evictions.load(Ordering::SeqCst) < 5 && i < 3_000) {
            s.put_image(dir.path(), &bytes, i).await.unwrap();
            i += 1;
        }
        stop.store(true, Ordering::SeqCst);
    };
    // Each pass evicts the image if its row is live, and counts a live row found without its
    // file as `missing`.
    let retention = async {
        let mut total = linesight::store::RetentionReport::default();
        loop {
            let done = stop.load(Ordering::SeqCst);
            let r = s
                .enforce_image_retention(dir.path(), 90, 0, 1_000)
                .await
                .unwrap();
            total.evicted += r.evicted;
            total.missing += r.missing;
            evictions.fetch_add(r.evicted, Ordering::SeqCst);
            if done {
                return total;
            }
            tokio::task::yield_now().await;
        }
    };
    let ((), total) = tokio::join!(writer, retention);
    assert!(
        total.evicted > 1,
        "retention ran between the records: {total:?}"
    );
    assert_eq!(total.missing, 0, "a live image row without its file");
}

/// Temporary files are removed once older than the grace period; images written without a
/// record (a record that failed, a crash between the two) are counted, and removed only when
/// asked and only beside a store that holds image records; recorded images, young files and
/// files of other names stay. A writer that found such an image complete and records it after
/// the sweep removed it is told to write it again.
async fn files_no_record_names_are_swept_after_the_grace_period(db: &Db) {
    use linesight::store::{SWEEP_GRACE, StoreError, TEMPORARY_FOLDER, image_path, write_images};
    let s = &db.store;
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now();
    let later = now + SWEEP_GRACE + std::time::Duration::from_secs(60);
    // A sweep at `at`, removing unrecorded images or not.
    let sweep = |at, remove| s.sweep_image_files(dir.path(), at, SWEEP_GRACE, remove);
    let unrecorded = write_images(dir.path(), vec![vec![2u8; 50]]).await.unwrap();
    let unrecorded = unrecorded[0].hash.clone();
    // A store without any image record beside a folder of images: the wrong database.
    let err = sweep(later, true).await.unwrap_err();
    assert!(err.to_string().contains("holds no image record"), "{err}");
    assert!(image_path(dir.path(), &unrecorded).unwrap().is_file());

    let recorded = s.put_image(dir.path(), &[1u8; 100], 0).await.unwrap();
    let left = dir.path().join(TEMPORARY_FOLDER).join("crashed.tmp");
    std::fs::write(&left, [0u8; 30]).unwrap();
    // A temporary file of the layout before the temporary folder, beside the images.
    let legacy = dir
        .path()
        .join(&unrecorded[..2])
        .join(format!(".{unrecorded}.a1B2c3.tmp"));
    std::fs::write(&legacy, [0u8; 7]).unwrap();
    let other = dir.path().join(&unrecorded[..2]).join("notes.txt");
    std::fs::write(&other, "kept").unwrap();

    let r = sweep(now, true).await.unwrap();
    assert_eq!(
        r,
        Default::default(),
        "nothing is older than the grace period"
    );
    let r = sweep(later, false).await.unwrap();
    assert_eq!(
        (
            r.temporary,
            r.unrecorded,
            r.unrecorded_bytes,
            r.unrecorded_removed
        ),
        (2, 1, 50, 0)
    );
    assert_eq!((r.bytes_freed, r.errors), (37, 0));
    assert!(!left.exists() && !legacy.exists());
    assert!(
        image_path(dir.path(), &unrecorded).unwrap().is_file(),
        "counted, not removed"
    );
    let r = sweep(later, true).await.unwrap();
    assert_eq!(
        (r.unrecorded, r.unrecorded_removed, r.bytes_freed),
        (1, 1, 50)
    );
    assert!(!image_path(dir.path(), &unrecorded).unwrap().exists());
    assert!(image_path(dir.path(), &recorded).unwrap().is_file());
    assert!(other.is_file());

    // An image whose row retention marked deleted, written again by hand, is unrecorded too.
    let day = 86_400_000;
    assert_eq!(
        s.enforce_image_retention(dir.path(), 1, 1 << 30, 2 * day)
            .await
            .unwrap()
            .expired,
        1
    );
    std::fs::create_dir_all(image_path(dir.path(), &recorded).unwrap().parent().unwrap()).unwrap();
    std::fs::write(image_path(dir.path(), &recorded).unwrap(), [1u8; 100]).unwrap();
    let r = sweep(later, true).await.unwrap();
    assert_eq!(r.unrecorded_removed, 1);

    // A writer finds an old unrecorded image complete and does not write it; the sweep takes
    // it before the record, which then fails with ImageGone (and the upload path writes it
    // again).
    let bytes = vec![4u8; 64];
    let first = write_images(dir.path(), vec![bytes.clone()]).await.unwrap();
    let again = write_images(dir.path(), vec![bytes.clone()]).await.unwrap();
    assert_eq!(first, again);
    let r = sweep(later, true).await.unwrap();
    assert_eq!(r.unrecorded_removed, 1);
    let new = NewInspection {
        image_ref: Some(again[0].hash.clone()),
        ..inspection("P-swept", "L", 0.1)
    };
    let err = s
        .record_inspection_with_images(&new, &again, &no_sampling(), "system")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ImageGone { .. }), "{err}");
    let rec = write_and_record(s, dir.path(), bytes, &new).await;
    assert!(image_path(dir.path(), &again[0].hash).unwrap().is_file());
    // Recorded now: a later sweep keeps it.
    let r = sweep(later, true).await.unwrap();
    assert_eq!((r.unrecorded, r.unrecorded_removed), (0, 0));
    assert!(image_path(dir.path(), &again[0].hash).unwrap().is_file());
    let stored = s.inspection(rec.inspection_id).await.unwrap();
    assert_eq!(stored.inspection.image_ref, Some(again[0].hash.clone()));
}

async fn images_expire_by_age_and_quota_but_records_keep_their_reference(db: &Db) {
    let s = &db.store;
    let dir = tempfile::tempdir().unwrap();
    let day = 86_400_000;
    let a = s.put_image(dir.path(), &[1u8; 100], 0).await.unwrap();
    let b = s.put_image(dir.path(), &[2u8; 100], 1_000).await.unwrap();
    let c = s.put_image(dir.path(), &[3u8; 100], 2_000).await.unwrap();
    assert_eq!(s.put_image(dir.path(), &[1u8; 100], 0).await.unwrap(), a);
    assert_eq!(a.len(), 64);
    let rec = s
        .record_inspection(
            &NewInspection {
                image_ref: Some(a.clone()),
                ..inspection("P1", "L", 0.1)
            },
            &no_sampling(),
            "system",
        )
        .await
        .unwrap();

    let r = s
        .enforce_image_retention(dir.path(), 90, 250, 3_000)
        .await
        .unwrap();
    assert_eq!((r.expired, r.evicted, r.bytes_freed), (0, 1, 100));
    assert!(
        !linesight::store::image_path(dir.path(), &a)
            .unwrap()
            .exists()
    );
    assert!(
        linesight::store::image_path(dir.path(), &b)
            .unwrap()
            .is_file()
    );
    let r = s
        .enforce_image_retention(dir.path(), 1, 1 << 30, 2_000 + day + 1)
        .await
        .unwrap();
    assert_eq!((r.expired, r.evicted), (2, 0));
    assert!(
        !linesight::store::image_path(dir.path(), &c)
            .unwrap()
            .exists()
    );
    let kept = s.inspection(rec.inspection_id).await.unwrap();
    assert_eq!(kept.inspection.image_ref, Some(a));

    // An open secondary-inspection task shows its image and overlay: however old, and over
    // the quota, they stay until the task is decided.
    let image = s.put_image(dir.path(), &[4u8; 100], 3_000).await.unwrap();
    let overlay = s.put_image(dir.path(), &[5u8; 100], 3_000).await.unwrap();
    let reject = s
        .record_inspection(
            &NewInspection {
                image_ref: Some(image.clone()),
                overlay_ref: Some(overlay.clone()),
                ..inspection("P2", "L", 0.9)
            },
            &no_sampling(),
            "system",
        )
        .await
        .unwrap();
    let task = reject.task.expect("a reject opens a task");
    let on_disk = |hash: &str| {
        linesight::store::image_path(dir.path(), hash)
            .unwrap()
            .is_file()
    };
    let ins = user(s, "ina", Role::Inspector).await;
    for step in 0..3 {
        match step {
            1 => assert_eq!(s.claim_task(task.id, &ins).await.unwrap().id, task.id),
            2 => {
                s.act_on_task(
                    task.id,
                    &ins,
                    TaskAction::Escalate,
                    Some("unsure"),
                    &no_sampling(),
                )
                .await
                .unwrap();
            }
            _ => {}
        }
        let r = s
            .enforce_image_retention(dir.path(), 1, 0, 3_000 + 2 * day)
            .await
            .unwrap();
        assert_eq!(
            (r.held_for_tasks, r.held_for_tasks_bytes, r.expired),
            (2, 200, 0),
            "step {step}"
        );
        assert!(on_disk(&image) && on_disk(&overlay), "step {step}");
    }
    let qa = user(s, "quinn", Role::QaApprover).await;
    s.act_on_task(
        task.id,
        &qa,
        TaskAction::ConfirmDefect,
        None,
        &no_sampling(),
    )
    .await
    .unwrap();
    let r = s
        .enforce_image_retention(dir.path(), 1, 0, 3_000 + 2 * day)
        .await
        .unwrap();
    assert_eq!((r.held_for_tasks, r.expired), (0, 2));
    assert!(!on_disk(&image) && !on_disk(&overlay));
}

#[test]
fn cli_adds_users_from_stdin_and_audit_verify_names_the_broken_entry() {
    use std::io::Write as _;
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("q.db").display());
    let run = |args: &[&str], stdin: &str| {
        let mut child = crate::common::linesight()
            .args(args)
            .env("LINESIGHT__STORE__URL", &url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        if !stdin.is_empty()
            && let Err(e) = pipe.write_all(stdin.as_bytes())
        {
            // A command refused before it reads its input (a bad argument) may have exited.
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
        drop(pipe);
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = run(&["audit", "verify"], "");
    assert_eq!(code, Some(2), "no database yet: {err}");
    assert!(err.contains("no quality database at"), "{err}");
    let add = [
        "users",
        "add",
        "ana",
        "--full-name",
        "Ana Lopez",
        "--role",
        "qa_approver",
    ];
    let (code, out, err) = run(&add, "long-enough-pw\n");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("created user ana (Ana Lopez), role qa_approver"),
        "{out}"
    );
    let (code, _, err) = run(&add, "long-enough-pw\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("user ana already exists"), "{err}");
    let (code, _, err) = run(
        &["users", "add", "bo", "--full-name", "Bo", "--role", "boss"],
        "long-enough-pw\n",
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("not a role"), "{err}");
    let (code, _, err) = run(
        &[
            "users",
            "add",
            "bo",
            "--full-name",
            "Bo",
            "--role",
            "inspector",
        ],
        "short\n",
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("at least 8"), "{err}");
    // A forgotten password reset, the account withdrawn and given back, each with a reason.
    let (code, out, err) = run(
        &["users", "passwd", "ana", "--reason", "forgotten"],
        "an0ther-long-pw\n",
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = run(&["users", "disable", "ana", "--reason", "left"], "");
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, _) = run(&["users", "list"], "");
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with("ana              qa_approver  Ana Lopez                      disabled "),
        "{out}"
    );
    let (code, _, err) = run(&["users", "disable", "ana", "--reason", "again"], "");
    assert_eq!(code, Some(2));
    assert!(err.contains("already disabled"), "{err}");
    let (code, out, err) = run(&["users", "enable", "ana", "--reason", "back"], "");
    assert_eq!(code, Some(0), "{out}{err}");
    let (_, out, _) = run(&["users", "list"], "");
    assert!(out.contains(" active  password set "), "{out}");
    // A new account whose password the administrator chose only until its owner chooses one.
    let (code, out, err) = run(
        &[
            "users",
            "add",
            "ivo",
            "--full-name",
            "Ivo Petrov",
            "--role",
            "inspector",
            "--temporary-password",
        ],
        "t3mporary-pass\n",
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("the password is temporary"), "{out}");
    let (_, out, _) = run(&["users", "list"], "");
    let ivo = out.lines().find(|l| l.starts_with("ivo ")).unwrap();
    assert!(
        ivo.ends_with(", to be changed at the next sign-in"),
        "{ivo}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rt
        .block_on(Store::open(&StoreConfig {
            url: Some(url.clone()),
            ..StoreConfig::default()
        }))
        .unwrap();
    let first = creds("ivo", "t3mporary-pass");
    match rt.block_on(store.authenticate(&first, policy())) {
        Err(StoreError::PasswordChangeDue { username }) => assert_eq!(username, "ivo"),
        other => panic!("{other:?}"),
    }
    rt.block_on(store.change_password(&first, "ivo-s-0wn-pass", policy()))
        .unwrap();
    rt.block_on(store.authenticate(&creds("ivo", "ivo-s-0wn-pass"), policy()))
        .unwrap();
    rt.block_on(store.close());

    // A temporary file a crash left and an image never recorded, both two hours old.
    let images = dir.path().join("images");
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    let unrecorded = format!("{:064x}", 7);
    for (folder, name, len) in [(".tmp", "x.tmp", 10), (&unrecorded[..2], &*unrecorded, 20)] {
        std::fs::create_dir_all(images.join(folder)).unwrap();
        let file = std::fs::File::create(images.join(folder).join(name)).unwrap();
        file.set_len(len).unwrap();
        file.set_modified(two_hours_ago).unwrap();
    }
    let out = crate::common::linesight()
        .args(["images", "prune"])
        .env("LINESIGHT__STORE__URL", &url)
        .env("LINESIGHT__QUALITY__IMAGE_DIR", &images)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("pruned 0 expired and 0 over-quota images (0 bytes)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("removed 1 left-over temporary files\nfound 1 images no record names (20 bytes), kept: `linesight images prune --unrecorded` removes them"),
        "{stdout}"
    );
    assert!(!images.join(".tmp/x.tmp").exists());
    // This store has no image record at all: removing the unrecorded ones is refused.
    let out = crate::common::linesight()
        .args(["images", "prune", "--unrecorded"])
        .env("LINESIGHT__STORE__URL", &url)
        .env("LINESIGHT__QUALITY__IMAGE_DIR", &images)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("holds no image record"), "{stderr}");
    assert!(images.join(&unrecorded[..2]).join(&unrecorded).is_file());
    // Nor does it hold what its name promises: `images verify` names it.
    let verify = || {
        crate::common::linesight()
            .args(["images", "verify"])
            .env("LINESIGHT__STORE__URL", &url)
            .env("LINESIGHT__STORE__DATA_DIR", dir.path())
            .env("LINESIGHT__QUALITY__IMAGE_DIR", &images)
            .output()
            .unwrap()
    };
    let out = verify();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "images and overlays: 1 DAMAGED of 1 file, 20 bytes, in {}\n  {unrecorded}: its content hashes to ",
            images.display()
        )) && stdout.ends_with(&format!(
            "NCR attachments: 0 files, 0 bytes, in {}: each holds what its SHA-256 names, and every recorded one is there\n",
            dir.path().join("attachments").display()
        )),
        "{stdout}"
    );
    std::fs::remove_file(images.join(&unrecorded[..2]).join(&unrecorded)).unwrap();
    let out = verify();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let (code, out, _) = run(&["audit", "verify"], "");
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with("audit trail intact: 6 entries verified\nnewest entry: 6 at "),
        "{out}"
    );
    // The newest entry, as a batch record or a subscriber to the health messages keeps it.
    let anchor = out
        .split("--expect ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|word| word.trim_end_matches('`'))
        .unwrap_or_else(|| panic!("no anchor offered: {out}"))
        .to_owned();
    let (code, out, err) = run(&["audit", "verify", "--expect", &anchor], "");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("anchors: all 1 found"), "{out}");
    assert!(
        out.ends_with("records: all agree with the audit trail (2 accounts)\n"),
        "{out}"
    );
    let (code, _, err) = run(&["audit", "verify", "--expect", "6"], "");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("SEQ:HASH"), "{err}");

    // Tamper with the file directly, as someone with access to it could: first the newest
    // entry removed, which leaves a chain that holds.
    let tamper = |sql: &[&str]| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                sqlx::any::install_default_drivers();
                let pool = sqlx::AnyPool::connect(&url).await.unwrap();
                for q in sql {
                    sqlx::query(q).execute(&pool).await.unwrap();
                }
                pool.close().await;
            })
    };
    tamper(&[
        "DROP TRIGGER audit_log_no_delete",
        "DELETE FROM audit_log WHERE seq = 6",
    ]);
    let (code, out, _) = run(&["audit", "verify"], "");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with("audit trail intact: 5 entries"), "{out}");
    // The chain holds, but Ivo's account keeps the password the removed entry set.
    assert!(
        out.contains("records: 1 DIFFERENCE from the audit trail (checked: 2 accounts)\n  user \"ivo\" (audit entry 5): password set ")
            && out.contains("a password change not due in the record, due in the trail"),
        "{out}"
    );
    let (code, out, _) = run(&["audit", "verify", "--expect", &anchor], "");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with("audit trail BROKEN at entry 6: recorded outside the store with hash"),
        "{out}"
    );
    assert!(
        out.contains("the trail ends at entry 5: its newest entries were removed"),
        "{out}"
    );

    tamper(&[
        "DROP TRIGGER audit_log_no_update",
        "UPDATE audit_log SET new_value = 'full_name=Ana Lopez; role=admin'",
    ]);
    let (code, out, _) = run(&["audit", "verify"], "");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with("audit trail BROKEN at entry 1: content does not match"),
        "{out}"
    );

    // An inspection recorded, then its verdict changed in the file.
    let store = rt
        .block_on(Store::open(&StoreConfig {
            url: Some(url.clone()),
            ..StoreConfig::default()
        }))
        .unwrap();
    let id = rt
        .block_on(store.record_inspection(&inspection("P1", "L1", 0.9), &no_sampling(), "system"))
        .unwrap()
        .inspection_id;
    rt.block_on(store.close());
    let (code, out, _) = run(&["audit", "verify"], "");
    assert_eq!(code, Some(1), "the chain is still broken: {out}");
    // The entries rewritten above no longer hold what the accounts were created with.
    assert!(
        out.contains(
            "records: 2 DIFFERENCES from the audit trail (checked: 1 inspection, 1 secondary-inspection task and 2 accounts)\n"
        ) && out.contains(
            "  user \"ana\" (audit entry 1): \"full_name=Ana Lopez; role=qa_approver\" in the record, \"full_name=Ana Lopez; role=admin\" in the trail"
        ),
        "{out}"
    );
    tamper(&[&format!(
        "UPDATE inspections SET verdict = 'good' WHERE id = {id}"
    )]);
    let (code, out, _) = run(&["audit", "verify"], "");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "records: 3 DIFFERENCES from the audit trail (checked: 1 inspection, 1 secondary-inspection task and 2 accounts)\n  inspection {id} (audit entry "
        )) && out.contains("verdict \"good\" in the record, \"defect\" in the trail: the record was altered outside linesight"),
        "{out}"
    );
}

#[tokio::test]
async fn sqlite_store_is_wal_with_full_sync_and_survives_reopening() {
    let db = sqlite().await;
    let pool = db.store.raw_pool();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .unwrap();
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(
        (mode.as_str(), sync),
        ("wal", 2),
        "WAL with synchronous=FULL"
    );
    let ins = user(&db.store, "ina", Role::Inspector).await;
    let ncr = db.store.create_ncr(&new_ncr("L"), &ins).await.unwrap();
    db.store.close().await;
    // Reopening runs the migrations again (a no-op) and finds everything.
    let again = Store::open(&db.config).await.unwrap();
    assert_eq!(again.ncr(ncr.id).await.unwrap(), ncr);
    assert_eq!(assert_chain_intact(&again).await, 3);
    again.close().await;
}

/// A PostgreSQL server (or database, or role) whose default is `synchronous_commit = off`
/// would acknowledge commits before they are on disk: the store's connections turn it back on.
#[tokio::test]
async fn postgres_commits_are_flushed_even_where_the_default_is_off() {
    let db = postgres().await;
    let url = db.config.effective_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let off = format!("{url}{sep}options=-c%20synchronous_commit%3Doff");
    // The option takes effect on a plain connection: the server's default here is off.
    let plain = sqlx::AnyPool::connect(&off).await.unwrap();
    let level: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&plain)
        .await
        .unwrap();
    assert_eq!(level, "off");
    plain.close().await;
    let config = StoreConfig {
        url: Some(off),
        ..db.config.clone()
    };
    let store = Store::open(&config).await.unwrap();
    // Every connection of the pool, held at once so that each is a different one.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = store.raw_pool().acquire().await.unwrap();
        let level: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(level, "on");
        held.push(conn);
    }
    drop(held);
    store.close().await;
    db.finish().await;
}

/// What the HTTP API keeps: sessions and tokens (only their hashes stored), filtered listings
/// paged by id, per-camera summaries, lot holds lifted by release, NCR attachments.
async fn api_sessions_tokens_listings_holds_and_attachments(db: &Db) {
    use linesight::store::InspectionFilter;
    let s = &db.store;
    let qa = user(s, "quinn", Role::QaApprover).await;
    let (secret, session) = s.create_session(&qa, 60_000, None).await.unwrap();
    assert_eq!(
        s.session(&secret, 60_000, true).await.unwrap(),
        Some(session)
    );
    assert_eq!(s.session("forged", 60_000, true).await.unwrap(), None);
    let stored: String = sqlx::query_scalar::<_, String>("SELECT secret_sha256 FROM api_sessions")
        .fetch_one(s.raw_pool())
        .await
        .unwrap();
    assert_ne!(stored, secret, "only the hash is stored");
    s.end_session(&secret, &qa).await.unwrap();
    assert_eq!(s.session(&secret, 60_000, true).await.unwrap(), None);

    let (listed, token) = s.create_token("quinn", "MES", None, "admin").await.unwrap();
    assert_eq!(
        s.token_user(&token).await.unwrap().unwrap().username,
        "quinn"
    );
    assert!(s.tokens().await.unwrap()[0].last_used_ms.is_some());
    // The reason goes to the audit trail: required, and bounded like every other.
    for (reason, says) in [
        (
            " ".to_owned(),
            "reason: revoking a token needs a reason".to_owned(),
        ),
        (
            "x".repeat(10_001),
            "reason is 10001 bytes long: at most 10000".to_owned(),
        ),
    ] {
        match s.revoke_token(listed.id, "admin", &reason).await {
            Err(StoreError::Invalid(m)) => assert!(m.contains(&says), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(s.token_user(&token).await.unwrap().is_some());
    s.revoke_token(listed.id, "admin", "rotated").await.unwrap();
    assert_eq!(s.token_user(&token).await.unwrap(), None);
    assert!(s.revoke_token(listed.id, "admin", "again").await.is_err());

    let cfg = QualityConfig::default();
    for (i, score) in [0.1, 0.9, 0.2, 0.95].into_iter().enumerate() {
        let mut new = inspection(&format!("P{i}"), "LOT-A", score);
        new.camera = if i < 2 { "cam-1" } else { "cam-2" }.into();
        s.record_inspection(&new, &cfg, "system").await.unwrap();
    }
    let page = |before_id, verdict| InspectionFilter {
        verdict,
        before_id,
        limit: 2,
        ..Default::default()
    };
    let first = s.list_inspections(&page(None, None)).await.unwrap();
    let ids: Vec<i64> = first.iter().map(|r| r.id).collect();
    let rest = s.list_inspections(&page(Some(ids[1]), None)).await.unwrap();
    let mut all = ids.clone();
    all.extend(rest.iter().map(|r| r.id));
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0] > w[1]), "{all:?}");
    let defects = s
        .list_inspections(&page(None, Some(linesight::quality::Verdict::Defect)))
        .await
        .unwrap();
    assert!(
        defects.iter().all(|r| r.inspection.score > 0.5),
        "{defects:?}"
    );
    assert_eq!(defects.len(), 2);
    let after = s
        .list_inspections(&InspectionFilter {
            after_id: Some(all[3]),
            camera: Some("cam-2".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(after.len(), 2);
    assert!(after[0].id < after[1].id, "oldest first after an id");
    let summary = s.camera_summary(0).await.unwrap();
    assert_eq!(summary.len(), 2);
    assert_eq!((summary[0].total, summary[0].defects), (2, 1));
    assert!((summary[1].reject_rate - 0.5).abs() < 1e-9);

    let held = s.hold_lot("LOT-A", &qa, "seal suspect").await.unwrap();
    assert!(held.held);
    assert_eq!(held.held_by.as_deref(), Some("quinn"));
    assert_eq!(s.lots(true, 10).await.unwrap().len(), 1);
    s.release_lot("LOT-A", &qa).await.unwrap();
    let released = s.lot("LOT-A").await.unwrap();
    assert!(!released.held);
    assert_eq!(released.released_by.as_deref(), Some("quinn"));
    assert!(s.lots(true, 10).await.unwrap().is_empty());

    let dir = tempfile::tempdir().unwrap();
    let ncr = s.create_ncr(&new_ncr("LOT-B"), &qa).await.unwrap();
    let a = s
        .add_attachment(
            dir.path(),
            ncr.id,
            "photo.jpg",
            "image/jpeg",
            b"jpeg bytes",
            &qa,
        )
        .await
        .unwrap();
    assert_eq!(s.attachments(ncr.id).await.unwrap(), vec![a.clone()]);
    assert_eq!(s.attachment(ncr.id, a.id).await.unwrap(), a);
    assert!(
        s.add_attachment(dir.path(), ncr.id, "../x", "text/plain", b"x", &qa)
            .await
            .is_err()
    );
    assert_eq!(
        std::fs::read(linesight::store::image_path(dir.path(), &a.sha256).unwrap()).unwrap(),
        b"jpeg bytes"
    );
    assert!(matches!(s.verify_audit().await.unwrap(), Ok(n) if n > 5));
}

/// Part 11 account control: users change their own password (the current one checked), an
/// administrator resets a forgotten one and withdraws an account; every step is audited
/// without a password or hash in it, and a withdrawn account can neither sign in, sign, nor act
/// through its sessions or tokens.
async fn accounts_change_passwords_and_are_disabled_and_enabled(db: &Db) {
    let s = &db.store;
    let ada = user(s, "ada", Role::Admin).await;
    let qa = user(s, "quinn", Role::QaApprover).await;
    let ins = user(s, "ina", Role::Inspector).await;
    let (secret, _) = s.create_session(&qa, 60_000, None).await.unwrap();
    let (_, token) = s.create_token("quinn", "bench", None, "ada").await.unwrap();
    let ncr = s.create_ncr(&new_ncr("LOT-U"), &ins).await.unwrap();

    // Their own password: the current one is checked, the new one must pass the rules.
    let change = |current: &str, new: &str| {
        let creds = creds("quinn", current);
        let new = new.to_owned();
        async move { s.change_password(&creds, &new, policy()).await }
    };
    let err = change("wrong-password", "n3w-secret-pass")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidCredentials), "{err}");
    let err = change(PASSWORD, PASSWORD).await.unwrap_err();
    assert!(err.to_string().contains("new_password"), "{err}");
    let err = change(PASSWORD, "short").await.unwrap_err();
    assert!(err.to_string().starts_with("new_password"), "{err}");
    assert!(s.session(&secret, 60_000, false).await.unwrap().is_some());
    change(PASSWORD, "n3w-secret-pass").await.unwrap();
    assert!(
        s.authenticate(&creds("quinn", PASSWORD), policy())
            .await
            .is_err()
    );
    s.authenticate(&creds("quinn", "n3w-secret-pass"), policy())
        .await
        .unwrap();
    assert_eq!(
        s.session(&secret, 60_000, false).await.unwrap(),
        None,
        "their sessions ended"
    );
    assert!(s.token_user(&token).await.unwrap().is_some(), "tokens stay");

    // A forgotten one, reset by an administrator with a reason.
    let err = s
        .reset_password("quinn", "r3set-secret-pass", "ada", " ")
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("reason"), "{err}");
    // Bounded like every reason: it is kept whole in the audit trail.
    let err = s
        .set_user_disabled("quinn", true, "ada", &"x".repeat(10_001))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most 10000"), "{err}");
    s.reset_password(
        "quinn",
        "r3set-secret-pass",
        "ada",
        "forgotten, ticket 4711",
    )
    .await
    .unwrap();
    // The administrator knows it: it signs nobody in and signs nothing, it only serves to
    // choose a new one.
    let err = s
        .authenticate(&creds("quinn", "r3set-secret-pass"), policy())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PasswordChangeDue { .. }), "{err}");
    let err = s
        .sign_ncr(
            ncr.id,
            &creds("quinn", "r3set-secret-pass"),
            Meaning::Reviewed,
            policy(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PasswordChangeDue { .. }), "{err}");
    assert!(
        s.account("quinn")
            .await
            .unwrap()
            .unwrap()
            .password_change_due
    );
    s.change_password(
        &creds("quinn", "r3set-secret-pass"),
        "ch0sen-secret-pass",
        policy(),
    )
    .await
    .unwrap();
    s.authenticate(&creds("quinn", "ch0sen-secret-pass"), policy())
        .await
        .unwrap();
    assert!(
        !s.account("quinn")
            .await
            .unwrap()
            .unwrap()
            .password_change_due
    );

    // Withdrawn: no sign-in, no signature, no session, no token, no new token.
    let (secret, _) = s.create_session(&qa, 60_000, None).await.unwrap();
    s.set_user_disabled("quinn", true, "ada", "left the company")
        .await
        .unwrap();
    let err = s
        .authenticate(&creds("quinn", "ch0sen-secret-pass"), policy())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Disabled { .. }), "{err}");
    // A wrong password learns nothing, and counts (and is audited) like any other.
    let before = s.account("quinn").await.unwrap().unwrap().failed_attempts;
    let err = s
        .authenticate(&creds("quinn", "a-guess-at-it"), policy())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidCredentials), "{err}");
    assert_eq!(
        s.account("quinn").await.unwrap().unwrap().failed_attempts,
        before + 1
    );
    let err = s
        .sign_ncr(
            ncr.id,
            &creds("quinn", "ch0sen-secret-pass"),
            Meaning::Reviewed,
            policy(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Disabled { .. }), "{err}");
    assert_eq!(s.session(&secret, 60_000, false).await.unwrap(), None);
    assert_eq!(s.token_user(&token).await.unwrap(), None);
    let err = s
        .create_token("quinn", "again", None, "ada")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Disabled { .. }), "{err}");
    let err = s
        .set_user_disabled("quinn", true, "ada", "twice")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already disabled"), "{err}");
    // Somebody must be able to give accounts back.
    let err = s
        .set_user_disabled("ada", true, "ada", "holiday")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("last enabled administrator"),
        "{err}"
    );
    let listed = s.users().await.unwrap();
    let quinn = listed.iter().find(|u| u.username == "quinn").unwrap();
    assert!(quinn.disabled_at_ms.is_some() && quinn.password_set_at_ms.is_some());
    assert!(listed.iter().filter(|u| u.disabled_at_ms.is_none()).count() == 2);

    // Given back: signs in again, and the token not revoked works again.
    s.set_user_disabled("quinn", false, "ada", "rehired")
        .await
        .unwrap();
    s.authenticate(&creds("quinn", "ch0sen-secret-pass"), policy())
        .await
        .unwrap();
    assert!(s.token_user(&token).await.unwrap().is_some());
    let err = s
        .set_user_disabled("nobody", true, "ada", "x")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");

    let trail = s.audit_for("user", "quinn").await.unwrap();
    let actions: Vec<(&str, &str)> = trail
        .iter()
        .map(|e| (e.action.as_str(), e.actor.as_str()))
        .filter(|(a, _)| a.starts_with("user.password") || a.ends_with("able"))
        .collect();
    assert_eq!(
        actions,
        [
            ("user.password_change", "quinn"),
            ("user.password_reset", "ada"),
            ("user.password_change", "quinn"),
            ("user.disable", "ada"),
            ("user.enable", "ada"),
        ]
    );
    for e in &trail {
        let text = format!("{e:?}");
        assert!(
            !text.contains("argon2") && !text.contains("secret-pass"),
            "no password or hash in the trail: {text}"
        );
    }
    let _ = (ada, qa);
    assert_chain_intact(s).await;
}
