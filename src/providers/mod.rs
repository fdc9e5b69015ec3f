//! Providers: the one interface every GPU cloud is driven through.
//!
//! A provider lists offers, creates an instance for an offer (labelled with spotd's
//! rental id so a restart can find it again), reads and lists instances, and
//! terminates them. Provider calls never happen inside a store transaction.

pub(crate) mod http;
pub mod lambda;
pub(crate) mod protocol;
pub(crate) mod registry;
mod rest;
pub mod runpod;
pub mod vastai;

use async_trait::async_trait;

/// The image a cold model runs on a container cloud when its `[[models]]` entry names
/// none: vLLM's OpenAI-compatible server.
pub(crate) const MODEL_IMAGE: &str = "vllm/vllm-openai:latest";
/// The port the model server listens on inside its container.
pub(crate) const MODEL_PORT: u16 = 8000;

/// The arguments a cold model's container gets (vLLM's documented `docker run`
/// arguments): the model, the port, and one tensor-parallel shard per GPU. The
/// deployment's key reaches the server as `VLLM_API_KEY` in its environment.
pub(crate) fn model_server_args(model: &str, gpu_count: u32) -> Vec<String> {
    vec![
        "--model".into(),
        model.into(),
        "--port".into(),
        MODEL_PORT.to_string(),
        "--tensor-parallel-size".into(),
        gpu_count.max(1).to_string(),
    ]
}

pub use protocol::{CreateInstance, Instance, InstanceState, ProviderOffer};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// The offer has no machine left: try the next candidate.
    #[error("no capacity for this offer")]
    NoCapacity,
    /// The key was refused (401/403).
    #[error("provider refused the credentials: {0}")]
    Unauthorized(String),
    /// 429; `retry_after_secs` when the provider said.
    #[error("provider rate limit reached")]
    RateLimited { retry_after_secs: Option<u64> },
    /// The provider refused the request itself (other 4xx).
    #[error("provider rejected the request: {0}")]
    Rejected(String),
    /// 5xx, timeout, connection failure, unreadable answer: the outcome is unknown.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// The name from the config: offer id prefix and the name shown everywhere.
    fn name(&self) -> &str;
    async fn list_offers(&self) -> Result<Vec<ProviderOffer>, ProviderError>;
    async fn create_instance(&self, req: &CreateInstance) -> Result<Instance, ProviderError>;
    /// `Ok(None)` when the provider does not know the instance (404).
    async fn get_instance(&self, id: &str) -> Result<Option<Instance>, ProviderError>;
    /// Every instance of this caller, in any state.
    async fn list_instances(&self) -> Result<Vec<Instance>, ProviderError>;
    /// `Ok(None)` when the instance is already gone (404).
    async fn terminate(&self, id: &str) -> Result<Option<Instance>, ProviderError>;
    /// Whether an instance created with `model` set runs that model's server and
    /// reports its OpenAI base URL as `endpoint` (container clouds); `false` for clouds
    /// that only hand out VMs, which cold models never deploy on.
    fn serves_models(&self) -> bool {
        true
    }
}
