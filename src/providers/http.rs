//! The `http` provider: any pool that speaks the small JSON protocol of SPEC section 5
//! (also what the sandbox clouds serve), over the same plumbing as the real clouds'
//! adapters ([`rest`]).
//!
//! Every answer is untrusted: statuses map onto `ProviderError` by one function, and a
//! body that does not parse is `Unavailable`, never a panic. 409 `no_capacity` means
//! "try the next offer"; 5xx, timeouts and transport failures mean "outcome unknown".
//! The protocol's errors are `{"error": "<code>"}`, and that code is what error
//! messages quote.

use async_trait::async_trait;
use hyper::{Method, StatusCode};

use super::protocol::{ErrorBody, InstancesResponse};
use super::rest::{self, parse, RestApi};
use super::{CreateInstance, Instance, Provider, ProviderError, ProviderOffer};
use crate::http_client::{HttpClient, HttpResponse};

#[derive(Debug)]
pub struct HttpProvider {
    api: RestApi,
}

impl HttpProvider {
    pub fn new(
        name: impl Into<String>,
        base_url: impl Into<String>,
        api_key: Option<String>,
        client: HttpClient,
    ) -> HttpProvider {
        HttpProvider {
            api: RestApi::at(name.into(), &base_url.into(), api_key, client),
        }
    }
}

/// What the pool said: the protocol's error code when the body is `{"error": ...}`,
/// else the generic excerpt.
fn excerpt(r: &HttpResponse) -> String {
    match serde_json::from_slice::<ErrorBody>(&r.body) {
        Ok(e) => e.error,
        Err(_) => rest::excerpt(r),
    }
}

/// 409 `{"error": "no_capacity"}`: the offer has no machine left.
fn no_capacity(r: &HttpResponse) -> bool {
    r.status == StatusCode::CONFLICT
        && serde_json::from_slice::<ErrorBody>(&r.body).is_ok_and(|e| e.error == "no_capacity")
}

fn status_error(r: &HttpResponse) -> ProviderError {
    rest::status_error_with(r, no_capacity, excerpt)
}

/// The offers of a `GET /offers` answer. Prices with more than six decimals (a pool
/// written in a language with binary floats sends `0.30000000000000004`) are rounded
/// up to the micro-dollar, as for the other providers; an offer that still does not
/// fit the protocol is skipped with a warning instead of failing the whole listing.
///
/// The list is parsed as it is read: one offer at a time becomes a `Value` (for the
/// rounding) and then a `ProviderOffer`, so a 100k-offer listing costs its body and
/// the offers, never a `Value` tree of the whole list (which took RSS to ~800 MB).
fn offers_of(provider: &str, body: &[u8]) -> Result<Vec<ProviderOffer>, ProviderError> {
    let listing: Listing = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Unavailable(format!("unreadable offers answer: {e}")))?;
    let Some((out, skipped)) = listing.offers else {
        return Err(ProviderError::Unavailable(
            "answer without \"offers\"".into(),
        ));
    };
    match skipped {
        Some((n, first)) if out.is_empty() => Err(ProviderError::Unavailable(format!(
            "none of the {n} offers is valid: {first}"
        ))),
        Some((n, first)) => {
            tracing::warn!(provider, skipped = n, error = %first, "offers skipped");
            Ok(out)
        }
        None => Ok(out),
    }
}

/// The offers and (how many were skipped, the first reason).
type Parsed = (Vec<ProviderOffer>, Option<(usize, String)>);

/// `{"offers": [...], ...}`, other keys ignored.
struct Listing {
    offers: Option<Parsed>,
}

impl<'de> serde::Deserialize<'de> for Listing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Listing, D::Error> {
        struct Top;
        impl<'de> serde::de::Visitor<'de> for Top {
            type Value = Listing;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object with \"offers\"")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Listing, A::Error> {
                let mut offers = None;
                while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    if k == "offers" && offers.is_none() {
                        offers = Some(m.next_value_seed(Offers)?);
                    } else {
                        m.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(Listing { offers })
            }
        }
        d.deserialize_map(Top)
    }
}

