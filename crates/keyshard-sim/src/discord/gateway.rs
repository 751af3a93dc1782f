//! The gateway websocket: HELLO, heartbeat ACK, IDENTIFY → READY, RESUME with replay, and the
//! close handshake.
//!
//! Each connection has a writer fed by an unbounded channel, so dispatching under the state
//! lock never waits on a slow socket; the sequence number belongs to the session, not to the
//! socket, so a resumed session continues where it stopped.
//!
//! An IDENTIFY is held to Discord's session rules ([`GatewayRules`](super::GatewayRules)):
//! one per bucket (`shard_id % max_concurrency`) per window, or op 9; one of the day's
//! session starts each, and when they run out the token is reset (4004 for every session
//! and every later attempt); 4011 when the session's shard would hold more than 2,500 guilds;
//! 4010 for a shard outside `0..num_shards`.
//!
//! A close frame from the client is answered with one (tungstenite queues the echo and sends
//! it on the next read, so the reader keeps reading until the socket ends). As on Discord, a
//! close with 1000 or 1001 ends the session; any other code leaves it resumable.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{
    payload, Conn, Out, Session, Shared, CLOSE_AUTHENTICATION_FAILED, CLOSE_INVALID_SHARD,
    CLOSE_SHARDING_REQUIRED, MAX_GUILDS_PER_SHARD,
};

/// Runs one websocket connection of instance `instance` until either side closes it.
pub(crate) async fn connection(shared: Arc<Shared>, instance: u32, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    let conn_id = shared.lock().next_conn_id();
    let interval = shared.cfg.heartbeat_interval.as_millis() as u64;
    let _ = tx.send(Out::Text(payload::hello(interval)));

    let writer = async {
        while let Some(out) = rx.recv().await {
            match out {
                Out::Text(text) => {
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        // The client is gone or closing: the reader sees it and ends the
                        // connection once the handshake is done.
                        break;
                    }
                }
                // The server ends the connection: a close frame, then the socket goes.
                Out::Close(code) => {
                    let frame = CloseFrame {
                        code,
                        reason: "closed by the simulated Discord".into(),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    return;
                }
            }
        }
        std::future::pending::<()>().await
    };
    let reader = async {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Text(text) => handle(&shared, instance, conn_id, &tx, text.as_str()),
                Message::Close(frame) => {
                    closed_by_client(&shared, instance, conn_id, frame.map(|f| f.code));
                    // Keep reading: the next read sends tungstenite's echo of the close frame
                    // and then ends the stream.
                }
                _ => {}
            }
        }
    };
    tokio::select! {
        () = writer => {}
        () = reader => {}
        () = shared.shutdown.cancelled() => {}
    }

    let mut st = shared.lock();
    for s in st.sessions.iter_mut() {
        if s.conn.as_ref().is_some_and(|c| c.id == conn_id) {
            s.detach();
        }
    }
    drop(st);
    shared.changed.notify_waiters();
    tracing::debug!(instance, conn_id, "gateway connection closed");
}

/// The client sent a close frame: a clean goodbye. 1000 and 1001 end the session (Discord
/// shows the bot offline); other codes keep it resumable.
fn closed_by_client(shared: &Shared, instance: u32, conn_id: u64, code: Option<u16>) {
    let ends = matches!(code, Some(1000 | 1001));
    let mut st = shared.lock();
    st.stats(instance).clean_closes += 1;
    if ends {
        st.sessions
            .retain(|s| s.conn.as_ref().is_none_or(|c| c.id != conn_id));
    } else {
        for s in st.sessions.iter_mut() {
            if s.conn.as_ref().is_some_and(|c| c.id == conn_id) {
                s.detach();
            }
        }
    }
    drop(st);
    shared.changed.notify_waiters();
    tracing::debug!(instance, conn_id, ?code, "gateway closed by the client");
}

/// `[shard_id, num_shards]` of an IDENTIFY (`[0, 1]` when it names none).
fn shard_of(d: &Value) -> [u32; 2] {
    let get = |i: usize| {
        d.get("shard")
            .and_then(|s| s.get(i))
            .and_then(Value::as_u64)
            .map(|v| v.min(u64::from(u32::MAX)) as u32)
    };
    match (get(0), get(1)) {
        (Some(id), Some(total)) => [id, total],
        _ => [0, 1],
    }
}

/// Handles one client frame.
fn handle(
    shared: &Shared,
    instance: u32,
    conn_id: u64,
    tx: &mpsc::UnboundedSender<Out>,
    text: &str,
) {
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        tracing::warn!(instance, "gateway frame is not JSON");
        return;
    };
    match frame.get("op").and_then(Value::as_u64) {
        Some(1) => {
            let _ = tx.send(Out::Text(payload::heartbeat_ack()));
        }
        Some(2) => identify(shared, instance, conn_id, tx, &frame["d"]),
        Some(6) => resume(shared, instance, conn_id, tx, &frame["d"]),
        // Presence, voice state, member requests: nothing the bot's interactions depend on.
        _ => {}
    }
    shared.changed.notify_waiters();
}

