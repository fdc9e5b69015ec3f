//! The wire types of the `http` provider protocol (SPEC section 5), which the sandbox
//! clouds serve and `providers::http` calls. Money fields are exact JSON numbers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::Ssh;
use crate::money::{self, Usd};

/// One offer as a provider lists it (`GET {base}/offers`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderOffer {
    pub id: String,
    pub gpu: String,
    pub gpu_count: u32,
    pub vram_gb: u32,
    pub vcpus: u32,
    pub ram_gb: u32,
    pub disk_gb: u32,
    pub region: String,
    #[serde(serialize_with = "money::ser", deserialize_with = "money::de")]
    pub price_per_hour: Usd,
    #[serde(
        default,
        serialize_with = "money::ser_opt",
        deserialize_with = "money::de_opt"
    )]
    pub on_demand_price_per_hour: Option<Usd>,
    pub interruptible: bool,
    pub reliability: f64,
    pub available: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OffersResponse {
    pub offers: Vec<ProviderOffer>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    Provisioning,
    Running,
    Terminating,
    Terminated,
    Interrupted,
    Failed,
}

impl InstanceState {
    /// The instance no longer runs and never will again.
    pub fn is_gone(self) -> bool {
        matches!(
            self,
            InstanceState::Terminated | InstanceState::Interrupted | InstanceState::Failed
        )
    }
}

/// An instance as a provider reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub offer_id: String,
    /// spotd's rental id.
    pub label: String,
    pub state: InstanceState,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub ssh: Option<Ssh>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; when the instance stopped running (terminated, interrupted, failed).
    /// An extension of the protocol: spotd bills an interruption up to this moment
    /// when the provider says it, up to the moment it noticed otherwise.
    #[serde(default)]
    pub ended_at: Option<String>,
}

impl Instance {
    /// What an adapter reports right after a create call the provider accepted.
    pub fn just_created(id: impl Into<String>, req: &CreateInstance) -> Instance {
        Instance::bare(
            id.into(),
            req.offer_id.clone(),
            req.label.clone(),
            InstanceState::Provisioning,
        )
    }

    /// What an adapter reports after a destroy the provider confirmed.
    pub fn destroyed(id: impl Into<String>) -> Instance {
        Instance::bare(
            id.into(),
            String::new(),
            String::new(),
            InstanceState::Terminated,
        )
    }

    fn bare(id: String, offer_id: String, label: String, state: InstanceState) -> Instance {
        Instance {
            id,
            offer_id,
            label,
            state,
            endpoint: None,
            ssh: None,
            created_at: String::new(),
            ended_at: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstancesResponse {
    pub instances: Vec<Instance>,
}

/// `POST {base}/instances`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateInstance {
    /// The provider's native offer id (without spotd's `provider:` prefix).
    pub offer_id: String,
    pub label: String,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub ssh_public_key: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// GPUs in the offer's machine (a model server shards the model across them).
    /// Not part of the `http` protocol body: adapters that need it get it from here.
    #[serde(skip)]
    pub gpu_count: u32,
}

/// `409 {"error": "no_capacity"}` and other protocol errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
