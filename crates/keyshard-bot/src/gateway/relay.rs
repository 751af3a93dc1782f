//! The gateway relay: a websocket server on loopback that every shard of this process connects
//! to instead of Discord, forwarding frames both ways to the real gateway URL and holding
//! only the IDENTIFY until the cluster's queue grants it.
//!
//! Why a relay: serenity 0.12 sends IDENTIFY the moment HELLO arrives, from its own
//! `ShardQueuer` (first start, and every restart after a non-resumable invalidation or a
//! failed resume), and offers no hook to make it wait on anything but its own 5 s timer. It
//! does read the gateway URL from `Client::ws_url` for every connection, IDENTIFY and RESUME
//! alike, so pointing that at this relay puts every session start of the process through one
//! place that can wait.
//!
//! While an IDENTIFY is held, HELLO, heartbeats and their ACKs keep flowing (serenity needs
//! HELLO within 15 s and an ACK for every heartbeat), and any other frame serenity sends
//! queues behind the IDENTIFY. RESUMEs pass at once: Discord does not count them. Binary
//! (zlib) frames pass untouched; only small text frames are parsed (client frames, and
//! server frames short enough to be op 9), so dispatches cost one loopback hop and no JSON.
//!
//! A [`Sieve`] may take a dispatch over: serenity then reads a small stand-in with the same
//! sequence number. The edge's takes the interactions this instance only waits for as a
//! fallback, so that serenity does not decode every peer's interaction.
//!
//! Closing: a close frame from serenity goes upstream, and once Discord has answered (or
//! after [`CLOSE_ECHO`]) the relay answers serenity, so serenity's shutdown sees its handshake
//! complete. A socket that serenity drops without a close frame (it is about to resume on a
//! new one) is closed upstream with 4000, which keeps the session resumable; 1000 would end it.
//! [`Relay::close_all`] ends what is left at a graceful stop.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use gateway_ws::tungstenite::handshake::server::{Request, Response};
use gateway_ws::tungstenite::protocol::frame::coding::CloseCode;
use gateway_ws::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use gateway_ws::tungstenite::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::shards::ShardBoard;

/// How long the relay waits for Discord to answer a close frame before it answers serenity
/// itself: Discord echoes at once, so two seconds only matter for a link that is already
/// dead, and they keep a graceful stop short.
pub const CLOSE_ECHO: Duration = Duration::from_secs(2);

/// Server frames up to this size are parsed for their opcode (op 9 is about 40 bytes, a
/// heartbeat ACK about 20); dispatches are larger and pass unparsed.
const PEEK_LIMIT: usize = 256;

/// The close code for an upstream socket that serenity dropped without a close frame, and for
/// a downstream one whose upstream failed: Discord keeps the session resumable for any code
/// but 1000/1001, and serenity resumes after it.
const RECONNECT: u16 = 4000;

/// What grants an IDENTIFY: the cluster's queue in production, something simpler in tests.
pub trait Gate: Send + Sync + 'static {
    /// Resolves when shard `shard` may IDENTIFY.
    fn acquire(&self, shard: u32) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
}

impl Gate for keyshard_cluster::IdentifyQueue {
    fn acquire(&self, shard: u32) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let queue = self.clone();
        Box::pin(async move {
            let grant = queue.acquire(shard).await;
            tracing::info!(
                shard,
                remaining = ?grant.remaining,
                local = grant.local,
                "IDENTIFY granted"
            );
        })
    }
}

/// What may take a dispatch over before serenity reads it: the edge's sieve (`edge::sieve`),
/// which keeps the interactions this instance is only a fallback for.
pub trait Sieve: Send + Sync + 'static {
    /// A dispatch for `shard` (a server text frame too large to be a control frame):
    /// `Some(stand_in)` when the sieve took `frame` over, and serenity reads `stand_in`
    /// instead (which carries the frame's sequence number on); `None` to pass it on.
    fn sift(&self, shard: u32, frame: &str) -> Option<String>;
}

/// The relay: its listener and connections.
pub struct Relay {
    addr: SocketAddr,
    closing: CancellationToken,
    tracker: TaskTracker,
}

struct Shared {
    upstream: String,
    gate: Arc<dyn Gate>,
    board: Arc<ShardBoard>,
    sieve: Option<Arc<dyn Sieve>>,
    next_conn: AtomicU64,
    closing: CancellationToken,
}

type Ws = gateway_ws::WebSocketStream<TcpStream>;
type Up = gateway_ws::WebSocketStream<gateway_ws::MaybeTlsStream<TcpStream>>;

/// The same limits serenity sets on its own gateway socket: READY of a large bot is big.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig {
        max_message_size: None,
        max_frame_size: None,
        ..WebSocketConfig::default()
    }
}

