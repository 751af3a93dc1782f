//! The `keyshard` binary's tracing setup: the filter from `RUST_LOG` (default
//! `info,serenity=warn,poise=warn`), colours only when stdout is a terminal (operators send
//! logs to files, where ANSI codes are noise), and every formatted line passed through a
//! [`Scrubber`] before it is written.
//!
//! Why scrub the output instead of filtering the sources: secrets reach log lines through
//! code this crate does not own. At `debug`, serenity's `#[instrument]`ed request spans print
//! its `Route` with the interaction token on every line inside the request; at `trace`, its
//! gateway prints raw events with the token. Which targets are on is the operator's choice
//! (`RUST_LOG`), so silencing known targets would hold only for the filter we ship. Scrubbing
//! the finished line holds for every filter, every crate and every field, including ones that
//! do not exist yet.
//!
//! Cost: a line is only formatted when the filter lets it through, and scrubbing it is a few
//! substring searches with no allocation when nothing matches (see [`Scrubber::scrub`]): at
//! the default filter, a handful of short lines per interaction.

use std::io::{self, IsTerminal, Write};
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;

use crate::config::Config;
use crate::redact::Scrubber;

/// The filter when `RUST_LOG` is unset or unreadable: our own lines at `info`, the Discord
/// libraries only when something goes wrong.
const DEFAULT_FILTER: &str = "info,serenity=warn,poise=warn";

/// Installs the global subscriber. The returned handle learns the configured secrets once the
/// configuration is read ([`LogSecrets::hide`]).
pub fn init() -> LogSecrets {
    let scrubber = Arc::new(Scrubber::new());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Colours only on a terminal: under docker, journald or a log shipper the escape codes
        // are noise in every line. NO_COLOR (https://no-color.org) turns them off there too.
        .with_ansi(
            io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_writer(ScrubbingWriter::new(io::stdout, scrubber.clone()))
        .init();
    // The default panic hook writes to stderr directly, past the scrubber; a panic message
    // quoting a request would carry its token. Through tracing it is scrubbed like any line.
    std::panic::set_hook(Box::new(|info| {
        // Captured only when RUST_BACKTRACE asks for it, as the default hook does.
        let backtrace = std::backtrace::Backtrace::capture();
        match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => {
                tracing::error!("{info}\nstack backtrace:\n{backtrace}")
            }
            _ => tracing::error!("{info}"),
        }
    }));
    LogSecrets(scrubber)
}

/// The secrets the log scrubber replaces by value.
pub struct LogSecrets(Arc<Scrubber>);

impl LogSecrets {
    /// From now on every log line hides `config`'s Discord token and API keys.
    pub fn hide(&self, config: &Config) {
        self.0.hide(secrets(config));
    }

    /// For the ledger verbs (`migrate`, `usage`), which read no full `Config`: every log line
    /// hides the password in `DATABASE_URL`.
    pub fn hide_ledger(&self, ledger: &crate::config::LedgerConfig) {
        let pw = crate::config::database_password(ledger.database_url.expose());
        self.0.hide(pw.map(str::to_owned));
    }

    /// `text` (an error printed outside tracing) without any secret.
    pub fn scrub(&self, text: &str) -> String {
        self.0.scrub(text).into_owned()
    }
}

/// Every secret in `config`: the Discord token, this instance's provider keys, and the
/// password in `DATABASE_URL` (the URL without it is fine to log, and is logged redacted).
pub fn secrets(config: &Config) -> Vec<String> {
    let keys = [
        config.openai.as_ref().map(|c| &c.common.api_key),
        config.minimax.as_ref().map(|c| &c.common.api_key),
        config.stability.as_ref().map(|c| &c.common.api_key),
    ];
    let database_password = config
        .ledger
        .as_ref()
        .and_then(|l| crate::config::database_password(l.database_url.expose()).map(str::to_owned));
    std::iter::once(&config.discord_token)
        .chain(keys.into_iter().flatten())
        .map(|s| s.expose().to_owned())
        .chain(database_password)
        .collect()
}

/// A [`MakeWriter`] whose writers scrub what they are given before passing it on.
///
/// tracing's fmt layer formats a whole event into one buffer and hands it over with a single
/// `write_all`; [`ScrubbedLine::write`] always takes the whole buffer, so each call holds one
/// complete line and a secret is never split between two calls.
pub struct ScrubbingWriter<M> {
    inner: M,
    scrubber: Arc<Scrubber>,
}