/// The `offers` array, one element at a time.
struct Offers;

impl<'de> serde::de::DeserializeSeed<'de> for Offers {
    type Value = Parsed;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Parsed, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Offers {
    type Value = Parsed;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of offers")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        let mut skipped: Option<(usize, String)> = None;
        while let Some(mut o) = seq.next_element::<serde_json::Value>()? {
            for field in ["price_per_hour", "on_demand_price_per_hour"] {
                if let Some(p) = o.get(field).and_then(rest::usd_per_hour) {
                    o[field] = p.to_json();
                }
            }
            match serde_json::from_value::<ProviderOffer>(o) {
                Ok(offer) => out.push(offer),
                Err(e) => {
                    let s = skipped.get_or_insert((0, e.to_string()));
                    s.0 += 1;
                }
            }
        }
        Ok((out, skipped))
    }
}

/// `/instances/{id}`, the id one path segment whatever it holds.
fn instance_path(id: &str) -> String {
    format!("/instances/{}", rest::seg(id))
}

#[async_trait]
impl Provider for HttpProvider {
    fn name(&self) -> &str {
        &self.api.name
    }

    async fn list_offers(&self) -> Result<Vec<ProviderOffer>, ProviderError> {
        let r = self.api.req(Method::GET, "/offers", None).await?;
        if r.status != StatusCode::OK {
            return Err(status_error(&r));
        }
        offers_of(&self.api.name, &r.body)
    }

    async fn create_instance(&self, req: &CreateInstance) -> Result<Instance, ProviderError> {
        let r = self.api.send(Method::POST, "/instances", Some(req)).await?;
        // 200 is accepted too: some pools answer an idempotent re-create that way.
        if r.status != StatusCode::CREATED && r.status != StatusCode::OK {
            return Err(status_error(&r));
        }
        parse(&r)
    }

    async fn get_instance(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        let r = self.api.req(Method::GET, &instance_path(id), None).await?;
        match r.status {
            StatusCode::OK => parse(&r).map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(status_error(&r)),
        }
    }

    async fn list_instances(&self) -> Result<Vec<Instance>, ProviderError> {
        let r = self.api.req(Method::GET, "/instances", None).await?;
        if r.status != StatusCode::OK {
            return Err(status_error(&r));
        }
        Ok(parse::<InstancesResponse>(&r)?.instances)
    }