impl Relay {
    /// Listens on a free loopback port and relays every connection to `upstream` (the gateway
    /// URL Discord gave, without a query string), each dispatch through `sieve` when given.
    pub async fn start(
        upstream: String,
        gate: Arc<dyn Gate>,
        board: Arc<ShardBoard>,
        sieve: Option<Arc<dyn Sieve>>,
    ) -> std::io::Result<Relay> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let closing = CancellationToken::new();
        let tracker = TaskTracker::new();
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            gate,
            board,
            sieve,
            next_conn: AtomicU64::new(1),
            closing: closing.clone(),
        });
        let accept_tracker = tracker.clone();
        tracker.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = shared.closing.cancelled() => break,
                    a = listener.accept() => a,
                };
                match accepted {
                    Ok((tcp, _)) => {
                        let shared = shared.clone();
                        accept_tracker.spawn(async move { connection(shared, tcp).await });
                    }
                    Err(e) => tracing::warn!(error = %e, "gateway relay: accept failed"),
                }
            }
        });
        tracing::debug!(%addr, "gateway relay listening");
        Ok(Relay {
            addr,
            closing,
            tracker,
        })
    }

    /// The URL to give serenity (`Client::ws_url`): it appends `?v=10` itself.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Stops accepting, closes every session still open (1000 upstream: the bot leaves) and
    /// waits up to `grace` for the connections to end.
    pub async fn close_all(&self, grace: Duration) {
        self.closing.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("gateway relay: connections still open after {grace:?}; leaving");
        }
    }
}

/// What happened next on a connection.
enum Event {
    Up(Option<Result<Message, gateway_ws::tungstenite::Error>>),
    Down(Option<Result<Message, gateway_ws::tungstenite::Error>>),
    Granted,
    Closing,
}

/// A client frame's opcode and the part of `d` the relay needs (never logged: an IDENTIFY
/// carries the token).
struct ClientFrame {
    op: u64,
    shard: Option<u32>,
    session_id: Option<String>,
}