fn identify(
    shared: &Shared,
    instance: u32,
    conn_id: u64,
    tx: &mpsc::UnboundedSender<Out>,
    d: &Value,
) {
    let rules = &shared.cfg.gateway;
    let shard = shard_of(d);
    let mut st = shared.lock();
    if st.identify.token_reset {
        let _ = tx.send(Out::Close(CLOSE_AUTHENTICATION_FAILED));
        return;
    }
    if shard[1] == 0 || shard[0] >= shard[1] {
        let _ = tx.send(Out::Close(CLOSE_INVALID_SHARD));
        return;
    }
    st.identify.roll(rules);
    if st.identify.remaining == 0 {
        // The day's session starts ran out: Discord resets the token and ends every session.
        st.identify.token_reset = true;
        for s in &st.sessions {
            if let Some(conn) = &s.conn {
                let _ = conn.tx.send(Out::Close(CLOSE_AUTHENTICATION_FAILED));
            }
        }
        st.sessions.clear();
        let _ = tx.send(Out::Close(CLOSE_AUTHENTICATION_FAILED));
        tracing::warn!(
            instance,
            "IDENTIFY with no session starts left: token reset"
        );
        return;
    }
    let bucket = shard[0] % rules.max_concurrency.max(1);
    let window = rules.identify_window;
    let too_soon = st
        .identify
        .last_by_bucket
        .get(&bucket)
        .is_some_and(|last| !window.is_zero() && last.elapsed() < window);
    if too_soon {
        st.stats(instance).invalid_sessions += 1;
        let _ = tx.send(Out::Text(payload::invalid_session(false)));
        tracing::debug!(instance, bucket, "IDENTIFY over the bucket's rate: op 9");
        return;
    }
    st.identify.last_by_bucket.insert(bucket, Instant::now());
    st.identify.remaining -= 1;
    st.stats(instance).identifies += 1;
    if rules.bot_guilds.div_ceil(u64::from(shard[1])) > MAX_GUILDS_PER_SHARD {
        st.stats(instance).sharding_required += 1;
        let _ = tx.send(Out::Close(CLOSE_SHARDING_REQUIRED));
        return;
    }
    // A fresh IDENTIFY of a shard means the instance gave up its earlier session of that shard
    // (it restarted); keep it from collecting dispatches nobody will ever resume.
    st.sessions
        .retain(|s| s.instance != instance || s.conn.is_some() || s.shard != shard);
    let id = st.next_session_id(instance);
    let resume_url = format!("ws://{}/i/{instance}/gateway", shared.addr);
    let ready = payload::ready(shared.cfg.application_id, &id, &resume_url, d.get("shard"));
    let mut session = Session {
        id,
        instance,
        shard,
        seq: 0,
        buffer: Default::default(),
        conn: Some(Conn {
            id: conn_id,
            tx: tx.clone(),
        }),
        disconnected_at: None,
    };
    session.dispatch("READY", &ready, shared.cfg.replay_buffer);
    tracing::debug!(instance, session = %session.id, ?shard, "gateway READY");
    st.sessions.push(session);
}

fn resume(
    shared: &Shared,
    instance: u32,
    conn_id: u64,
    tx: &mpsc::UnboundedSender<Out>,
    d: &Value,
) {
    let session_id = d.get("session_id").and_then(Value::as_str).unwrap_or("");
    let seq = d.get("seq").and_then(Value::as_u64).unwrap_or(0);
    let mut st = shared.lock();
    if st.identify.token_reset {
        let _ = tx.send(Out::Close(CLOSE_AUTHENTICATION_FAILED));
        return;
    }
    let resume_window = shared.cfg.resume_window;
    let found = st.sessions.iter_mut().find(|s| {
        s.id == session_id
            && s.instance == instance
            && (s.conn.is_some()
                || s.disconnected_at
                    .is_some_and(|t| t.elapsed() < resume_window))
    });
    // The client must not have missed more than the buffer still holds.
    let session = found
        .filter(|s| seq >= s.seq || s.buffer.front().is_some_and(|(first, _)| *first <= seq + 1));
    let Some(session) = session else {
        st.stats(instance).invalid_sessions += 1;
        let _ = tx.send(Out::Text(payload::invalid_session(false)));
        tracing::debug!(instance, "RESUME of an unknown session: invalid session");
        return;
    };
    if let Some(old) = session.conn.take() {
        let _ = old.tx.send(Out::Close(4000));
    }
    session.conn = Some(Conn {
        id: conn_id,
        tx: tx.clone(),
    });
    session.disconnected_at = None;
    let mut replayed = 0;
    for (_, frame) in session.buffer.iter().filter(|(s, _)| *s > seq) {
        let _ = tx.send(Out::Text(frame.clone()));
        replayed += 1;
    }
    session.dispatch("RESUMED", "{}", shared.cfg.replay_buffer);
    tracing::debug!(instance, replayed, "gateway RESUMED");
    st.stats(instance).resumes += 1;
}