    async fn terminate(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        let r = self
            .api
            .req(Method::DELETE, &instance_path(id), None)
            .await?;
        match r.status {
            StatusCode::OK | StatusCode::ACCEPTED => parse(&r).map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(status_error(&r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::providers::InstanceState;

    /// A pool's listing parsed as arbitrary_precision serde_json does: float noise
    /// rounds up to the micro-dollar, one bad offer is skipped, all bad is an error.
    #[test]
    fn offers_round_float_noise_up_and_skip_bad_ones() {
        let offer = |id: &str, price: &str| {
            format!(
                r#"{{"id":"{id}","gpu":"T4","gpu_count":1,"vram_gb":16,"vcpus":4,"ram_gb":16,
                "disk_gb":100,"region":"eu","price_per_hour":{price},"on_demand_price_per_hour":0.35,
                "interruptible":true,"reliability":0.99,"available":1}}"#
            )
        };
        let list = |offers: &[String]| -> Vec<u8> {
            format!(r#"{{"next":null,"offers":[{}]}}"#, offers.join(",")).into_bytes()
        };
        let v = list(&[
            offer("a", "0.30000000000000004"),
            offer("b", "\"cheap\""),
            offer("c", "0.25"),
        ]);
        let got = offers_of("pool", &v).unwrap();
        let prices: Vec<(&str, i64)> = got
            .iter()
            .map(|o| (o.id.as_str(), o.price_per_hour.micros()))
            .collect();
        assert_eq!(prices, vec![("a", 300_001), ("c", 250_000)]);
        assert_eq!(
            got[0].on_demand_price_per_hour,
            Some(crate::money::Usd::from_micros(350_000))
        );
        let err = offers_of("pool", &list(&[offer("b", "[]")])).unwrap_err();
        assert!(err.to_string().contains("none of the 1 offers"), "{err}");
        assert!(offers_of("pool", br#"{"x": []}"#).is_err());
        assert!(offers_of("pool", b"[1, 2]").is_err());
        assert!(offers_of("pool", br#"{"offers": 3}"#).is_err());
        assert_eq!(offers_of("pool", &list(&[])).unwrap(), vec![]);
    }

    type Reply = (u16, Vec<(&'static str, String)>, String);
    type Handler = Arc<dyn Fn(&str, &str) -> Reply + Send + Sync>;

    /// A loopback server answering with `handler(method, path)`; it records the
    /// `Authorization` headers it saw. `/slow` answers after two seconds.
    async fn server(handler: Handler) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        let seen = seen.clone();
                        async move {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            seen.lock().unwrap().push(auth);
                            let path = req.uri().path().to_string();
                            if path.ends_with("/slow/offers") {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            }
                            let (status, headers, body) = handler(req.method().as_str(), &path);
                            let mut resp = Response::builder().status(status);
                            for (k, v) in headers {
                                resp = resp.header(k, v);
                            }
                            Ok::<_, Infallible>(resp.body(Full::new(Bytes::from(body))).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn instance_json(id: &str, state: &str) -> String {
        format!(
            r#"{{"id":"{id}","offer_id":"o1","label":"rnt_1","state":"{state}","endpoint":null,"ssh":null,"created_at":"2026-01-01T00:00:00Z"}}"#
        )
    }

    fn provider(base: &str, key: Option<&str>) -> HttpProvider {
        HttpProvider::new(
            "lab",
            format!("{base}/pool/"),
            key.map(str::to_string),
            HttpClient::new(Duration::from_millis(300)),
        )
    }

    #[tokio::test]
    async fn happy_paths_and_not_found() {
        let (base, seen) = server(Arc::new(|m, p| match (m, p) {
            ("GET", "/pool/offers") => (
                200,
                vec![],
                r#"{"offers":[{"id":"o1","gpu":"H100 SXM","gpu_count":8,"vram_gb":80,"vcpus":96,"ram_gb":1024,"disk_gb":2000,"region":"us-east-1","price_per_hour":19.123456,"on_demand_price_per_hour":null,"interruptible":true,"reliability":0.99,"available":2}]}"#.into(),
            ),
            ("POST", "/pool/instances") => (201, vec![], instance_json("i-1", "provisioning")),
            ("GET", "/pool/instances") => (
                200,
                vec![],
                format!(r#"{{"instances":[{}]}}"#, instance_json("i-1", "running")),
            ),
            ("GET", "/pool/instances/i-1") => (200, vec![], instance_json("i-1", "running")),
            ("DELETE", "/pool/instances/i-1") => (200, vec![], instance_json("i-1", "terminating")),
            _ => (404, vec![], r#"{"error":"not_found"}"#.into()),
        }))
        .await;
        let p = provider(&base, Some("sekret"));
        let offers = p.list_offers().await.unwrap();
        assert_eq!(offers.len(), 1);
        assert_eq!(offers[0].price_per_hour.micros(), 19_123_456);
        let req = CreateInstance {
            offer_id: "o1".into(),
            label: "rnt_1".into(),
            ..CreateInstance::default()
        };
        assert_eq!(
            p.create_instance(&req).await.unwrap().state,
            InstanceState::Provisioning
        );
        assert_eq!(
            p.list_instances().await.unwrap()[0].state,
            InstanceState::Running
        );
        assert_eq!(p.get_instance("i-1").await.unwrap().unwrap().id, "i-1");
        assert_eq!(p.get_instance("i-2").await.unwrap(), None);
        assert_eq!(
            p.terminate("i-1").await.unwrap().unwrap().state,
            InstanceState::Terminating
        );
        assert_eq!(p.terminate("i-9").await.unwrap(), None);
        // An id with a slash stays one path segment.
        assert_eq!(p.get_instance("i-1/../x").await.unwrap(), None);
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 8);
            assert!(
                seen.iter().all(|a| a.as_deref() == Some("Bearer sekret")),
                "{seen:?}"
            );
        }
        let anon = provider(&base, None);
        anon.list_offers().await.unwrap();
        assert_eq!(seen.lock().unwrap().last(), Some(&None));
    }

    #[tokio::test]
    async fn errors_map_onto_provider_errors() {
        let (base, _) = server(Arc::new(|_m, p| match p {
            "/nocap/instances" => (409, vec![], r#"{"error":"no_capacity"}"#.into()),
            "/conflict/instances" => (409, vec![], r#"{"error":"label_taken"}"#.into()),
            "/auth/offers" => (401, vec![], r#"{"error":"bad key"}"#.into()),
            "/forbid/offers" => (403, vec![], String::new()),
            "/limit/offers" => (429, vec![("retry-after", "7".into())], String::new()),
            "/limit2/offers" => (429, vec![], String::new()),
            "/bad/offers" => (422, vec![], "no such thing".into()),
            "/down/offers" => (500, vec![], "<html>oops</html>".into()),
            "/garbage/offers" => (200, vec![], r#"{"offers":[{"id":1}]"#.into()),
            "/garbage/instances/x" => (200, vec![], "not json".into()),
            "/money/offers" => (
                200,
                vec![],
                r#"{"offers":[{"id":"o","gpu":"T4","gpu_count":1,"vram_gb":16,"vcpus":4,"ram_gb":16,"disk_gb":50,"region":"r","price_per_hour":0.1234567,"on_demand_price_per_hour":null,"interruptible":true,"reliability":1,"available":1}]}"#.into(),
            ),
            _ => (404, vec![], String::new()),
        }))
        .await;
        let at = |path: &str| {
            HttpProvider::new(
                "x",
                format!("{base}/{path}"),
                None,
                HttpClient::new(Duration::from_millis(300)),
            )
        };
        let req = CreateInstance::default();
        assert_eq!(
            at("nocap").create_instance(&req).await,
            Err(ProviderError::NoCapacity)
        );
        assert!(
            matches!(at("conflict").create_instance(&req).await, Err(ProviderError::Rejected(m)) if m == "label_taken")
        );
        assert!(
            matches!(at("auth").list_offers().await, Err(ProviderError::Unauthorized(m)) if m == "bad key")
        );
        assert!(matches!(
            at("forbid").list_offers().await,
            Err(ProviderError::Unauthorized(_))
        ));
        assert_eq!(
            at("limit").list_offers().await,
            Err(ProviderError::RateLimited {
                retry_after_secs: Some(7)
            })
        );
        assert_eq!(
            at("limit2").list_offers().await,
            Err(ProviderError::RateLimited {
                retry_after_secs: None
            })
        );
        assert!(
            matches!(at("bad").list_offers().await, Err(ProviderError::Rejected(m)) if m.contains("no such thing"))
        );
        assert!(
            matches!(at("down").list_offers().await, Err(ProviderError::Unavailable(m)) if m.contains("500"))
        );
        assert!(matches!(
            at("garbage").list_offers().await,
            Err(ProviderError::Unavailable(_))
        ));
        assert!(matches!(
            at("garbage").get_instance("x").await,
            Err(ProviderError::Unavailable(_))
        ));
        // A price with more than 6 decimals is rounded up to the micro-dollar.
        let money = at("money").list_offers().await.unwrap();
        assert_eq!(money[0].price_per_hour.micros(), 123_457);
        assert!(
            matches!(at("slow").list_offers().await, Err(ProviderError::Unavailable(m)) if m.contains("timed out"))
        );
    }

    #[tokio::test]
    async fn connection_refused_is_unavailable() {
        // Bind then drop: nothing listens on that port any more.
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let p = HttpProvider::new(
            "x",
            format!("http://{addr}"),
            None,
            HttpClient::new(Duration::from_millis(300)),
        );
        assert!(matches!(
            p.list_offers().await,
            Err(ProviderError::Unavailable(_))
        ));
        assert!(matches!(
            p.terminate("i").await,
            Err(ProviderError::Unavailable(_))
        ));
    }
}
