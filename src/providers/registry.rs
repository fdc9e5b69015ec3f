//! TEMP STUB
use super::Provider;
use crate::config::ProviderConfig;
use crate::http_client::HttpClient;
use std::sync::Arc;
pub struct Registry;
#[derive(serde::Serialize)]
pub struct ProviderStatus;
impl Registry {
    pub fn from_config(_c: &[ProviderConfig], _h: HttpClient) -> Result<Registry, String> {
        Ok(Registry)
    }
    pub fn get(&self, _n: &str) -> Option<Arc<dyn Provider>> {
        None
    }
    pub fn names(&self) -> Vec<String> {
        vec![]
    }
    pub fn refresh_now(&self, _n: &str) {}
    pub fn statuses(&self) -> Vec<ProviderStatus> {
        vec![]
    }
}
