//! Conversation memory for `/채팅`: the last turns per user and channel, in Redis, so a later
//! turn continues the conversation whichever instance serves it.
//!
//! `{c}:conv:{user}:{channel}` is a list of JSON [`Turn`]s, trimmed to the last
//! `max_turns` exchanges and expiring `ttl` after the last one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{keys, Cluster, ClusterError};

/// Reads and writes are on the answer path of a job (not the ack path); half a second is
/// plenty for a list of a few kilobytes.
const BUDGET: Duration = Duration::from_millis(500);

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// The conversation store of the cluster.
#[derive(Clone)]
pub struct Memory {
    cluster: Cluster,
    /// Exchanges (a question and its answer) kept per conversation.
    pub max_turns: usize,
    /// How long a conversation lasts after its last exchange.
    pub ttl: Duration,
}

impl Memory {
    pub fn new(cluster: &Cluster, max_turns: usize, ttl: Duration) -> Memory {
        Memory {
            cluster: cluster.clone(),
            max_turns: max_turns.max(1),
            ttl,
        }
    }

    fn key(&self, user: u64, channel: u64) -> String {
        keys::conversation(&self.cluster.config().cluster_name, user, channel)
    }

    /// The conversation so far, oldest first (empty when none or expired).
    pub async fn load(&self, user: u64, channel: u64) -> Result<Vec<Turn>, ClusterError> {
        let key = self.key(user, channel);
        let raw: Vec<String> = self
            .cluster
            .redis()
            .run("conversation read", BUDGET, move |mut c| async move {
                redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(raw
            .iter()
            .filter_map(|s| serde_json::from_str(s).ok())
            .collect())
    }

    /// Appends one exchange and keeps the last `max_turns` of them.
    pub async fn append(
        &self,
        user: u64,
        channel: u64,
        question: &str,
        answer: &str,
    ) -> Result<(), ClusterError> {
        let key = self.key(user, channel);
        let turns = [
            Turn {
                role: "user".into(),
                content: question.into(),
            },
            Turn {
                role: "assistant".into(),
                content: answer.into(),
            },
        ];
        let items: Vec<String> = turns
            .iter()
            .map(|t| serde_json::to_string(t).expect("turns serialize"))
            .collect();
        let keep = (self.max_turns * 2) as i64;
        let ttl = self.ttl.as_millis() as u64;
        self.cluster
            .redis()
            .run("conversation write", BUDGET, move |mut c| async move {
                redis::pipe()
                    .atomic()
                    .cmd("RPUSH")
                    .arg(&key)
                    .arg(&items)
                    .ignore()
                    .cmd("LTRIM")
                    .arg(&key)
                    .arg(-keep)
                    .arg(-1)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(ttl)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    /// Forgets the conversation (`새대화`).
    pub async fn reset(&self, user: u64, channel: u64) -> Result<(), ClusterError> {
        let key = self.key(user, channel);
        self.cluster
            .redis()
            .run("conversation reset", BUDGET, move |mut c| async move {
                redis::cmd("DEL").arg(&key).query_async::<()>(&mut c).await
            })
            .await
    }
}
