//! The gateway websocket: HELLO, heartbeat ACK, IDENTIFY → READY, RESUME with replay.
//!
//! Each connection has a writer fed by an unbounded channel, so dispatching under the state
//! lock never waits on a slow socket; the sequence number belongs to the session, not to the
//! socket, so a resumed session continues where it stopped.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{payload, Conn, Out, Session, Shared};

/// Runs one websocket connection of instance `instance` until either side closes it.
pub(crate) async fn connection(shared: Arc<Shared>, instance: u32, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    let conn_id = shared.lock().next_conn_id();
    let interval = shared.cfg.heartbeat_interval.as_millis() as u64;
    let _ = tx.send(Out::Text(payload::hello(interval)));

    let writer = async {
        while let Some(out) = rx.recv().await {
            let sent = match out {
                Out::Text(text) => sink.send(Message::Text(text.into())).await,
                Out::Close(code) => {
                    let frame = CloseFrame {
                        code,
                        reason: "session dropped by the simulator".into(),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    break;
                }
            };
            if sent.is_err() {
                break;
            }
        }
    };
    let reader = async {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Text(text) => handle(&shared, instance, conn_id, &tx, text.as_str()),
                Message::Close(_) => break,
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
    let mut st = shared.lock();
    st.gateway_stats.entry(instance).or_default().identifies += 1;
    // A fresh IDENTIFY means the instance gave up its earlier sessions (it restarted); keep
    // them from collecting dispatches nobody will ever resume.
    st.sessions
        .retain(|s| s.instance != instance || s.conn.is_some());
    let id = st.next_session_id(instance);
    let resume_url = format!("ws://{}/i/{instance}/gateway", shared.addr);
    let ready = payload::ready(shared.cfg.application_id, &id, &resume_url, d.get("shard"));
    let mut session = Session {
        id,
        instance,
        seq: 0,
        buffer: Default::default(),
        conn: Some(Conn {
            id: conn_id,
            tx: tx.clone(),
        }),
        disconnected_at: None,
    };
    session.dispatch("READY", &ready, shared.cfg.replay_buffer);
    tracing::debug!(instance, session = %session.id, "gateway READY");
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
        st.gateway_stats
            .entry(instance)
            .or_default()
            .invalid_sessions += 1;
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
    st.gateway_stats.entry(instance).or_default().resumes += 1;
}
