//! Fake Discord: REST under `/api/v10` and a gateway websocket, one axum server on loopback.
//!
//! Instance `k` is pointed at `http://127.0.0.1:{port}/i/{k}` (its `DISCORD_API_BASE`), so every
//! REST call and every gateway session is attributed to the instance that made it; the bare
//! `/api/v10` and `/gateway` count as instance 0.
//!
//! - [`FakeDiscord`]: start it, broadcast interactions to every session, drop a session, read
//!   and await the records.
//! - `gateway`: HELLO, heartbeat ACK, IDENTIFY → READY, RESUME with replay, dispatches.
//! - `rest`: gateway URL, application, commands, callbacks, webhooks, channel messages.
//! - [`record`]: what is remembered per interaction, and the rules (ack, duplicate, completion)
//!   the report is computed with.
//! - `payload`: the JSON objects, with every field serenity needs.
//! - `snowflake`: ids that carry their creation time, as Discord's do.
//! - [`Advertised`]: the address put in URLs, when the instances reach the fake by another name
//!   than the one it binds (a compose service name).

mod advertised;
mod gateway;
mod payload;
pub mod record;
mod rest;
mod snowflake;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

pub use advertised::Advertised;
pub use record::{
    CallbackAttempt, Completion, FileRecord, InteractionRecord, MessageKind, MessageRecord,
};
pub use snowflake::{created_at_ms, snowflake_at};

/// The per-file upload limit every interaction advertises (Discord's default, 10 MiB).
pub const ATTACHMENT_SIZE_LIMIT: usize = 10 * 1024 * 1024;

/// A whole request may carry at most 25 MiB; beyond that Discord answers 413 / 40005.
pub const REQUEST_SIZE_LIMIT: usize = 25 * 1024 * 1024;

/// The guild the simulated users are in, and its default channel.
pub const SIM_GUILD_ID: u64 = 1_180_000_000_000_000_001;
pub const SIM_CHANNEL_ID: u64 = 1_180_000_000_000_000_101;

/// Timing rules and identity of the fake.
#[derive(Clone, Debug)]
pub struct DiscordConfig {
    /// The bot's application id (and user id), as READY announces it.
    pub application_id: u64,
    /// How long after the dispatch the first callback is accepted (Discord: 3 s).
    pub ack_window: Duration,
    /// How long an interaction token works for webhooks (Discord: 15 min).
    pub token_ttl: Duration,
    /// The heartbeat interval HELLO announces (Discord: 41.25 s).
    pub heartbeat_interval: Duration,
    /// Dispatches kept per session for RESUME; older ones force a fresh IDENTIFY.
    pub replay_buffer: usize,
    /// How long a session without a socket keeps collecting dispatches for a RESUME.
    pub resume_window: Duration,
    /// `(instance, delay)`: the answers to that instance's interaction callbacks are held for
    /// `delay` after the fake has decided them (a slow path between one instance and
    /// Discord). The callback counts as accepted when decided, so a slow instance's claim can
    /// lapse after it answered, and a test can kill it between its answer and its next step.
    pub callback_delay: Option<(u32, Duration)>,
}

impl Default for DiscordConfig {
    fn default() -> Self {
        Self {
            application_id: 1_170_000_000_000_000_001,
            ack_window: Duration::from_secs(3),
            token_ttl: Duration::from_secs(15 * 60),
            heartbeat_interval: Duration::from_millis(41_250),
            // Minutes of traffic at the simulator's rates; a killed instance's session must
            // not grow without bound while nobody resumes it.
            replay_buffer: 20_000,
            // Discord keeps a session resumable for a short while; a restarted process
            // identifies anew, so only a dropped socket within this window resumes.
            resume_window: Duration::from_secs(60),
            callback_delay: None,
        }
    }
}

/// One option value in `data.options`.
#[derive(Clone, Debug, PartialEq)]
pub enum OptionValue {
    String(String, String),
    Integer(String, i64),
    Bool(String, bool),
    /// A user option; the user also goes into `data.resolved.users`.
    User(String, u64),
}

/// What to send: a chat-input command from one user, in a guild or a DM.
#[derive(Clone, Debug, PartialEq)]
pub struct InteractionSpec {
    pub command: String,
    pub user_id: u64,
    pub username: String,
    /// `None` sends a DM interaction (top-level `user`, no `member`).
    pub guild_id: Option<u64>,
    pub channel_id: u64,
    pub options: Vec<OptionValue>,
}

impl InteractionSpec {
    /// A command from `user_id` in the simulated guild.
    pub fn guild(command: &str, user_id: u64) -> Self {
        Self {
            command: command.into(),
            user_id,
            username: format!("user{user_id}"),
            guild_id: Some(SIM_GUILD_ID),
            channel_id: SIM_CHANNEL_ID,
            options: Vec::new(),
        }
    }

    /// A command from `user_id` in a DM with the bot (the channel id is derived from the user).
    pub fn dm(command: &str, user_id: u64) -> Self {
        Self {
            guild_id: None,
            channel_id: user_id ^ 0x5a5a,
            ..Self::guild(command, user_id)
        }
    }

    pub fn string(mut self, name: &str, value: &str) -> Self {
        self.options
            .push(OptionValue::String(name.into(), value.into()));
        self
    }

    pub fn integer(mut self, name: &str, value: i64) -> Self {
        self.options.push(OptionValue::Integer(name.into(), value));
        self
    }

    pub fn bool(mut self, name: &str, value: bool) -> Self {
        self.options.push(OptionValue::Bool(name.into(), value));
        self
    }

    pub fn user(mut self, name: &str, user_id: u64) -> Self {
        self.options.push(OptionValue::User(name.into(), user_id));
        self
    }
}

/// What [`FakeDiscord::send_interaction`] dispatched.
#[derive(Clone)]
pub struct SentInteraction {
    pub id: u64,
    /// The interaction token (a secret in real Discord: `Debug` hides it).
    pub token: String,
    pub sent_at: Instant,
    pub delivered_to: Vec<u32>,
}

impl fmt::Debug for SentInteraction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentInteraction")
            .field("id", &self.id)
            .field("token", &"***")
            .field("delivered_to", &self.delivered_to)
            .finish()
    }
}

/// A session's view for tests and reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub session_id: String,
    pub instance: u32,
    pub connected: bool,
    pub seq: u64,
}

/// Gateway counters per instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayStats {
    pub identifies: u32,
    pub resumes: u32,
    pub invalid_sessions: u32,
}

/// A command registration as the fake stored it.
#[derive(Clone, Debug)]
pub struct RegisteredCommand {
    pub id: u64,
    pub name: String,
    pub guild_id: Option<u64>,
    pub instance: u32,
    pub body: serde_json::Value,
}

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
#[derive(Default)]
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
}

impl State {
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
        let shared = Arc::new(Shared {
            cfg,
            addr,
            state: Mutex::new(State::default()),
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

    /// Broadcasts an INTERACTION_CREATE to every live session (and buffers it for sessions
    /// waiting to resume). The id is a snowflake of now.
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
        for session in st.sessions.iter_mut() {
            session.dispatch("INTERACTION_CREATE", &d, limit);
            delivered_to.push(session.instance);
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

    /// Closes instance `instance`'s websocket(s) with close code 4000, as Discord does on a
    /// server-side hiccup: the session stays resumable and collects what it misses.
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
