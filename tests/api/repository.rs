//! The repository suite: the same assertions against SQLite and PostgreSQL.

use wa_gateway::domain::{Email, Role, Tier, now_ms};
use wa_gateway::store::{
    NewApiKey, NewRefreshToken, NewUser, RefreshOutcome, StoreError, UserListQuery, UserUpdate,
};

use crate::backend_tests;
use crate::common::{Backend, TestStore};

backend_tests!(
    migrations_are_idempotent,
    users_crud_and_uniqueness,
    user_listing_pages_and_searches,
    refresh_tokens_rotate_once,
    api_keys_lookup_revoke_and_usage,
    usage_records_accumulate,
);

async fn new_user(store: &wa_gateway::store::Store, email: &str) -> wa_gateway::store::User {
    store
        .insert_user(NewUser {
            email: &Email::parse(email).unwrap(),
            name: "Someone",
            password_hash: "$argon2id$fake",
            role: Role::User,
            tier: Tier::Basic,
        })
        .await
        .unwrap()
}

async fn migrations_are_idempotent(backend: Backend) {
    let test = TestStore::new(backend).await;
    test.store.migrate().await.unwrap();
    test.store.migrate().await.unwrap();
    let tables: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(test.store.pool())
        .await
        .unwrap();
    assert_eq!(tables, 0);
    for table in [
        "users",
        "refresh_tokens",
        "sessions",
        "workers",
        "api_keys",
        "messages",
        "message_events",
        "worker_metrics",
        "webhooks",
        "webhook_deliveries",
        "system_logs",
        "usage_records",
        "idempotency_keys",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .execute(test.store.pool())
            .await
            .unwrap_or_else(|e| panic!("table {table}: {e}"));
    }
    // Enumerations are enforced by the schema, not only by the code.
    let bad = sqlx::query("INSERT INTO users (id, email, name, password_hash, role, tier, created_at, updated_at) VALUES ('x', 'x@y.z', 'n', 'h', 'ROOT', 'BASIC', 0, 0)")
        .execute(test.store.pool())
        .await;
    assert!(bad.is_err());
}

