//! `migrations/`: applied to an empty database, by several instances at once, and the
//! embedded set is the folder's.

use std::path::Path;

use keyshard_ledger::{migrate, MIGRATOR};
use sqlx::migrate::Migrator;

use crate::support::*;

fn folder() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations")
}

#[tokio::test]
async fn the_embedded_migrations_are_the_folders_files() {
    let on_disk = Migrator::new(folder()).await.expect("the folder reads");
    let names = |m: &Migrator| -> Vec<(i64, String, Vec<u8>)> {
        m.iter()
            .map(|m| (m.version, m.description.to_string(), m.checksum.to_vec()))
            .collect()
    };
    assert_eq!(
        names(&MIGRATOR),
        names(&on_disk),
        "migrations/ changed since this crate was built (build.rs should have rebuilt it)"
    );
    // sqlx's naming, plain SQL, nothing else in the folder.
    let mut files: Vec<String> = std::fs::read_dir(folder())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files.len(), MIGRATOR.iter().count(), "{files:?}");
    for (file, m) in files.iter().zip(MIGRATOR.iter()) {
        assert_eq!(
            file,
            &format!("{:04}_{}.sql", m.version, m.description.replace(' ', "_")),
            "NNNN_name.sql"
        );
    }
}

#[tokio::test]
async fn an_empty_database_gets_the_schema_and_a_second_run_changes_nothing() {
    let db = TestDb::new().await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        tables,
        vec![
            "_sqlx_migrations",
            "ledger",
            "ledger_daily",
            "quota_overrides"
        ]
    );
    migrate(&db.pool).await.expect("applying again is a no-op");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, MIGRATOR.iter().count());
}

#[tokio::test]
async fn four_instances_migrating_one_empty_database_at_once_all_succeed() {
    // A database nobody migrated yet, and four pools: four sessions, like four instances.
    let server = shared_server();
    let (first, url) = empty_database(&server);
    let pools: Vec<sqlx::PgPool> = std::iter::once(first)
        .chain((1..4).map(|_| keyshard_ledger::connect_lazy(&url).unwrap()))
        .collect();
    let runs: Vec<_> = pools
        .iter()
        .cloned()
        .map(|pool| tokio::spawn(async move { migrate(&pool).await }))
        .collect();
    for run in runs {
        run.await
            .unwrap()
            .expect("every instance's migrate succeeds");
    }
    let applied: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pools[0])
            .await
            .unwrap();
    let want: Vec<(i64, bool)> = MIGRATOR.iter().map(|m| (m.version, true)).collect();
    assert_eq!(applied, want, "each migration applied once");
    // No session is left holding the migration lock.
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&pools[0])
    .await
    .unwrap();
    assert_eq!(locks, 0);
}
