//! The web console (SPEC section 9): plain HTML, CSS and JS files built into the binary
//! (`src/api/console/`), served under `/console/` with a strict Content-Security-Policy.
//! Nothing is fetched from another host; the pages call the JSON API with the key the
//! user signed in with (kept in the browser's session storage).

use std::sync::Arc;

use hyper::header::{HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use hyper::{Response, StatusCode};

use serde_json::json;

use super::super::router::{full, Ctx, Reply};
use super::super::{App, Body};
use crate::error::{Error, Result};

/// No inline script or style, nothing from another origin, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'";

const INDEX: &str = include_str!("../console/index.html");

/// The console's files other than its page, by name.
const FILES: &[(&str, &str, &str)] = &[
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("../console/console.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/app.js"),
    ),
    (
        "pages.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/pages.js"),
    ),
    (
        "more.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/more.js"),
    ),
];

fn page(content_type: &'static str, body: &'static str) -> Response<Body> {
    let mut r = Response::new(full(body.as_bytes().to_vec()));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn redirect(to: &'static str) -> Response<Body> {
    let mut r = Response::new(full(Vec::new()));
    *r.status_mut() = StatusCode::FOUND;
    r.headers_mut()
        .insert(LOCATION, HeaderValue::from_static(to));
    r
}

/// `GET /`: a browser (`Accept: text/html`) is sent to the console; anything else
/// hears the usual 404.
pub async fn root(_app: &Arc<App>, ctx: &Ctx) -> Result<Response<Body>> {
    let html = ctx
        .headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"));
    if html {
        Ok(redirect("/console/"))
    } else {
        Err(Error::NotFound(
            "GET / answers only browsers (Accept: text/html), with a redirect to the web console at /console/".into(),
        ))
    }
}

/// `GET /console/` (and `/console`): the page. Its links are absolute, so both work.
pub async fn index(_app: &Arc<App>, _ctx: &Ctx) -> Result<Response<Body>> {
    Ok(page("text/html; charset=utf-8", INDEX))
}

/// `GET /console/{file}`: one of the console's stylesheet and scripts.
pub async fn file(_app: &Arc<App>, ctx: &Ctx) -> Result<Response<Body>> {
    let name = ctx.param("file")?;
    FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, ct, body)| page(ct, body))
        .ok_or_else(|| Error::NotFound(format!("no console file '{name}'")))
}

/// `GET /console/config.json`: what the console needs to know of the daemon's
/// settings, such as the session length a rent's hold covers (for the estimate it shows
/// before confirming).
pub async fn config(app: &Arc<App>, _ctx: &Ctx) -> Result<Reply> {
    Ok((
        StatusCode::OK,
        json!({
            "min_session_seconds": app.cfg.billing.min_session_seconds,
            "version": env!("CARGO_PKG_VERSION"),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files_and_has_no_inline_script_or_style() {
        for (name, _, _) in FILES {
            assert!(
                INDEX.contains(&format!("/console/{name}")),
                "{name} is not linked"
            );
        }
        let lower = INDEX.to_ascii_lowercase();
        assert!(!lower.contains("<style"), "inline style");
        assert!(!lower.contains(" style="), "inline style attribute");
        assert!(!lower.contains("http://") && !lower.contains("https://"));
        for part in lower.split("<script").skip(1) {
            let tag_end = part.find('>').unwrap();
            assert!(part[..tag_end].contains("src=\"/console/"), "inline script");
            assert!(
                part[tag_end + 1..].starts_with("</script>"),
                "inline script"
            );
        }
        for attr in ["onclick=", "onload=", "onerror=", "onsubmit=", "onchange="] {
            assert!(!lower.contains(attr), "inline event handler {attr}");
        }
    }

    #[test]
    fn scripts_never_put_data_into_inner_html() {
        for (name, _, body) in FILES {
            for word in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(!body.contains(word), "{name} uses {word}");
            }
        }
    }
}
