//! [`sync_commands`]: the command set is registered with Discord once per change, not by
//! every instance on every start.
//!
//! `{c}:commands:hash` holds the hash of the set last registered. An instance whose set hashes
//! the same has nothing to do (a rolling restart to the same version registers nothing). One
//! whose hash differs takes `{c}:commands:lock` (`SET NX PX`), looks again (another may have
//! just finished), registers, stores its hash and releases the lock; the others wait for the
//! hash to change or the lock to go. Without Redis every instance registers for itself, as
//! before there was a cluster: a bot without its commands is worse than a repeated call.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use tokio::time::Instant;

use crate::{keys, Cluster};

/// How long the lock holds: a registration is one `PUT` that Discord answers in well under a
/// second; 30 s covers a slow answer and its retries, and a holder that died mid-way lets
/// the next instance try after this.
pub const COMMANDS_LOCK_TTL: Duration = Duration::from_secs(30);

/// How often a waiting instance looks whether the holder has finished: the registration takes
/// a fraction of a second, so a tenth of one adds little to a start and costs one `GET` each.
const POLL: Duration = Duration::from_millis(100);

/// The time budget of one call: registration is part of a start, not of an answer; a Redis
/// slower than this counts as unreachable.
const CALL_BUDGET: Duration = Duration::from_millis(500);

/// Deletes the lock only if it is still ours (it may have lapsed and been taken since).
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE_SCRIPT));

/// What [`sync_commands`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandSync {
    /// The same set was registered already: no call to Discord.
    AlreadyRegistered,
    /// This instance registered the set.
    Registered,
    /// Redis was unreachable, so this instance registered for itself.
    RegisteredWithoutRedis,
}

/// Registers the command set whose hash is `hash` unless the cluster already did (see the
/// module doc). `register` makes the call to Discord; its error is returned as is (and the
/// lock released, so another instance or a later try can register). Long because each of
/// its steps (read the hash, take the lock, read again, register, store, release) has its
/// own answer to Redis being unreachable, said next to the step.
pub async fn sync_commands<F, Fut, E>(
    cluster: &Cluster,
    hash: &str,
    mut register: F,
) -> Result<CommandSync, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let redis = cluster.redis();
    let name = &cluster.config().cluster_name;
    let hash_key = keys::commands_hash(name);
    let lock_key = keys::commands_lock(name);
    let me = format!("{}-{}", cluster.instance_id(), crate::clock::now_ms());
    let read_hash = || {
        let key = hash_key.clone();
        let redis = redis.clone();
        async move {
            redis
                .run("read command hash", CALL_BUDGET, |mut c| async move {
                    redis::cmd("GET")
                        .arg(&key)
                        .query_async::<Option<String>>(&mut c)
                        .await
                })
                .await
        }
    };
    loop {
        let current = match read_hash().await {
            Ok(h) => h,
            Err(e) => return without_redis(&mut register, &e).await,
        };
        if current.as_deref() == Some(hash) {
            return Ok(CommandSync::AlreadyRegistered);
        }
        let lock = {
            let (key, me) = (lock_key.clone(), me.clone());
            let ttl = COMMANDS_LOCK_TTL.as_millis() as u64;
            redis
                .run("take command lock", CALL_BUDGET, |mut c| async move {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&me)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl)
                        .query_async::<Option<String>>(&mut c)
                        .await
                })
                .await
        };
        let took = match lock {
            Ok(answer) => answer.is_some(),
            Err(e) => return without_redis(&mut register, &e).await,
        };
        if !took {
            wait_for_holder(cluster, &hash_key, &lock_key, hash).await;
            continue;
        }
        // Another instance may have registered between the read and the lock.
        if read_hash().await.ok().flatten().as_deref() == Some(hash) {
            release(cluster, &lock_key, &me).await;
            return Ok(CommandSync::AlreadyRegistered);
        }
        let result = register().await;
        if result.is_ok() {
            let (key, value) = (hash_key.clone(), hash.to_owned());
            let stored = redis
                .run("store command hash", CALL_BUDGET, |mut c| async move {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&value)
                        .query_async::<()>(&mut c)
                        .await
                })
                .await;
            if let Err(e) = stored {
                // Registered all the same; the next start registers once more.
                tracing::warn!(error = %e, "registered the commands but could not store their hash");
            }
        }
        release(cluster, &lock_key, &me).await;
        return result.map(|()| CommandSync::Registered);
    }
}

async fn without_redis<F, Fut, E>(
    register: &mut F,
    e: &crate::ClusterError,
) -> Result<CommandSync, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    tracing::warn!(error = %e, "Redis unreachable: registering the commands without the cluster's lock");
    register().await?;
    Ok(CommandSync::RegisteredWithoutRedis)
}

/// Waits until the hash is `hash` or the lock is gone (bounded by the lock's TTL, plus a
/// poll), whichever comes first.
async fn wait_for_holder(cluster: &Cluster, hash_key: &str, lock_key: &str, hash: &str) {
    let redis = cluster.redis();
    let until = Instant::now() + COMMANDS_LOCK_TTL + POLL;
    while Instant::now() < until {
        tokio::time::sleep(POLL).await;
        let (h, k) = (hash_key.to_owned(), lock_key.to_owned());
        let state = redis
            .run("watch command lock", CALL_BUDGET, |mut c| async move {
                redis::pipe()
                    .cmd("GET")
                    .arg(&h)
                    .cmd("EXISTS")
                    .arg(&k)
                    .query_async::<(Option<String>, bool)>(&mut c)
                    .await
            })
            .await;
        match state {
            Ok((current, locked)) => {
                if current.as_deref() == Some(hash) || !locked {
                    return;
                }
            }
            // The caller's next read finds Redis gone and registers by itself.
            Err(_) => return,
        }
    }
}

async fn release(cluster: &Cluster, lock_key: &str, me: &str) {
    let (key, me) = (lock_key.to_owned(), me.to_owned());
    let result = cluster
        .redis()
        .run("release command lock", CALL_BUDGET, |mut c| async move {
            RELEASE.key(&key).arg(&me).invoke_async::<i64>(&mut c).await
        })
        .await;
    if let Err(e) = result {
        // It lapses by itself after its TTL.
        tracing::debug!(error = %e, "could not release the command lock");
    }
}
