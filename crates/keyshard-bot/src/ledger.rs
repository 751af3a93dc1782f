//! The usage ledger from the bot's side: each answered interaction's [`LedgerRow`] priced and
//! handed over on the step that already marks the interaction answered, so the row is
//! recorded exactly once however the process dies (DESIGN.md §8):
//!
//! - answered without a job (`/핑`, the admin views, refusals of bad input): the row rides on
//!   the claim confirmation ([`Cluster::confirm_recording`], one Redis script), which
//!   `context::Claimed` runs when the invocation ends. A kill between the answer and that
//!   script leaves no row and a lapsed claim; the first fallback's sweep takes the claim,
//!   hears "already answered" from Discord and records the row on the dead instance's behalf
//!   ([`Routing::Recovered`], `served_by` the dead instance).
//! - a job: the row rides on the done marker ([`JobContext::begin_delivery_recording`]) set
//!   by the run that posts the final answer, so a rescued, stolen, moved or restarted job has
//!   one row, written by whichever run answered.
//! - Redis unreachable (degraded): the writer's memory outbox ([`LedgerWriter::record`]), as
//!   for any row; if the script ran after all, Postgres keeps one copy.
//!
//! Rows the scripts appended are also handed to the writer
//! ([`LedgerWriter::recorded_in_redis`]), which keeps them in memory until they are in
//! Postgres: an empty Redis restart loses them no more than the others.
//!
//! Nothing here is on the acknowledgement's path: the claim confirmation and the done marker
//! run after the answer, and recording in memory does no I/O.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use keyshard_cluster::{Cluster, Confirmed, Delivery, JobContext};
use keyshard_ledger::{
    connect_lazy, LedgerError, LedgerRow, LedgerWriter, PgPool, PriceTable, Recorded, Retention,
    Status, WriterConfig,
};

use crate::config::LedgerConfig;
use crate::metrics::Metrics;

pub use keyshard_ledger::Routing;

/// The ledger handles of one instance. Cheap to share (`Arc`).
pub struct Ledger {
    writer: LedgerWriter,
    pool: PgPool,
    prices: PriceTable,
    retention: Retention,
    metrics: Arc<Metrics>,
    /// Provider/model pairs the price table cannot price, warned about once each. A std
    /// Mutex: a set lookup, never held across an await.
    unpriced: Mutex<HashSet<(String, String)>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// The pool (connecting on first use, so an instance starts while Postgres is down) and
    /// the writer for `cluster`'s instance. Needs a Tokio runtime; touches nothing yet.
    pub fn new(
        cluster: &Cluster,
        cfg: &LedgerConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Ledger, LedgerError> {
        let pool = connect_lazy(cfg.database_url.expose())?;
        Ok(Ledger {
            writer: LedgerWriter::new(cluster, pool.clone(), WriterConfig::default()),
            pool,
            prices: cfg.prices.clone(),
            retention: cfg.retention,
            metrics,
            unpriced: Mutex::default(),
        })
    }

    pub fn writer(&self) -> &LedgerWriter {
        &self.writer
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Sets the row's estimated cost from the price table; a model the table cannot price is
    /// recorded at zero cost and named once in the log, so an operator adds it to
    /// `LEDGER_PRICES`.
    pub fn price(&self, row: &mut LedgerRow) {
        row.cost_micros = self.prices.estimate_cost(row);
        if let (Some(provider), Some(model)) = (&row.provider, &row.model) {
            if !self.prices.knows(provider, model) {
                let pair = (provider.clone(), model.clone());
                let first = self
                    .unpriced
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(pair);
                if first {
                    tracing::warn!(
                        provider = %provider,
                        model = %model,
                        "no price for this model: its usage is recorded at cost 0 (add it to LEDGER_PRICES)"
                    );
                }
            }
        }
    }

    /// Confirms the claim of an interaction this instance answered without a job, with its
    /// row (see the module docs). Runs after the answer, never before.
    pub async fn confirm(&self, cluster: &Cluster, mut row: LedgerRow) {
        self.price(&mut row);
        let json = LedgerWriter::encode(&row);
        match cluster.confirm_recording(row.interaction_id, &json).await {
            Confirmed::Recorded { .. } => self.held(&row, self.writer.recorded_in_redis(&row)),
            // The fallback that swept the claim records it.
            Confirmed::NotHolder => {}
            Confirmed::Unknown => self.held(&row, self.writer.record(&row)),
        }
    }

    /// Sets the job's done marker with its row: `true` when this run posts the final answer
    /// (see the module docs). Build the row (and its times) before calling.
    pub async fn begin_delivery(&self, ctx: &JobContext, mut row: LedgerRow) -> bool {
        self.price(&mut row);
        let json = LedgerWriter::encode(&row);
        match ctx
            .begin_delivery_recording(row.interaction_id, &json)
            .await
        {
            Delivery::First { .. } => {
                self.held(&row, self.writer.recorded_in_redis(&row));
                true
            }
            Delivery::Again => false,
            Delivery::Unchecked => {
                self.held(&row, self.writer.record(&row));
                true
            }
        }
    }

    /// Counts a row this instance recorded in the usage series of `/metrics`.
    fn held(&self, row: &LedgerRow, outcome: Recorded) {
        if outcome != Recorded::Queued {
            return;
        }
        let provider = row.provider.as_deref().unwrap_or("none");
        let status = match row.status {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Refused => "refused",
        };
        let m = &self.metrics;
        m.usage_rows.inc(&[provider, status]);
        m.usage_cost_micros.add(&[provider], row.cost_micros);
        m.usage_tokens
            .add(&[provider, "in"], u64::from(row.tokens_in));
        m.usage_tokens
            .add(&[provider, "out"], u64::from(row.tokens_out));
        m.usage_images.add(&[provider], u64::from(row.images));
        m.usage_video_secs
            .add(&[provider], u64::from(row.video_secs));
    }
}
