//! The control API of `keyshard-sim serve --control ADDR`, and its client.
//!
//! | call | what |
//! |---|---|
//! | `GET /readyz` | 200 once the fakes listen (the sim service's healthcheck) |
//! | `GET /env` | the env overlay ([`Service::env_overlay`]), `text/plain` |
//! | `POST /notes` | chaos notes, one `WHAT[@UNIX_MS]` per line ([`super::notes`]) |
//! | `POST /runs` | a JSON [`RunRequest`]; the answer streams [`Event`]s, one JSON object per line, ending with the report (or an error); 409 while another run goes on |
//!
//! Plain HTTP inside the compose network, not published on the host: the operator script
//! reaches it with `docker exec` into the sim container, so nothing here is exposed.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::drive::{self, Event, Events, RunRequest};
use super::{verdict, Note, Service, ServiceConfig};

/// Where the clients look by default: the control port inside the sim container.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7002";

fn router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/env", get(env))
        .route("/notes", post(notes))
        .route("/runs", post(runs))
        .with_state(svc)
}

async fn env(State(svc): State<Arc<Service>>) -> Response {
    match svc.env_overlay() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
    }
}

async fn notes(State(svc): State<Arc<Service>>, body: String) -> Response {
    let parsed: Result<Vec<Note>, _> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::parse)
        .collect();
    match parsed {
        Ok(notes) => {
            svc.note(&notes);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e:#}\n")).into_response(),
    }
}

async fn runs(State(svc): State<Arc<Service>>, Json(req): Json<RunRequest>) -> Response {
    let Ok(lock) = svc.run_lock.clone().try_lock_owned() else {
        return (StatusCode::CONFLICT, "another run is going on\n").into_response();
    };
    let (tx, rx) = mpsc::unbounded_channel();
    // The run stops when its client goes away: the response body holds the guard.
    let cancel = CancellationToken::new();
    let guard = cancel.clone().drop_guard();
    tokio::spawn(async move {
        let _lock = lock;
        let events = Events(tx);
        let outcome = tokio::select! {
            r = drive::run(&svc, &req, &events) => r,
            () = cancel.cancelled() => Err(anyhow::anyhow!("the client went away")),
        };
        let last = match outcome {
            Ok(report) => Event::Report {
                report: serde_json::to_value(&report).unwrap_or_default(),
                text: report.render(),
                failures: verdict::exactly_once(&report),
            },
            Err(e) => {
                tracing::warn!("run failed: {e:#}");
                Event::Error {
                    message: format!("{e:#}"),
                }
            }
        };
        events.0.send(last).ok();
    });
    let stream = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&event).ok()?;
        line.push(b'\n');
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from(line)),
            (rx, guard),
        ))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Serves the control API of `svc` on `addr` until `stop`; returns the bound address.
pub async fn start(
    svc: Arc<Service>,
    addr: SocketAddr,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the control API on {addr}"))?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let server =
            axum::serve(listener, router(svc)).with_graceful_shutdown(stop.cancelled_owned());
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "the control API stopped");
        }
    });
    Ok((bound, task))
}

/// `keyshard-sim serve --control`: starts the service, writes the overlay to `env_out` when
/// given, serves the control API on `control` until `shutdown` resolves.
pub async fn serve(
    cfg: ServiceConfig,
    control: SocketAddr,
    env_out: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let svc = Service::start(cfg).await?;
    if let Some(path) = &env_out {
        std::fs::write(path, svc.env_overlay()?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let stop = CancellationToken::new();
    let (bound, task) = start(svc, control, stop.clone()).await?;
    tracing::info!(control = %bound, "control API listening (GET /env, POST /notes, POST /runs)");
    shutdown.await;
    stop.cancel();
    task.await.ok();
    tracing::info!("stopped");
    Ok(())
}

fn client(total: Option<Duration>) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        // The service is a container away; one that does not accept in 10 s is not there.
        .connect_timeout(Duration::from_secs(10));
    if let Some(t) = total {
        b = b.timeout(t);
    }
    b.build()
        .expect("building a reqwest client with an installed crypto provider")
}

/// A short call's budget: the service answers `/env` and `/notes` at once.
const SHORT_CALL: Duration = Duration::from_secs(30);

async fn check(resp: reqwest::Response, what: &str) -> anyhow::Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    bail!("{what}: {status}: {}", body.trim())
}

/// `GET /env`.
pub async fn fetch_env(url: &str) -> anyhow::Result<String> {
    let resp = client(Some(SHORT_CALL))
        .get(format!("{}/env", url.trim_end_matches('/')))
        .send()
        .await
        .with_context(|| format!("asking {url} for the env overlay"))?;
    Ok(check(resp, "the env overlay").await?.text().await?)
}

/// `POST /notes`.
pub async fn send_notes(url: &str, notes: &[Note]) -> anyhow::Result<()> {
    let body: String = notes.iter().map(|n| format!("{n}\n")).collect();
    let resp = client(Some(SHORT_CALL))
        .post(format!("{}/notes", url.trim_end_matches('/')))
        .body(body)
        .send()
        .await
        .with_context(|| format!("sending notes to {url}"))?;
    check(resp, "the notes").await?;
    Ok(())
}

/// `POST /runs`: calls `on_event` for every event as it comes, and returns the last one (the
/// report, or the error that ended the run).
pub async fn run(
    url: &str,
    req: &RunRequest,
    mut on_event: impl FnMut(&Event),
) -> anyhow::Result<Event> {
    // No overall timeout: a run lasts its load, the chaos and the drain.
    let resp = client(None)
        .post(format!("{}/runs", url.trim_end_matches('/')))
        .json(req)
        .send()
        .await
        .with_context(|| format!("asking {url} for a run"))?;
    let mut resp = check(resp, "the run").await?;
    let mut buf: Vec<u8> = Vec::new();
    let mut last = None;
    while let Some(chunk) = resp.chunk().await.context("reading the run's events")? {
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let event: Event = serde_json::from_slice(&line)
                .with_context(|| format!("an event: {}", String::from_utf8_lossy(&line)))?;
            on_event(&event);
            last = Some(event);
        }
    }
    match last {
        Some(e @ (Event::Report { .. } | Event::Error { .. })) => Ok(e),
        _ => bail!("the service ended the run without a report"),
    }
}
