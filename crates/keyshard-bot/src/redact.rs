//! Keeps interaction tokens out of anything that is logged or shown.
//!
//! serenity's and reqwest's error texts can carry the request URL, and a webhook or callback
//! URL contains the interaction token (`/interactions/{id}/{token}/callback`,
//! `/webhooks/{app}/{token}/…`). Every Discord error passes through [`redact`] before it is
//! logged.

/// Replaces the token segment after `/interactions/{id}/` and `/webhooks/{id}/` with `***`.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((pos, marker)) = ["/interactions/", "/webhooks/"]
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
                .find(['/', '?', ')', ' ', '"', '\''])
                .unwrap_or(rest.len());
            if token_end > 0 {
                out.push_str("***");
            }
            rest = &rest[token_end..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

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
}
