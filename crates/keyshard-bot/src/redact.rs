//! Keeps secrets out of anything that is logged or shown.
//!
//! A secret reaches text in three shapes, each with its own function:
//!
//! - **In a URL.** serenity's and reqwest's error texts and request spans carry the request
//!   URL, and a webhook or callback URL contains the interaction token
//!   (`/interactions/{id}/{token}/callback`, `/webhooks/{app}/{token}/…`): [`redact`].
//! - **In a field named token.** serenity's request spans print its `Route` with `Debug`
//!   (`WebhookOriginalInteractionResponse { application_id: …, token: "aW50…" }`), its gateway
//!   prints raw events at `trace` (`"token":"aW50…"`, also escaped inside a debug string), and
//!   a tracing field reads `token=…`: [`token_fields`].
//! - **Anywhere.** The Discord token and the API keys are known from `Config` at start; a
//!   [`Scrubber`] replaces them exactly, whatever surrounds them (an `Authorization` header
//!   printed by a library, an error echoing a key).
//!
//! [`Scrubber::scrub`] applies all three; `logging` runs it on every formatted log line.
//! Interaction tokens are not known in advance (each interaction brings its own), so they are
//! found by shape; the known secrets are found by value.

use std::borrow::Cow;
use std::sync::OnceLock;

/// What a secret is replaced with.
const MASK: &str = "***";

/// Replaces the token segment after `/interactions/{id}/` and `/webhooks/{id}/` with `***`.
pub fn redact(text: &str) -> String {
    redact_paths(text).unwrap_or_else(|| text.to_owned())
}

