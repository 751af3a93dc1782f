//! Fake Discord: REST under `/api/v10` and a gateway websocket, one axum server on loopback.
//!
//! Instance `k` is pointed at `http://127.0.0.1:{port}/i/{k}` (its `DISCORD_API_BASE`), so every
//! REST call and every gateway session is attributed to the instance that made it; the bare
//! `/api/v10` and `/gateway` count as instance 0.
//!
//! - [`FakeDiscord`]: start it, broadcast interactions to every session, drop a session, read
//!   and await the records.
//! - `gateway`: HELLO, heartbeat ACK, IDENTIFY → READY (under Discord's session rules:
//!   one IDENTIFY per bucket per window, a daily count, 4011 for a bot that must shard), RESUME
//!   with replay, dispatches by shard, the close handshake.
//! - `rest`: gateway URL (`/gateway` and `/gateway/bot`), application, commands, callbacks,
//!   webhooks, channel messages.
//! - [`record`]: what is remembered per interaction, and the rules (ack, duplicate, completion)
//!   the report is computed with.
//! - `payload`: the JSON objects, with every field serenity needs.
//! - `snowflake`: ids that carry their creation time, as Discord's do.
//! - [`Advertised`]: the address put in URLs, when the instances reach the fake by another name
//!   than the one it binds (a compose service name).

mod advertised;
mod config;
mod drain;
mod gateway;
mod identify;
mod payload;
pub mod record;
mod rest;
mod snowflake;
mod types;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use identify::IdentifyLedger;

pub use advertised::Advertised;
pub use config::{
    DiscordConfig, GatewayRules, CLOSE_AUTHENTICATION_FAILED, CLOSE_INVALID_SHARD,
    CLOSE_SHARDING_REQUIRED, MAX_GUILDS_PER_SHARD,
};
pub use record::{
    is_waiting_edit, CallbackAttempt, Completion, FileRecord, InteractionRecord, MessageKind,
    MessageRecord, WAITING_PREFIX,
};
pub use snowflake::{created_at_ms, snowflake_at};
pub use types::{
    GatewayStats, InteractionSpec, OptionValue, RegisteredCommand, SentInteraction, SessionInfo,
    SessionStartLimit,
};

/// The per-file upload limit every interaction advertises (Discord's default, 10 MiB).
pub const ATTACHMENT_SIZE_LIMIT: usize = 10 * 1024 * 1024;

/// A whole request may carry at most 25 MiB; beyond that Discord answers 413 / 40005.
pub const REQUEST_SIZE_LIMIT: usize = 25 * 1024 * 1024;

/// The guild the simulated users are in, and its default channel.
pub const SIM_GUILD_ID: u64 = 1_180_000_000_000_000_001;

/// The `k`-th simulated guild (0 is [`SIM_GUILD_ID`]): consecutive values of `id >> 22`, so
/// guilds spread evenly over the shards (`(id >> 22) % num_shards`).
pub fn sim_guild(k: u32) -> u64 {
    SIM_GUILD_ID + (u64::from(k) << 22)
}
pub const SIM_CHANNEL_ID: u64 = 1_180_000_000_000_000_101;

/// The fake Discord server. Cheap to clone; the server stops when the last clone is dropped.
#[derive(Clone)]
pub struct FakeDiscord {
    shared: Arc<Shared>,
    _guard: Arc<ServerGuard>,
}

