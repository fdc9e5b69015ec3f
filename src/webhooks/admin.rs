//! The admin's operations on endpoints: create (the secret is answered here and never
//! again), list, delete, and one endpoint's deliveries. Everything is checked before
//! anything is written: a bad request changes nothing.

use super::{sign, EventType};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::ids;
use crate::model::{Delivery, Webhook};
use crate::store::Store;

/// Endpoints at most (each event reads them all inside its transaction).
pub const MAX_WEBHOOKS: usize = 100;
/// Longest URL accepted.
pub const MAX_URL_BYTES: usize = 2048;
/// Longest description accepted.
pub const MAX_DESCRIPTION_CHARS: usize = 500;

/// What `POST /admin/v1/webhooks` asks for.
#[derive(Clone, Debug)]
pub(crate) struct NewWebhook {
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
}

/// An endpoint URL must be absolute `http://` or `https://` with a host.
pub(crate) fn check_url(url: &str) -> Result<()> {
    let bad = |why: &str| Error::invalid_param("url", format!("url {why}"));
    if url.is_empty() {
        return Err(bad("must not be empty"));
    }
    if url.len() > MAX_URL_BYTES {
        return Err(bad(&format!("must be at most {MAX_URL_BYTES} bytes")));
    }
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| bad("is not a valid absolute URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(bad("must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("must name a host"));
    }
    Ok(())
}

/// The event list, checked: known types or `"*"`, at least one, no repeats kept.
fn check_events(events: &[String]) -> Result<Vec<String>> {
    if events.is_empty() {
        return Err(Error::invalid_param(
            "events",
            "events must list at least one event type, or \"*\" for all",
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for e in events {
        if e != "*" && EventType::parse(e).is_none() {
            let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
            return Err(Error::invalid_param(
                "events",
                format!(
                    "unknown event type '{e}': use \"*\" or any of {}",
                    known.join(", ")
                ),
            ));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    if out.iter().any(|e| e == "*") {
        out = vec!["*".to_string()];
    }
    Ok(out)
}

/// Creates an endpoint; answers it and its secret (`whsec_...`), which is not stored
/// as such and cannot be read again.
pub(crate) async fn create(
    store: &Store,
    clock: &Clock,
    req: NewWebhook,
) -> Result<(Webhook, String)> {
    check_url(&req.url)?;
    let events = check_events(&req.events)?;
    if let Some(d) = &req.description {
        if d.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(Error::invalid_param(
                "description",
                format!("description must be at most {MAX_DESCRIPTION_CHARS} characters"),
            ));
        }
    }
    let (key, secret) = sign::new_key();
    let w = Webhook {
        id: ids::new_id("wh"),
        url: req.url,
        events,
        description: req.description,
        key,
        created_at: clock.now(),
    };
    let stored = w.clone();
    store
        .write(move |tx| {
            if tx.webhooks()?.len() >= MAX_WEBHOOKS {
                return Err(Error::conflict(
                    "too_many_webhooks",
                    format!("at most {MAX_WEBHOOKS} webhooks: delete one first"),
                ));
            }
            tx.put_webhook(&stored)?;
            Ok(())
        })
        .await?;
    tracing::info!(webhook = %w.id, events = ?w.events, "webhook created");
    Ok((w, secret))
}

/// Every endpoint, oldest first (at most [`MAX_WEBHOOKS`]).
pub(crate) async fn list(store: &Store) -> Result<Vec<Webhook>> {
    let mut v = store.read(|rx| rx.webhooks()).await?;
    v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(v)
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("no webhook with id '{id}'"))
}

/// Deletes an endpoint: nothing more is sent to it, including what was queued.
pub(crate) async fn delete(store: &Store, id: &str) -> Result<Webhook> {
    let id = id.to_string();
    let w = store
        .write(move |tx| {
            if !tx.webhooks()?.iter().any(|w| w.id == id) {
                return Err(not_found(&id));
            }
            Ok(tx.remove_webhook(&id)?)
        })
        .await?;
    let w = w.ok_or_else(|| Error::Bug("a webhook vanished while being deleted".into()))?;
    tracing::info!(webhook = %w.id, "webhook deleted");
    Ok(w)
}

/// A page of an endpoint's deliveries, newest first, strictly before seq `before`.
pub(crate) async fn deliveries(
    store: &Store,
    id: &str,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<Delivery>> {
    let id = id.to_string();
    store
        .read(move |rx| {
            if rx.webhook(&id)?.is_none() {
                return Err(not_found(&id));
            }
            Ok(rx.webhook_deliveries(&id, before, limit)?)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_or_https_with_a_host() {
        for ok in [
            "http://127.0.0.1:9000/hook",
            "https://example.com/a?b=c",
            "http://[::1]:8080/",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ftp://example.com/x",
            "file:///etc/passwd",
            "example.com/hook",
            "/relative",
            "http://",
            "javascript:alert(1)",
            "http://exa mple.com/",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url(&format!("https://e.com/{}", "a".repeat(MAX_URL_BYTES))).is_err());
    }

    #[test]
    fn events_are_known_types_or_a_star() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            check_events(&v(&["rental.running", "rental.running", "rental.ended"])).unwrap(),
            v(&["rental.running", "rental.ended"])
        );
        assert_eq!(check_events(&v(&["rental.ended", "*"])).unwrap(), v(&["*"]));
        assert!(check_events(&v(&[])).is_err());
        assert!(check_events(&v(&["rental.exploded"])).is_err());
    }
}