async fn users_crud_and_uniqueness(backend: Backend) {
    let test = TestStore::new(backend).await;
    let store = &test.store;
    let user = new_user(store, "ann@example.com").await;
    assert_eq!(user.role, Role::User);
    assert!(user.is_active());
    let again = store
        .insert_user(NewUser {
            email: &Email::parse("ANN@example.com").unwrap(),
            name: "Dup",
            password_hash: "h",
            role: Role::User,
            tier: Tier::Basic,
        })
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    let by_email = store
        .user_by_email(&Email::parse("ann@example.com").unwrap())
        .await
        .unwrap();
    assert_eq!(by_email.id, user.id);
    assert!(matches!(
        store.user_by_id("missing").await,
        Err(StoreError::NotFound)
    ));
    let renamed = store.update_user_name(&user.id, "Ann B").await.unwrap();
    assert_eq!(renamed.name, "Ann B");
    let generation = renamed.token_generation;
    store
        .update_user_password(&user.id, "$argon2id$other")
        .await
        .unwrap();
    let changed = store.user_by_id(&user.id).await.unwrap();
    assert_eq!(changed.token_generation, generation + 1);
    let deactivated = store
        .admin_update_user(
            &user.id,
            &UserUpdate {
                active: Some(false),
                tier: Some(Tier::Max),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!deactivated.is_active());
    assert_eq!(deactivated.tier, Tier::Max);
    assert_eq!(deactivated.token_generation, generation + 2);
}

async fn user_listing_pages_and_searches(backend: Backend) {
    let test = TestStore::new(backend).await;
    for n in 0..7 {
        new_user(&test.store, &format!("user{n}@example.com")).await;
    }
    new_user(&test.store, "under_score@other.org").await;
    let page = test
        .store
        .list_users(&UserListQuery {
            search: None,
            page: 2,
            per_page: 3,
        })
        .await
        .unwrap();
    assert_eq!(page.total, 8);
    assert_eq!(page.users.len(), 3);
    let search = test
        .store
        .list_users(&UserListQuery {
            search: Some("_score".into()),
            page: 1,
            per_page: 10,
        })
        .await
        .unwrap();
    assert_eq!(search.total, 1);
    let underscore_is_literal = test
        .store
        .list_users(&UserListQuery {
            search: Some("user_".into()),
            page: 1,
            per_page: 10,
        })
        .await
        .unwrap();
    assert_eq!(underscore_is_literal.total, 0);
}

async fn refresh_tokens_rotate_once(backend: Backend) {
    let test = TestStore::new(backend).await;
    let store = &test.store;
    let user = new_user(store, "ann@example.com").await;
    for (hash, family) in [("h1", "f1"), ("h2", "f1"), ("h3", "f2")] {
        store
            .insert_refresh_token(NewRefreshToken {
                user_id: &user.id,
                family_id: family,
                token_hash: hash,
                expires_at: now_ms() + 60_000,
            })
            .await
            .unwrap();
    }
    assert!(matches!(
        store.consume_refresh_token("h1").await.unwrap(),
        RefreshOutcome::Rotated(_)
    ));
    assert!(matches!(
        store.consume_refresh_token("h1").await.unwrap(),
        RefreshOutcome::ReuseDetected
    ));
    // The family died with the replay; the other family lives.
    assert!(matches!(
        store.consume_refresh_token("h2").await.unwrap(),
        RefreshOutcome::Invalid
    ));
    assert!(matches!(
        store.consume_refresh_token("h3").await.unwrap(),
        RefreshOutcome::Rotated(_)
    ));
    assert!(matches!(
        store.consume_refresh_token("nope").await.unwrap(),
        RefreshOutcome::Invalid
    ));
    store
        .insert_refresh_token(NewRefreshToken {
            user_id: &user.id,
            family_id: "f3",
            token_hash: "expired",
            expires_at: now_ms() - 1,
        })
        .await
        .unwrap();
    assert!(matches!(
        store.consume_refresh_token("expired").await.unwrap(),
        RefreshOutcome::Invalid
    ));
}

async fn api_keys_lookup_revoke_and_usage(backend: Backend) {
    let test = TestStore::new(backend).await;
    let store = &test.store;
    let ann = new_user(store, "ann@example.com").await;
    let bob = new_user(store, "bob@example.com").await;
    let key = store
        .insert_api_key(NewApiKey {
            user_id: &ann.id,
            session_id: None,
            name: "k",
            key_hash: "hash-1",
            key_prefix: "wg_abc",
            expires_at: None,
        })
        .await
        .unwrap();
    assert_eq!(
        store.api_key_by_hash("hash-1").await.unwrap().unwrap().id,
        key.id
    );
    assert!(store.api_key_by_hash("hash-2").await.unwrap().is_none());
    assert!(matches!(
        store.api_key_for_user(&bob.id, &key.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.revoke_api_key(&bob.id, &key.id).await,
        Err(StoreError::NotFound)
    ));
    store
        .record_api_key_usage(&[(key.id.clone(), 1_000), (key.id.clone(), 500)])
        .await
        .unwrap();
    assert_eq!(
        store
            .api_key_for_user(&ann.id, &key.id)
            .await
            .unwrap()
            .last_used_at,
        Some(1_000)
    );
    store.revoke_api_key(&ann.id, &key.id).await.unwrap();
    let revoked = store.api_key_by_hash("hash-1").await.unwrap().unwrap();
    assert!(!revoked.is_usable(now_ms()));
    assert_eq!(store.list_api_keys(&ann.id).await.unwrap().len(), 1);
    assert!(store.list_api_keys(&bob.id).await.unwrap().is_empty());
}

async fn usage_records_accumulate(backend: Backend) {
    let test = TestStore::new(backend).await;
    let store = &test.store;
    let ann = new_user(store, "ann@example.com").await;
    store
        .add_usage(&[
            (ann.id.clone(), 3_600_000, 2, 5),
            (ann.id.clone(), 7_200_000, 1, 1),
        ])
        .await
        .unwrap();
    store
        .add_usage(&[(ann.id.clone(), 3_600_000, 3, 0)])
        .await
        .unwrap();
    let rows = store.usage_since(&ann.id, 0).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].messages, rows[0].api_calls), (5, 5));
    assert_eq!(
        store.usage_since(&ann.id, 7_000_000).await.unwrap().len(),
        1
    );
}