/// [`redact`], or `None` when `text` has no such path (the common case: no allocation).
fn redact_paths(text: &str) -> Option<String> {
    const MARKERS: [&str; 2] = ["/interactions/", "/webhooks/"];
    if !MARKERS.iter().any(|m| text.contains(m)) {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((pos, marker)) = MARKERS
        .iter()
        .filter_map(|m| rest.find(m).map(|p| (p, *m)))
        .min_by_key(|(p, _)| *p)
    {
        let after = pos + marker.len();
        out.push_str(&rest[..after]);
        rest = &rest[after..];
        // The id segment is kept; the segment after it is the token.
        let id_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if id_end > 0 && rest[id_end..].starts_with('/') {
            out.push_str(&rest[..=id_end]);
            rest = &rest[id_end + 1..];
            let token_end = rest
                .find(['/', '?', '#', '&', '(', ')', ' ', '"', '\'', '\\', ','])
                .unwrap_or(rest.len());
            if token_end > 0 {
                out.push_str(MASK);
            }
            rest = &rest[token_end..];
        }
    }
    out.push_str(rest);
    Some(out)
}

/// Replaces the value of every field whose name ends in `token` (any case) with `***`:
/// `token: "…"` and `token: Some("…")` (Rust `Debug`), `"token":"…"` (JSON), `\"token\":\"…\"`
/// (JSON inside a debug string), `token=…` (a tracing field, quoted or not, also with ANSI
/// colour codes around the `=`). An unquoted value after `:` is left alone: that is `Debug` of
/// a wrapper that hides itself (`token: Secret([REDACTED …])`) or prose. `None` when nothing
/// was replaced.
pub fn token_fields(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    // Bytes of `text` already copied into `out`.
    let mut copied = 0;
    let mut at = 0;
    while let Some(found) = find_token_key(text, at) {
        let key_end = found + "token".len();
        at = key_end;
        let Some((start, end)) = token_value(bytes, key_end) else {
            continue;
        };
        // `start` and `end` sit next to ASCII bytes, so they are char boundaries.
        let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
        o.push_str(&text[copied..start]);
        o.push_str(MASK);
        copied = end;
        at = end;
    }
    out.map(|mut o| {
        o.push_str(&text[copied..]);
        o
    })
}

/// Where the next `token`, `Token` or `TOKEN` at or after `from` starts, when it is not
/// followed by a letter, digit or `_` (`tokens_limit` and `token_alive` hold no token).
///
/// Two `str::find`s for the tail (`oken`, `OKEN`) rather than a byte-by-byte
/// case-insensitive scan: this runs on every log line, and `find` is the fast substring search.
fn find_token_key(text: &str, mut from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    loop {
        let rest = &text[from..];
        let tail = [rest.find("oken"), rest.find("OKEN")]
            .into_iter()
            .flatten()
            .min()?;
        let at = from + tail;
        // `oken` is ASCII, so the byte after it starts a char.
        from = at + 4;
        if at == 0 || !bytes[at - 1].eq_ignore_ascii_case(&b't') {
            continue;
        }
        match bytes.get(from) {
            Some(c) if c.is_ascii_alphanumeric() || *c == b'_' => {}
            _ => return Some(at - 1),
        }
    }
}

/// Where the value of a `token` field starting its separator at `p` lies, if it is one.
fn token_value(b: &[u8], mut p: usize) -> Option<(usize, usize)> {
    // The closing quote of a quoted key: `"token"`, `\"token\"`.
    while matches!(b.get(p), Some(b'"' | b'\\')) {
        p += 1;
    }
    p = skip_ansi(b, p);
    let separator = *b.get(p)?;
    if separator != b':' && separator != b'=' {
        return None;
    }
    p = skip_ansi(b, p + 1);
    while b.get(p) == Some(&b' ') {
        p += 1;
    }
    if b[p..].starts_with(b"Some(") {
        p += "Some(".len();
    }
    let quoted = if b[p..].starts_with(b"\\\"") {
        p += 2;
        true
    } else if matches!(b.get(p), Some(b'"' | b'\'')) {
        p += 1;
        true
    } else {
        false
    };
    if !quoted && separator != b'=' {
        return None;
    }
    let end = p + b[p..]
        .iter()
        .position(|c| ends_value(*c))
        .unwrap_or(b.len() - p);
    if end == p || &b[p..end] == MASK.as_bytes() {
        return None;
    }
    Some((p, end))
}

fn ends_value(c: u8) -> bool {
    matches!(
        c,
        b'"' | b'\'' | b'\\' | b',' | b')' | b'}' | b']' | b'&' | b';'
    ) || c.is_ascii_whitespace()
        || c.is_ascii_control()
}

/// Skips ANSI colour codes (`ESC [ … m`), which tracing puts around field names and `=`.
fn skip_ansi(b: &[u8], mut p: usize) -> usize {
    while b.get(p) == Some(&0x1b) && b.get(p + 1) == Some(&b'[') {
        match b[p + 2..].iter().position(|c| c.is_ascii_alphabetic()) {
            Some(i) => p += 2 + i + 1,
            None => return b.len(),
        }
    }
    p
}

/// Scrubs secrets out of text: the known ones (set once at start) by value, interaction
/// tokens by shape. Shared by every log line, so it is cheap when there is nothing to do: a
/// few substring searches and no allocation.
#[derive(Debug, Default)]
pub struct Scrubber {
    /// Set once, when the configuration has been read; a log line before that (a config
    /// error) cannot contain a secret the process has not read yet.
    known: OnceLock<Vec<String>>,
}

impl Scrubber {
    pub const fn new() -> Self {
        Self {
            known: OnceLock::new(),
        }
    }

    /// Sets the secrets replaced by value; empty ones are ignored. Only the first call counts
    /// (the configuration is read once); `false` if they were set already.
    pub fn hide(&self, secrets: impl IntoIterator<Item = String>) -> bool {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        // Longest first, so a secret that contains another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        self.known.set(secrets).is_ok()
    }

    /// `text` without any secret: `Borrowed` when there was none.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in self.known.get().map(Vec::as_slice).unwrap_or_default() {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
        if let Some(s) = token_fields(&out) {
            out = Cow::Owned(s);
        }
        if let Some(s) = redact_paths(&out) {
            out = Cow::Owned(s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "aW50ZXJhY3Rpb24615e2825cc640000724982683d7c4540f";

    #[test]
    fn tokens_are_replaced_ids_kept() {
        let s = "error sending request for url (http://127.0.0.1:9/i/2/api/v10/interactions/1100/aW50ZXJhY3Rpb24.tok/callback)";
        assert_eq!(
            redact(s),
            "error sending request for url (http://127.0.0.1:9/i/2/api/v10/interactions/1100/***/callback)"
        );
        let s = "PATCH /api/v10/webhooks/42/secret-token/messages/@original?&wait=true";
        assert_eq!(
            redact(s),
            "PATCH /api/v10/webhooks/42/***/messages/@original?&wait=true"
        );
    }

    #[test]
    fn text_without_urls_is_unchanged() {
        assert_eq!(redact("Unknown interaction"), "Unknown interaction");
        assert_eq!(redact("/webhooks/ no id"), "/webhooks/ no id");
    }

    /// Lines as a keyshard instance wrote them at `RUST_LOG=trace` (a simulator run before the
    /// scrubber existed; the request body's bytes shortened).
    #[test]
    fn serenity_request_spans_lose_the_token() {
        let line = format!(
            "2026-11-30T14:20:29.856113Z DEBUG request{{self=Http {{ client: Client {{ accepts: Accepts, proxies: [Matcher], referer: true, default_headers: {{\"accept\": \"*/*\"}} }}, ratelimiter: None, proxy: Some(\"http://127.0.0.1:35457/i/1\"), token: Secret([REDACTED alloc::string::String]), application_id: 1170000000000000001, default_allowed_mentions: None }} req=Request {{ body: Some([123, 34, 99, 125]), multipart: None, headers: None, method: Patch, route: WebhookOriginalInteractionResponse {{ application_id: ApplicationId(1170000000000000001), token: \"{TOKEN}\" }}, params: None }}}}: reuse idle connection for (\"http\", 127.0.0.1:35457)\n"
        );
        let clean = Scrubber::new().scrub(&line).into_owned();
        assert!(!clean.contains(TOKEN), "{clean}");
        assert!(
            clean.contains("application_id: ApplicationId(1170000000000000001), token: \"***\" }")
        );
        // The hidden bot token's own Debug is left as it is.
        assert!(clean.contains("token: Secret([REDACTED alloc::string::String])"));
        assert_eq!(clean.len(), line.len() - TOKEN.len() + MASK.len());

        let line = format!(
            "2026-11-30T14:20:29.8Z TRACE request{{…}}: method: Post, route: InteractionResponse {{ interaction_id: InteractionId(1576966154507780103), token: \"{TOKEN}\" }}, params: None }}\u{1b}[1m}}\u{1b}[0m\u{1b}[2m:\u{1b}[0m take? (\"http\", 127.0.0.1:35457)"
        );
        let clean = Scrubber::new().scrub(&line).into_owned();
        assert!(!clean.contains(TOKEN), "{clean}");
        assert!(clean.contains("InteractionId(1576966154507780103), token: \"***\" }"));
    }

    #[test]
    fn raw_gateway_events_lose_the_token() {
        let line = format!(
            "2026-11-30T14:20:29.851819Z TRACE run:recv_event: Received message {{\"op\":0,\"s\":2,\"t\":\"INTERACTION_CREATE\",\"d\":{{\"guild_locale\":\"ko\",\"id\":\"1576966154507780103\",\"member\":{{\"user\":{{\"id\":\"327827220324786122\",\"username\":\"user327827220324786122\"}}}},\"token\":\"{TOKEN}\",\"type\":2,\"version\":1}}}}"
        );
        let clean = token_fields(&line).expect("a token field");
        assert!(!clean.contains(TOKEN), "{clean}");
        assert!(clean.contains(r#""token":"***","type":2"#), "{clean}");
        // The same event as a debug string (quotes escaped).
        let escaped = format!(r#"Text("{{\"d\":{{\"token\":\"{TOKEN}\",\"type\":2}}}}")"#);
        let clean = token_fields(&escaped).expect("a token field");
        assert_eq!(clean, r#"Text("{\"d\":{\"token\":\"***\",\"type\":2}}")"#);
    }

    #[test]
    fn token_fields_in_every_spelling() {
        for (line, want) in [
            (format!("token=\"{TOKEN}\" x"), "token=\"***\" x"),
            (format!("job token={TOKEN} x"), "job token=*** x"),
            (format!("Token: Some(\"{TOKEN}\")"), "Token: Some(\"***\")"),
            (
                format!("access_token: '{TOKEN}', b"),
                "access_token: '***', b",
            ),
            (
                format!("\u{1b}[3mtoken\u{1b}[0m\u{1b}[2m=\u{1b}[0m{TOKEN} next"),
                "\u{1b}[3mtoken\u{1b}[0m\u{1b}[2m=\u{1b}[0m*** next",
            ),
        ] {
            assert_eq!(token_fields(&line).as_deref(), Some(want), "{line}");
        }
    }

    #[test]
    fn words_and_fields_that_are_not_tokens_are_left_alone() {
        for line in [
            "the interaction token was refused; posting to the channel instead",
            "tokens_limit: Some(30000), tokens_used: None",
            "token_alive=true",
            "token: Secret([REDACTED alloc::string::String])",
            "token: \"***\"",
            "비밀 토큰 없음 token",
        ] {
            assert_eq!(token_fields(line), None, "{line}");
            assert!(matches!(Scrubber::new().scrub(line), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn known_secrets_go_by_value_wherever_they_are() {
        let s = Scrubber::new();
        assert!(s.hide([
            "sim-discord-token".to_owned(),
            "sk-live-key".to_owned(),
            String::new(),
        ]));
        assert!(!s.hide(["late".to_owned()]), "set once");
        let line =
            "headers: {\"authorization\": \"Bot sim-discord-token\"}, key sk-live-key; sk-live-key";
        assert_eq!(
            s.scrub(line),
            "headers: {\"authorization\": \"Bot ***\"}, key ***; ***"
        );
        assert!(matches!(s.scrub("nothing secret here"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_secret_containing_another_is_replaced_whole() {
        let s = Scrubber::new();
        s.hide(["abc".to_owned(), "xxabcxx".to_owned()]);
        assert_eq!(s.scrub("k=xxabcxx and abc"), "k=*** and ***");
    }
}
