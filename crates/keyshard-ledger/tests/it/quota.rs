//! The admins' quota overrides in Postgres: a set keeps the fields it does not name, a clear
//! removes one command or all, guilds take no cooldown; and the answered rows per user and
//! command that the quota counters are reconciled against.

use keyshard_ledger::{
    answered_by_user, clear_overrides, list_overrides, set_override, write_batch, OverrideRow,
    OverrideScope, Status,
};

use crate::support::{row_at, TestDb};

#[tokio::test]
async fn overrides_are_set_merged_listed_and_cleared() {
    let db = TestDb::new().await;
    let u = OverrideScope::User(5);
    let g = OverrideScope::Guild(9);
    set_override(&db.pool, u, "image", Some(3), None, 1)
        .await
        .unwrap();
    let merged = set_override(&db.pool, u, "image", None, Some(30), 1)
        .await
        .unwrap();
    assert_eq!(
        merged,
        OverrideRow {
            scope: u,
            command: "image".into(),
            daily: Some(3),
            cooldown_secs: Some(30)
        },
        "a set keeps the field it does not name"
    );
    set_override(&db.pool, u, "video", Some(0), None, 1)
        .await
        .unwrap();
    set_override(&db.pool, g, "image", Some(50), None, 1)
        .await
        .unwrap();
    assert!(
        set_override(&db.pool, g, "image", None, Some(10), 1)
            .await
            .is_err(),
        "a guild has no cooldown"
    );
    assert_eq!(list_overrides(&db.pool, Some(u)).await.unwrap().len(), 2);
    assert_eq!(list_overrides(&db.pool, None).await.unwrap().len(), 3);
    assert_eq!(
        clear_overrides(&db.pool, u, Some("video")).await.unwrap(),
        1
    );
    assert_eq!(clear_overrides(&db.pool, u, None).await.unwrap(), 1);
    assert_eq!(
        list_overrides(&db.pool, None).await.unwrap(),
        vec![OverrideRow {
            scope: g,
            command: "image".into(),
            daily: Some(50),
            cooldown_secs: None
        }]
    );
}

#[tokio::test]
async fn answered_rows_are_counted_per_user_and_command_in_a_span() {
    let db = TestDb::new().await;
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(3);
    // A snowflake created at 1_780_000_000_000 (Discord's epoch is 2015-01-01).
    let base = (1_780_000_000_000u64 - 1_420_070_400_000) << 22;
    let mut rows = Vec::new();
    for (k, (user, command, status)) in [
        (7, "image", Status::Ok),
        (7, "image", Status::Ok),
        (7, "image", Status::Failed),
        (7, "chat", Status::Ok),
        (8, "image", Status::Ok),
        (8, "ping", Status::Ok),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = row_at(&mut rng, base + k as u64);
        r.user_id = user;
        r.command = command.into();
        r.status = status;
        r.error_class = (status != Status::Ok).then(|| "provider".into());
        rows.push(r);
    }
    write_batch(&db.pool, &rows).await.unwrap();
    let got = answered_by_user(&db.pool, 1_780_000_000_000 - 1, 1_780_000_000_000 + 1)
        .await
        .unwrap();
    assert_eq!(got.get(&(7, "image".into())), Some(&2));
    assert_eq!(got.get(&(7, "chat".into())), Some(&1));
    assert_eq!(got.get(&(8, "image".into())), Some(&1));
    assert_eq!(got.len(), 3, "{got:?}");
    let later = answered_by_user(&db.pool, 1_780_000_000_001, 1_780_000_100_000)
        .await
        .unwrap();
    assert!(later.is_empty());
}