impl<M> ScrubbingWriter<M> {
    pub fn new(inner: M, scrubber: Arc<Scrubber>) -> Self {
        Self { inner, scrubber }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for ScrubbingWriter<M> {
    type Writer = ScrubbedLine<'a, M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbedLine {
            inner: self.inner.make_writer(),
            scrubber: &self.scrubber,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        ScrubbedLine {
            inner: self.inner.make_writer_for(meta),
            scrubber: &self.scrubber,
        }
    }
}

/// One event's writer: scrubs each buffer it is given, then writes it whole.
pub struct ScrubbedLine<'a, W> {
    inner: W,
    scrubber: &'a Scrubber,
}

impl<W: Write> Write for ScrubbedLine<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // fmt writes UTF-8; a lossy view only matters for bytes a library wrote raw, and
        // borrows (no copy) when the buffer is valid.
        let text = String::from_utf8_lossy(buf);
        self.inner
            .write_all(self.scrubber.scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use poise::serenity_prelude as serenity;
    use serenity::http::{LightMethod, Request, Route};
    use serenity::{ApplicationId, InteractionId};

    use super::*;

    const TOKEN: &str = "aW50ZXJhY3Rpb246MTE3MDAwMDAwMDAwMDAwMDAwMTpzZWNyZXQ";

    /// Captures what the subscriber writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Runs `f` under a subscriber like [`init`]'s (at `trace`, so every line is formatted)
    /// writing through the scrubber, and returns what was written.
    fn logged(scrubber: Arc<Scrubber>, ansi: bool, f: impl FnOnce()) -> String {
        let out = Capture::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("trace")
            .with_target(false)
            .with_ansi(ansi)
            .with_writer(ScrubbingWriter::new(move || sink.clone(), scrubber))
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    /// serenity's own `Request` and `Route` values, recorded the way its `#[instrument]`ed
    /// `Http::request` records them: a span field whose `Debug` names the token, printed on
    /// every event inside the span.
    #[test]
    fn serenity_request_spans_are_scrubbed_at_any_level() {
        for ansi in [false, true] {
            let text = logged(Arc::new(Scrubber::new()), ansi, || {
                let routes = [
                    Route::WebhookOriginalInteractionResponse {
                        application_id: ApplicationId::new(1_170_000_000_000_000_001),
                        token: TOKEN,
                    },
                    Route::InteractionResponse {
                        interaction_id: InteractionId::new(1_576_966_154_507_780_103),
                        token: TOKEN,
                    },
                    Route::WebhookFollowupMessages {
                        application_id: ApplicationId::new(1_170_000_000_000_000_001),
                        token: TOKEN,
                    },
                ];
                for route in routes {
                    let req = Request::new(route, LightMethod::Patch);
                    let span = tracing::debug_span!("request", ?req);
                    let _in = span.enter();
                    tracing::debug!("reuse idle connection");
                    tracing::trace!(
                        "error sending request for url (http://127.0.0.1:9/i/1/api/v10/webhooks/1170000000000000001/{TOKEN}/messages/@original)"
                    );
                }
                tracing::info!(token = %TOKEN, "a field named token");
                tracing::warn!(token = ?TOKEN, "a debug field named token");
            });
            assert!(!text.contains(TOKEN), "ansi={ansi}: {text}");
            assert_eq!(text.lines().count(), 8, "every line still written: {text}");
            assert!(text.contains("token: \"***\""), "{text}");
            assert!(text.contains("/webhooks/1170000000000000001/***/messages"));
            assert_eq!(text.contains('\u{1b}'), ansi, "{text}");
        }
    }

    #[test]
    fn configured_secrets_are_replaced_once_known() {
        let scrubber = Arc::new(Scrubber::new());
        let before = logged(scrubber.clone(), false, || {
            tracing::info!("before the config: sk-test-123");
        });
        assert!(before.contains("sk-test-123"), "nothing is known yet");
        scrubber.hide(["sk-test-123".to_owned(), "bot-token-xyz".to_owned()]);
        let after = logged(scrubber, false, || {
            tracing::debug!(header = "Bot bot-token-xyz", "calling with sk-test-123");
        });
        assert!(
            !after.contains("sk-test-123") && !after.contains("bot-token-xyz"),
            "{after}"
        );
        assert!(
            after.contains("calling with *** header=\"Bot ***\""),
            "{after}"
        );
    }

    #[test]
    fn secrets_of_a_config_are_the_token_and_every_key() {
        let map: std::collections::HashMap<String, String> = [
            ("DISCORD_TOKEN", "discord-secret"),
            ("INSTANCE_ID", "2"),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("OPENAI_API_KEY_2", "sk-openai-2"),
            ("MINIMAX_API_KEY", "mm-key"),
            ("STABILITY_API_KEY", "st-key"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let config = Config::from_map(&map).expect("valid config");
        let mut got = secrets(&config);
        got.sort();
        assert_eq!(got, ["discord-secret", "mm-key", "sk-openai-2", "st-key"]);
    }
}
