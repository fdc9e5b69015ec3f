//! TEMP STUB (replaced by the market branch).
use crate::error::{Error, Result};
use crate::model::Offer;
use crate::money::Usd;
use std::sync::{Arc, RwLock};
#[derive(Clone, Debug, Default)]
pub struct OfferFilter {
    pub gpu: Option<String>,
    pub gpu_count: Option<u32>,
    pub min_gpu_count: Option<u32>,
    pub min_vram_gb: Option<u32>,
    pub min_total_vram_gb: Option<u32>,
    pub max_price: Option<Usd>,
    pub provider: Option<String>,
    pub region: Option<String>,
    pub interruptible: Option<bool>,
}
pub struct OfferQuery;
impl OfferQuery {
    pub fn from_query_string(_q: &str) -> Result<OfferQuery> {
        Ok(OfferQuery)
    }
}
pub struct OfferPage {
    pub data: Vec<Offer>,
    pub next_cursor: Option<String>,
}
#[derive(Clone, Default)]
pub struct Market {
    o: Arc<RwLock<Vec<Offer>>>,
}
impl Market {
    pub fn from_offers(v: Vec<Offer>) -> Market {
        Market {
            o: Arc::new(RwLock::new(v)),
        }
    }
    pub fn get(&self, id: &str) -> Option<Offer> {
        self.o.read().unwrap().iter().find(|o| o.id == id).cloned()
    }
    pub fn len(&self) -> usize {
        self.o.read().unwrap().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn query(&self, _q: &OfferQuery) -> Result<OfferPage> {
        Err(Error::bad("stub"))
    }
    pub fn cheapest(&self, _f: &OfferFilter, _n: usize) -> Vec<Offer> {
        vec![]
    }
}