mod messages {
    use wa_gateway::domain::MessageStatus;
    use wa_gateway::store::{NewOutboundMessage, StoreError};

    use crate::backend_tests;
    use crate::common::{Backend, TestStore};

    backend_tests!(
        outbound_messages_advance_and_keep_a_timeline,
        a_batch_of_several_statements_records_only_new_messages
    );

    fn outbound(user_id: &str, i: i64) -> NewOutboundMessage {
        NewOutboundMessage {
            id: format!("m-{i}"),
            user_id: user_id.to_owned(),
            session_id: "sales-1".into(),
            message_type: "TEXT",
            remote_jid: "6281234567890@s.whatsapp.net".into(),
            content: r#"{"to":"6281234567890@s.whatsapp.net","type":"text","message":"hi"}"#.into(),
            idempotency_key: None,
            accepted_at: 1_700_000_000_000 + i,
        }
    }

    /// A small batch is one statement, a large one a transaction of several: both are
    /// idempotent and count only what they added.
    async fn a_batch_of_several_statements_records_only_new_messages(backend: Backend) {
        let test = TestStore::new(backend).await;
        let store = &test.store;
        let ann = super::new_user(store, "ann@example.com").await;
        let messages: Vec<NewOutboundMessage> = (0..150).map(|i| outbound(&ann.id, i)).collect();
        assert_eq!(
            store
                .insert_outbound_messages(&messages[40..60])
                .await
                .unwrap()
                .len(),
            20
        );
        assert_eq!(
            store
                .insert_outbound_messages(&messages)
                .await
                .unwrap()
                .len(),
            130
        );
        assert!(
            store
                .insert_outbound_messages(&messages)
                .await
                .unwrap()
                .is_empty()
        );
        for i in [0, 64, 149] {
            let stored = store
                .message_for_user(&ann.id, &format!("m-{i}"))
                .await
                .unwrap();
            assert_eq!(stored.status, MessageStatus::Pending);
        }
    }

    async fn outbound_messages_advance_and_keep_a_timeline(backend: Backend) {
        let test = TestStore::new(backend).await;
        let store = &test.store;
        let ann = super::new_user(store, "ann@example.com").await;
        let bob = super::new_user(store, "bob@example.com").await;
        let messages: Vec<NewOutboundMessage> = (0..3).map(|i| outbound(&ann.id, i)).collect();
        assert_eq!(
            store
                .insert_outbound_messages(&messages)
                .await
                .unwrap()
                .len(),
            3
        );
        // Recording again (a redelivered log record) changes nothing.
        assert_eq!(
            store
                .insert_outbound_messages(&messages[..1])
                .await
                .unwrap()
                .len(),
            0
        );
        let stored = store.message_for_user(&ann.id, "m-1").await.unwrap();
        assert_eq!(stored.status, MessageStatus::Pending);
        assert!(matches!(
            store.message_for_user(&bob.id, "m-1").await,
            Err(StoreError::NotFound)
        ));
        assert!(
            store
                .apply_message_status("sales-1", "m-1", MessageStatus::Sent, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .apply_message_status("sales-1", "m-1", MessageStatus::Read, None)
                .await
                .unwrap()
        );
        // Late or wrong-session reports never move a message backwards or across sessions.
        assert!(
            !store
                .apply_message_status("sales-1", "m-1", MessageStatus::Delivered, None)
                .await
                .unwrap()
        );
        assert!(
            !store
                .apply_message_status("other", "m-2", MessageStatus::Sent, None)
                .await
                .unwrap()
        );
        let timeline: Vec<MessageStatus> = store
            .message_timeline("m-1")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.status)
            .collect();
        assert_eq!(
            timeline,
            vec![
                MessageStatus::Pending,
                MessageStatus::Sent,
                MessageStatus::Read
            ]
        );
        assert_eq!(
            store.message_for_user(&ann.id, "m-1").await.unwrap().status,
            MessageStatus::Read
        );
    }
}