/// Stops the server and closes every websocket when the last [`FakeDiscord`] goes away.
struct ServerGuard {
    shutdown: CancellationToken,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// State shared by the handle, the REST handlers and the gateway connections.
pub(crate) struct Shared {
    pub(crate) cfg: DiscordConfig,
    /// The address the fake gives out in URLs (the gateway URL, attachment URLs).
    pub(crate) addr: Advertised,
    pub(crate) state: Mutex<State>,
    /// Woken after every change of the records or the sessions.
    pub(crate) changed: Notify,
    pub(crate) shutdown: CancellationToken,
    next_low: AtomicU32,
}

/// Everything behind the one lock. A std mutex: every critical section is short and never
/// awaits, and the websocket writers get their frames through channels, outside the lock.
pub(crate) struct State {
    pub(crate) records: Vec<InteractionRecord>,
    pub(crate) by_id: HashMap<u64, usize>,
    pub(crate) by_token: HashMap<String, usize>,
    pub(crate) sessions: Vec<Session>,
    pub(crate) commands: Vec<RegisteredCommand>,
    pub(crate) gateway_stats: HashMap<u32, GatewayStats>,
    /// Per interaction: the content of the original response (for `GET @original`).
    pub(crate) originals: HashMap<u64, OriginalMessage>,
    /// Followup message id → (interaction id, its current content).
    pub(crate) followups: HashMap<u64, (u64, OriginalMessage)>,
    /// Channel messages no interaction could be attributed to.
    pub(crate) unattributed: Vec<MessageRecord>,
    /// REST calls by `(instance, route kind)`.
    pub(crate) rest_calls: std::collections::BTreeMap<(u32, &'static str), u64>,
    /// REST calls no route matched: `(instance, method, path)` — a fidelity gap to look at.
    pub(crate) unknown_routes: Vec<(u32, String, String)>,
    /// `PUT …/commands` calls per instance (global and guild).
    pub(crate) command_puts: std::collections::BTreeMap<u32, u32>,
    pub(crate) identify: IdentifyLedger,
    next_session: u64,
    next_conn: u64,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct OriginalMessage {
    pub(crate) message_id: u64,
    pub(crate) content: String,
    pub(crate) embeds: Vec<serde_json::Value>,
    pub(crate) files: Vec<FileRecord>,
}

/// What a websocket writer task is told to do.
#[derive(Debug)]
pub(crate) enum Out {
    Text(String),
    /// Close the socket with this code (the server ends the session's connection).
    Close(u16),
}

/// A live websocket connection's outbox.
pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::UnboundedSender<Out>,
}

/// A gateway session: it outlives its socket so that a RESUME can replay what it missed.
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) instance: u32,
    /// `[shard_id, num_shards]`.
    pub(crate) shard: [u32; 2],
    pub(crate) seq: u64,
    pub(crate) buffer: VecDeque<(u64, String)>,
    pub(crate) conn: Option<Conn>,
    pub(crate) disconnected_at: Option<Instant>,
}

impl Session {
    /// Sends (or, without a socket, only buffers) one dispatch with the next sequence number.
    pub(crate) fn dispatch(&mut self, event: &str, d: &str, limit: usize) {
        self.seq += 1;
        let frame = payload::dispatch_frame(self.seq, event, d);
        if let Some(conn) = &self.conn {
            if conn.tx.send(Out::Text(frame.clone())).is_err() {
                self.detach();
            }
        }
        self.buffer.push_back((self.seq, frame));
        while self.buffer.len() > limit {
            self.buffer.pop_front();
        }
    }

    pub(crate) fn detach(&mut self) {
        if self.conn.take().is_some() {
            self.disconnected_at = Some(Instant::now());
        }
    }

    /// Whether Discord sends this session an event of `guild` (`None`: a DM): a guild's
    /// events go to shard `(guild_id >> 22) % num_shards`, everything else to shard 0.
    pub(crate) fn receives(&self, guild: Option<u64>) -> bool {
        let [id, total] = self.shard;
        match guild {
            Some(g) => (g >> 22) % u64::from(total.max(1)) == u64::from(id),
            None => id == 0,
        }
    }
}

