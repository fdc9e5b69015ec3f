//! Inference answers as HTTP responses: a JSON body with `x-request-id`, server-sent
//! events passed on chunk by chunk, or `202 Accepted` + `Retry-After` for a model that
//! is being deployed (SPEC section 3). `inference` decides what to answer; this is the
//! only place that knows how it looks on the wire.

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::json;

use super::{Body, BoxError};
use crate::inference::Answer;

pub fn render(a: Answer) -> Response<Body> {
    match a {
        Answer::Json {
            status,
            body,
            request_id,
        } => with_request_id(raw_json(status_of(status), body), &request_id),
        Answer::Events {
            status,
            events,
            request_id,
        } => {
            let frames =
                events.map(|chunk| chunk.map(Frame::data).map_err(|e| -> BoxError { e.into() }));
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(frames)));
            *r.status_mut() = status_of(status);
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            h.insert("cache-control", HeaderValue::from_static("no-cache"));
            with_request_id(r, &request_id)
        }
        Answer::Deploying {
            model,
            eta_seconds,
            stream: false,
        } => deploying(&model, eta_seconds),
        Answer::Deploying {
            model,
            eta_seconds,
            stream: true,
        } => not_ready_for_a_stream(&model, eta_seconds),
    }
}

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY)
}

fn with_request_id(mut r: Response<Body>, request_id: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

fn raw_json(status: StatusCode, bytes: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(bytes).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// 202 + Retry-After + the body of SPEC section 3.
fn deploying(model: &str, eta: u64) -> Response<Body> {
    let v = json!({
        "status": "deploying",
        "message": ready_in(model, eta),
        "type": "model_deploying",
        "estimated_ready_seconds": eta,
    });
    let mut r = raw_json(StatusCode::ACCEPTED, Bytes::from(v.to_string()));
    if let Ok(h) = HeaderValue::from_str(&eta.to_string()) {
        r.headers_mut().insert(RETRY_AFTER, h);
    }
    r
}

fn ready_in(model: &str, eta: u64) -> String {
    let minutes = eta.div_ceil(60).max(1);
    format!(
        "Model '{model}' is being deployed on a spot GPU. Estimated ready in ~{minutes} minute{}.",
        if minutes == 1 { "" } else { "s" }
    )
}

/// A streamed request to a model that is not ready yet: a 202 JSON body would end the
/// SDKs' event iterators with no event and no error, so it is a 503 + Retry-After with
/// an OpenAI error instead, which the SDKs raise (after their own retries, which honour
/// Retry-After).
fn not_ready_for_a_stream(model: &str, eta: u64) -> Response<Body> {
    let v = json!({"error": {
        "message": format!("{} Retry after {eta} s, or send 'Prefer: wait=N' to hold the request until it is ready.", ready_in(model, eta)),
        "type": "service_unavailable",
        "code": "model_deploying",
        "param": null,
    }});
    let mut r = raw_json(StatusCode::SERVICE_UNAVAILABLE, Bytes::from(v.to_string()));
    if let Ok(h) = HeaderValue::from_str(&eta.to_string()) {
        r.headers_mut().insert(RETRY_AFTER, h);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deploying_is_202_with_retry_after_and_the_spec_body() {
        let r = render(Answer::Deploying {
            model: "m".into(),
            eta_seconds: 300,
            stream: false,
        });
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(r.headers()[RETRY_AFTER], "300");
        assert!(r.headers().get("x-request-id").is_none());
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "model_deploying");
        assert_eq!(v["estimated_ready_seconds"], 300);
        assert_eq!(v["status"], "deploying");
    }

    #[tokio::test]
    async fn a_stream_to_a_deploying_model_is_a_503_error_not_an_empty_success() {
        let r = render(Answer::Deploying {
            model: "m".into(),
            eta_seconds: 60,
            stream: true,
        });
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "60");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "model_deploying");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("~1 minute."));
    }

    #[test]
    fn json_answers_keep_status_and_name_their_request() {
        let r = render(Answer::Json {
            status: 429,
            body: Bytes::from_static(b"{}"),
            request_id: "req_1".into(),
        });
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["x-request-id"], "req_1");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    }
}
