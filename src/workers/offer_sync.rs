//! TEMP STUB
use crate::{clock::Clock, market::Market, providers::registry::Registry, store::Store};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
pub async fn refresh_once(_r: &Arc<Registry>, _n: &str, _m: &Market, _s: &Store, _c: &Clock) {}
pub async fn run(_r: Arc<Registry>, _m: Market, _s: Store, _c: Clock, _t: CancellationToken) {}