impl State {
    fn new(rules: &GatewayRules) -> Self {
        Self {
            records: Vec::new(),
            by_id: HashMap::new(),
            by_token: HashMap::new(),
            sessions: Vec::new(),
            commands: Vec::new(),
            gateway_stats: HashMap::new(),
            originals: HashMap::new(),
            followups: HashMap::new(),
            unattributed: Vec::new(),
            rest_calls: Default::default(),
            unknown_routes: Vec::new(),
            command_puts: Default::default(),
            identify: IdentifyLedger::new(rules),
            next_session: 0,
            next_conn: 0,
        }
    }

    pub(crate) fn stats(&mut self, instance: u32) -> &mut GatewayStats {
        self.gateway_stats.entry(instance).or_default()
    }

    pub(crate) fn next_session_id(&mut self, instance: u32) -> String {
        self.next_session += 1;
        format!("sim{instance}x{:08x}", self.next_session)
    }

    pub(crate) fn next_conn_id(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh snowflake for "now", unique within this fake.
    pub(crate) fn snowflake(&self) -> u64 {
        let low = self.next_low.fetch_add(1, Ordering::Relaxed);
        snowflake_at(unix_ms(), low)
    }

    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Wall-clock Unix milliseconds (snowflakes carry wall-clock time, as Discord's do).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl FakeDiscord {
    /// Binds `127.0.0.1:0` and serves REST and the gateway until the last handle is dropped.
    pub async fn start(cfg: DiscordConfig) -> anyhow::Result<FakeDiscord> {
        Self::start_on(cfg, SocketAddr::from(([127, 0, 0, 1], 0)), None).await
    }

    /// [`Self::start`] on `bind`, giving out `advertise` (a host name, with or without a port)
    /// in the URLs it returns, for instances that reach it by another name: a compose service
    /// name (see [`Advertised`]).
    pub async fn start_on(
        cfg: DiscordConfig,
        bind: SocketAddr,
        advertise: Option<&str>,
    ) -> anyhow::Result<FakeDiscord> {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("binding the fake Discord on {bind}"))?;
        let addr = Advertised::new(listener.local_addr()?, advertise);
        let shutdown = CancellationToken::new();
        let state = Mutex::new(State::new(&cfg.gateway));
        let shared = Arc::new(Shared {
            cfg,
            addr,
            state,
            changed: Notify::new(),
            shutdown: shutdown.clone(),
            next_low: AtomicU32::new(0),
        });
        let app = rest::router(shared.clone());
        let stop = shutdown.clone();
        // Without TCP_NODELAY, back-to-back small frames (a dispatch right after another, a
        // response after a request) meet Nagle and the client's delayed ACK: a 40 ms stall
        // that would show up as ack latency that is not the bot's.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "fake Discord server stopped");
            }
        });
        tracing::debug!(addr = %shared.addr, "fake Discord listening");
        Ok(FakeDiscord {
            shared,
            _guard: Arc::new(ServerGuard { shutdown }),
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &DiscordConfig {
        &self.shared.cfg
    }

    /// `http://127.0.0.1:{port}`.
    pub fn base_url(&self) -> String {
        self.shared.base_url()
    }

    /// The `DISCORD_API_BASE` for instance `instance`: `http://127.0.0.1:{port}/i/{instance}`.
    pub fn api_base(&self, instance: u32) -> String {
        format!("{}/i/{instance}", self.base_url())
    }

    /// The gateway URL instance `instance` is given.
    pub fn gateway_url(&self, instance: u32) -> String {
        format!("ws://{}/i/{instance}/gateway", self.shared.addr)
    }

    /// Waits until at least `n` sessions are connected and READY.
    pub async fn wait_sessions(&self, n: usize, deadline: Duration) -> anyhow::Result<()> {
        let ok = self
            .wait_until(deadline, |s| {
                s.sessions.iter().filter(|x| x.conn.is_some()).count() >= n
            })
            .await;
        anyhow::ensure!(
            ok,
            "only {} of {n} gateway sessions were ready after {deadline:?}",
            self.sessions().iter().filter(|s| s.connected).count()
        );
        Ok(())
    }

    /// Dispatches an INTERACTION_CREATE to every live session of the shard its guild belongs to
    /// (shard 0 for a DM), and buffers it for such sessions waiting to resume. Every instance
    /// runs every shard, so each gets it once. The id is a snowflake of now.
    pub fn send_interaction(&self, spec: InteractionSpec) -> SentInteraction {
        let shared = &self.shared;
        let id = shared.snowflake();
        let token = format!("aW50ZXJhY3Rpb246{id:x}{:08x}", id.wrapping_mul(0x9e37_79b9));
        let sent_at = Instant::now();
        let mut st = shared.lock();
        let command_id = st
            .commands
            .iter()
            .find(|c| c.name == spec.command)
            .map_or(id ^ 0xc0ffee, |c| c.id);
        let d = payload::interaction(shared.cfg.application_id, id, &token, command_id, &spec)
            .to_string();
        let resume_window = shared.cfg.resume_window;
        st.sessions.retain(|s| {
            s.conn.is_some()
                || s.disconnected_at
                    .is_some_and(|t| t.elapsed() < resume_window)
        });
        let mut delivered_to = Vec::new();
        let limit = shared.cfg.replay_buffer;
        for session in st.sessions.iter_mut().filter(|s| s.receives(spec.guild_id)) {
            session.dispatch("INTERACTION_CREATE", &d, limit);
            if !delivered_to.contains(&session.instance) {
                delivered_to.push(session.instance);
            }
        }
        let idx = st.records.len();
        st.records.push(InteractionRecord {
            id,
            command: spec.command.clone(),
            user_id: spec.user_id,
            guild_id: spec.guild_id,
            channel_id: spec.channel_id,
            sent_at,
            sent_unix_ms: created_at_ms(id),
            delivered_to: delivered_to.clone(),
            callbacks: Vec::new(),
            messages: Vec::new(),
        });
        st.by_id.insert(id, idx);
        st.by_token.insert(token.clone(), idx);
        drop(st);
        shared.changed.notify_waiters();
        SentInteraction {
            id,
            token,
            sent_at,
            delivered_to,
        }
    }

    /// Closes instance `instance`'s websockets (every shard) with close code 4000, as Discord
    /// does on a server-side hiccup: the sessions stay resumable and collect what they miss.
    pub fn drop_session(&self, instance: u32) {
        let mut st = self.shared.lock();
        for s in st.sessions.iter_mut().filter(|s| s.instance == instance) {
            if let Some(conn) = &s.conn {
                let _ = conn.tx.send(Out::Close(4000));
            }
            s.detach();
        }
        drop(st);
        self.shared.changed.notify_waiters();
    }

    /// Sends op 9 INVALID_SESSION to every connected session of `instance`, as Discord does
    /// when it ends a session on its side. `resumable`: the session keeps collecting events
    /// and a RESUME picks them up; otherwise it is gone and the client must IDENTIFY again.
    /// Returns how many sessions were invalidated.
    pub fn invalidate_sessions(&self, instance: u32, resumable: bool) -> u32 {
        let mut st = self.shared.lock();
        let mut n = 0;
        for s in st.sessions.iter_mut().filter(|s| s.instance == instance) {
            if let Some(conn) = &s.conn {
                let _ = conn.tx.send(Out::Text(payload::invalid_session(resumable)));
                n += 1;
            }
            s.detach();
        }
        if !resumable {
            st.sessions.retain(|s| s.instance != instance);
        }
        st.stats(instance).invalidated += n;
        drop(st);
        self.shared.changed.notify_waiters();
        n
    }

    /// `PUT …/commands` calls instance `instance` made (0 for the bare prefix).
    pub fn command_puts(&self, instance: u32) -> u32 {
        self.shared
            .lock()
            .command_puts
            .get(&instance)
            .copied()
            .unwrap_or(0)
    }

    /// `PUT …/commands` calls of every instance together.
    pub fn command_puts_total(&self) -> u32 {
        self.shared.lock().command_puts.values().sum()
    }

    /// The day's session starts as `GET /gateway/bot` reports them now.
    pub fn session_start_limit(&self) -> SessionStartLimit {
        let rules = &self.shared.cfg.gateway;
        self.shared.lock().identify.limit(rules)
    }

    /// Whether the day's IDENTIFYs ran out, so Discord reset the token and ended every session.
    pub fn token_reset(&self) -> bool {
        self.shared.lock().identify.token_reset
    }

    /// The record of one interaction.
    pub fn interaction(&self, id: u64) -> Option<InteractionRecord> {
        let st = self.shared.lock();
        st.by_id.get(&id).map(|&i| st.records[i].clone())
    }

    /// Every record, in dispatch order.
    pub fn records(&self) -> Vec<InteractionRecord> {
        self.shared.lock().records.clone()
    }

    /// Runs `f` over the records in place, without copying them (for counts taken often
    /// during a run); the fake waits while `f` runs, so keep it short.
    pub fn inspect_records<R>(&self, f: impl FnOnce(&[InteractionRecord]) -> R) -> R {
        f(&self.shared.lock().records)
    }

    /// Channel messages that no interaction could be attributed to.
    pub fn unattributed_messages(&self) -> Vec<MessageRecord> {
        self.shared.lock().unattributed.clone()
    }

    /// REST calls that matched no route: `(instance, method, path)`.
    pub fn unknown_routes(&self) -> Vec<(u32, String, String)> {
        self.shared.lock().unknown_routes.clone()
    }

    /// REST calls by `(instance, route kind)`: `gateway`, `application`, `commands`,
    /// `callback`, `followup`, `webhook_message`, `channel_message`, `other`.
    pub fn rest_calls(&self) -> std::collections::BTreeMap<(u32, &'static str), u64> {
        self.shared.lock().rest_calls.clone()
    }

    /// The commands registered so far (every instance registers the same set).
    pub fn commands(&self) -> Vec<RegisteredCommand> {
        self.shared.lock().commands.clone()
    }

    /// The gateway sessions the fake knows.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.shared
            .lock()
            .sessions
            .iter()
            .map(|s| SessionInfo {
                session_id: s.id.clone(),
                instance: s.instance,
                shard: s.shard,
                connected: s.conn.is_some(),
                seq: s.seq,
            })
            .collect()
    }

    /// Identify/resume counters of one instance.
    pub fn gateway_stats(&self, instance: u32) -> GatewayStats {
        self.shared
            .lock()
            .gateway_stats
            .get(&instance)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `pred` holds over the records, re-checking after every change (never by
    /// sleeping). Returns whether it held before `deadline` passed.
    pub async fn wait_for<F>(&self, mut pred: F, deadline: Duration) -> bool
    where
        F: FnMut(&[InteractionRecord]) -> bool,
    {
        self.wait_until(deadline, |s| pred(&s.records)).await
    }

    /// Waits until instance `instance` has had more than `than` IDENTIFYs accepted; `false`
    /// when that did not happen within `deadline`.
    pub async fn wait_identifies(&self, instance: u32, than: u32, deadline: Duration) -> bool {
        self.wait_until(deadline, |s| {
            s.gateway_stats
                .get(&instance)
                .is_some_and(|g| g.identifies > than)
        })
        .await
    }

    /// Waits for any change to the records or sessions; `false` when none came within
    /// `deadline` (used to let streamed answers settle).
    pub async fn wait_change(&self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, self.shared.changed.notified())
            .await
            .is_ok()
    }

    async fn wait_until<F>(&self, deadline: Duration, mut pred: F) -> bool
    where
        F: FnMut(&State) -> bool,
    {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            // Register interest before checking, so a change between the check and the
            // await still wakes us.
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if pred(&self.shared.lock()) {
                return true;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return pred(&self.shared.lock());
            }
        }
    }
}