fn client_frame(text: &str) -> Option<ClientFrame> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let op = v.get("op")?.as_u64()?;
    let d = v.get("d");
    let shard = d
        .and_then(|d| d.get("shard"))
        .and_then(|s| s.get(0))
        .and_then(serde_json::Value::as_u64)
        .map(|s| s as u32);
    let session_id = d
        .and_then(|d| d.get("session_id"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    Some(ClientFrame {
        op,
        shard,
        session_id,
    })
}

/// The opcode of a small server frame (`None` for large or binary ones).
fn server_op(msg: &Message) -> Option<u64> {
    match msg {
        Message::Text(t) if t.len() <= PEEK_LIMIT => {
            let v: serde_json::Value = serde_json::from_str(t).ok()?;
            v.get("op")?.as_u64()
        }
        _ => None,
    }
}

/// A server frame as serenity gets it: the sieve's stand-in when it took the frame over.
fn sift(shared: &Shared, shard: Option<u32>, msg: Message) -> Message {
    match (&msg, shard, &shared.sieve) {
        (Message::Text(t), Some(shard), Some(sieve)) if t.len() > PEEK_LIMIT => {
            sieve.sift(shard, t).map_or(msg, Message::Text)
        }
        _ => msg,
    }
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// One shard connection from serenity, relayed to Discord until either side closes it.
// The handshake callback's `Result<Response, ErrorResponse>` is tungstenite's signature.
#[allow(clippy::result_large_err)]
async fn connection(shared: Arc<Shared>, tcp: TcpStream) {
    // Dispatches go out back to back: without this, Nagle and serenity's delayed ACK add
    // 40 ms stalls to the acknowledgement path.
    let _ = tcp.set_nodelay(true);
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut query = String::new();
    let down = gateway_ws::accept_hdr_async_with_config(
        tcp,
        |req: &Request, resp: Response| {
            query = req.uri().query().unwrap_or_default().to_owned();
            Ok(resp)
        },
        Some(ws_config()),
    )
    .await;
    let mut down = match down {
        Ok(ws) => ws,
        Err(e) => {
            tracing::warn!(error = %e, "gateway relay: handshake with the shard failed");
            return;
        }
    };
    let url = if query.is_empty() {
        shared.upstream.clone()
    } else {
        format!("{}?{query}", shared.upstream)
    };
    let up = match gateway_ws::connect_async_with_config(url, Some(ws_config()), true).await {
        Ok((ws, _)) => ws,
        Err(e) => {
            tracing::warn!(error = %e, "gateway relay: cannot reach the gateway");
            let _ = down.send(close(RECONNECT, "gateway unreachable")).await;
            return;
        }
    };
    let shard = pump(&shared, conn, down, up).await;
    if let Some(shard) = shard {
        shared.board.ended(shard, conn);
    }
    tracing::debug!(conn, ?shard, "gateway relay connection ended");
}

/// Relays frames until the connection ends; returns the shard it served, if it learned it.
/// Long because it is one `select!` over both directions and the IDENTIFY gate: the held
/// IDENTIFY, the frames queued behind it and the close handshake share state that splitting
/// would hand between functions on every frame.
async fn pump(shared: &Shared, conn: u64, down: Ws, up: Up) -> Option<u32> {
    let (mut down_tx, mut down_rx) = down.split();
    let (mut up_tx, mut up_rx) = up.split();
    let mut shard: Option<u32> = None;
    // The held IDENTIFY and whatever serenity sent after it (heartbeats excepted).
    let mut held: VecDeque<Message> = VecDeque::new();
    let mut grant: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    loop {
        let event = tokio::select! {
            m = up_rx.next() => Event::Up(m),
            m = down_rx.next() => Event::Down(m),
            () = async {
                match grant.as_mut() {
                    Some(g) => g.as_mut().await,
                    None => std::future::pending().await,
                }
            } => Event::Granted,
            () = shared.closing.cancelled() => Event::Closing,
        };
        match event {
            Event::Granted => {
                grant = None;
                if let Some(s) = shard {
                    shared.board.identified(s, conn);
                }
                while let Some(msg) = held.pop_front() {
                    if up_tx.send(msg).await.is_err() {
                        break;
                    }
                }
            }
            Event::Up(Some(Ok(msg))) => match msg {
                Message::Close(frame) => {
                    // Discord ends the connection: serenity hears the same code and decides
                    // (resume or identify). The next flush sends tungstenite's echo upstream.
                    let _ = up_tx.flush().await;
                    let _ = down_tx.send(Message::Close(frame)).await;
                    return shard;
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                other => {
                    let other = sift(shared, shard, other);
                    if server_op(&other) == Some(9) {
                        if let Some(s) = shard {
                            shared.board.invalidated(s, conn);
                        }
                    }
                    if down_tx.send(other).await.is_err() {
                        // Serenity is gone; its next socket resumes.
                        let _ = up_tx.send(close(RECONNECT, "reconnecting")).await;
                        return shard;
                    }
                }
            },
            Event::Up(_) => {
                let _ = down_tx
                    .send(close(RECONNECT, "gateway connection lost"))
                    .await;
                return shard;
            }
            Event::Down(Some(Ok(msg))) => match msg {
                Message::Close(frame) => {
                    // Serenity leaves (or restarts the shard): pass the close on, wait for
                    // Discord's answer, then complete serenity's handshake. Tungstenite queued
                    // the answer to serenity's frame (the same code) when it read it; closing
                    // the sink sends it (a second close frame would be refused).
                    let _ = up_tx.send(Message::Close(frame)).await;
                    let _ = tokio::time::timeout(CLOSE_ECHO, async {
                        while let Some(m) = up_rx.next().await {
                            if matches!(m, Ok(Message::Close(_)) | Err(_)) {
                                break;
                            }
                        }
                    })
                    .await;
                    let _ = down_tx.close().await;
                    return shard;
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                Message::Text(ref text) => {
                    let frame = client_frame(text);
                    let op = frame.as_ref().map(|f| f.op);
                    match (op, grant.is_some()) {
                        (Some(2), false) => {
                            let s = frame.and_then(|f| f.shard).unwrap_or(0);
                            shard = Some(s);
                            grant = Some(shared.gate.acquire(s));
                            held.push_back(msg);
                        }
                        // A heartbeat never waits: serenity needs its ACK.
                        (Some(1), _) | (_, false) => {
                            if op == Some(6) {
                                let session = frame.and_then(|f| f.session_id);
                                shard = session
                                    .as_deref()
                                    .and_then(|id| shared.board.shard_of_session(id));
                                if let Some(s) = shard {
                                    shared.board.resuming(s, conn);
                                }
                            }
                            if up_tx.send(msg).await.is_err() {
                                let _ = down_tx
                                    .send(close(RECONNECT, "gateway connection lost"))
                                    .await;
                                return shard;
                            }
                        }
                        (_, true) => held.push_back(msg),
                    }
                }
                other => {
                    if grant.is_some() {
                        held.push_back(other);
                    } else if up_tx.send(other).await.is_err() {
                        let _ = down_tx
                            .send(close(RECONNECT, "gateway connection lost"))
                            .await;
                        return shard;
                    }
                }
            },
            Event::Down(_) => {
                // Serenity dropped the socket without a close frame: it resumes on a new one
                // (or restarts the shard), so the session must stay resumable.
                let _ = up_tx.send(close(RECONNECT, "reconnecting")).await;
                return shard;
            }
            Event::Closing => {
                // The process stops: the session ends (1000), on both sides.
                let _ = up_tx.send(close(1000, "shutting down")).await;
                let _ = tokio::time::timeout(CLOSE_ECHO, async {
                    while let Some(m) = up_rx.next().await {
                        if matches!(m, Ok(Message::Close(_)) | Err(_)) {
                            break;
                        }
                    }
                })
                .await;
                let _ = down_tx.send(close(1000, "shutting down")).await;
                return shard;
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod relay_tests;
