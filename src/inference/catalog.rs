//! The model catalogue: hosted models (served at once by an OpenAI-compatible upstream,
//! billed per token) and cold models (deployable on a spot GPU, billed by GPU time).
//!
//! It comes from `[[upstreams]]` and `[[models]]`; in sandbox mode a built-in part is
//! added: the sandbox's hosted upstream with per-token prices like real ones, and four
//! open models of different sizes that fit sandbox offers.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::money::Usd;

#[derive(Clone, Debug)]
pub struct HostedModel {
    pub id: String,
    pub upstream: String,
    /// OpenAI-compatible base URL ending in `/v1` (or the upstream's equivalent).
    pub base_url: String,
    /// The upstream's own key (from `api_key_env`), never the caller's.
    pub api_key: Option<String>,
    pub input_per_mtok: Usd,
    pub output_per_mtok: Usd,
}

#[derive(Clone, Debug)]
pub struct ColdModel {
    pub id: String,
    /// Total across the machine's GPUs.
    pub min_vram_gb: u32,
    pub image: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Model {
    Hosted(HostedModel),
    Cold(ColdModel),
}

#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub models: BTreeMap<String, Model>,
}

/// Sandbox hosted models and their prices per million tokens (input, output), in
/// micro-USD: the public list prices of comparable hosted models.
const SANDBOX_HOSTED_PRICES: &[(&str, i64, i64)] = &[
    ("gpt-4o-mini", 150_000, 600_000),
    ("llama-3.1-8b-instruct-hosted", 50_000, 80_000),
    ("text-embedding-3-small", 20_000, 0),
];

/// What a sandbox hosted model charges for `input` and `output` tokens (the simulator
/// checks charges against it).
pub(crate) fn sandbox_cost(model: &str, input: u64, output: u64) -> Option<Usd> {
    let &(_, i, o) = SANDBOX_HOSTED_PRICES.iter().find(|(m, _, _)| *m == model)?;
    let num = i128::from(i) * i128::from(input) + i128::from(o) * i128::from(output);
    Some(Usd(((num + 500_000) / 1_000_000) as i64))
}

/// Cold models of the sandbox: (id, total VRAM needed in GB).
const SANDBOX_COLD: &[(&str, u32)] = &[
    ("meta-llama/Llama-3.1-8B-Instruct", 24),
    ("mistralai/Mistral-Small-24B-Instruct-2501", 48),
    ("Qwen/Qwen2.5-32B-Instruct", 80),
    ("meta-llama/Llama-3.3-70B-Instruct", 160),
];

impl Catalog {
    /// Builds the catalogue. `sandbox_hosted` is the sandbox's hosted base URL and
    /// models in sandbox mode. `env` resolves `api_key_env`.
    pub fn build(
        cfg: &Config,
        sandbox_hosted: Option<(&str, &[String])>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Catalog, String> {
        let mut models = BTreeMap::new();
        if let Some((base, served)) = sandbox_hosted {
            for m in served {
                let (i, o) = SANDBOX_HOSTED_PRICES
                    .iter()
                    .find(|(id, _, _)| id == m)
                    .map(|(_, i, o)| (*i, *o))
                    .unwrap_or((100_000, 400_000));
                models.insert(
                    m.clone(),
                    Model::Hosted(HostedModel {
                        id: m.clone(),
                        upstream: "sandbox-hosted".into(),
                        base_url: base.to_string(),
                        api_key: None,
                        input_per_mtok: Usd(i),
                        output_per_mtok: Usd(o),
                    }),
                );
            }
            for (id, vram) in SANDBOX_COLD {
                models.insert(
                    id.to_string(),
                    Model::Cold(ColdModel {
                        id: id.to_string(),
                        min_vram_gb: *vram,
                        image: Some("vllm/vllm-openai:latest".into()),
                    }),
                );
            }
        }
        for u in &cfg.upstreams {
            let api_key = match &u.api_key_env {
                Some(var) => Some(env(var).ok_or_else(|| {
                    format!(
                        "upstreams '{}': environment variable {var} (api_key_env) is not set",
                        u.name
                    )
                })?),
                None => None,
            };
            for m in &u.models {
                models.insert(
                    m.clone(),
                    Model::Hosted(HostedModel {
                        id: m.clone(),
                        upstream: u.name.clone(),
                        base_url: u.base_url.trim_end_matches('/').to_string(),
                        api_key: api_key.clone(),
                        input_per_mtok: u.input_usd_per_mtok,
                        output_per_mtok: u.output_usd_per_mtok,
                    }),
                );
            }
        }
        for m in &cfg.models {
            models.insert(
                m.id.clone(),
                Model::Cold(ColdModel {
                    id: m.id.clone(),
                    min_vram_gb: m.min_vram_gb,
                    image: m.image.clone(),
                }),
            );
        }
        Ok(Catalog { models })
    }

    pub fn get(&self, id: &str) -> Option<&Model> {
        self.models.get(id)
    }
}

/// What `input` and `output` tokens cost at per-million-token prices, rounded half up
/// to the micro-dollar (the same rule as `money::prorate`).
pub fn token_cost(m: &HostedModel, input: u64, output: u64) -> Usd {
    let num = i128::from(m.input_per_mtok.micros()) * i128::from(input)
        + i128::from(m.output_per_mtok.micros()) * i128::from(output);
    Usd(((num + 500_000) / 1_000_000).clamp(0, i128::from(i64::MAX)) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_cost_is_exact() {
        let m = HostedModel {
            id: "m".into(),
            upstream: "u".into(),
            base_url: "http://x/v1".into(),
            api_key: None,
            input_per_mtok: Usd(150_000),
            output_per_mtok: Usd(600_000),
        };
        // 1M in + 1M out = $0.75.
        assert_eq!(token_cost(&m, 1_000_000, 1_000_000), Usd(750_000));
        // 10 in + 20 out = 1.5 + 12 = 13.5 micro -> 14 (half up).
        assert_eq!(token_cost(&m, 10, 20), Usd(14));
        assert_eq!(token_cost(&m, 0, 0), Usd::ZERO);
    }

    #[test]
    fn sandbox_catalogue_has_hosted_and_four_cold_models() {
        let cfg = Config::default();
        let served = vec!["gpt-4o-mini".to_string()];
        let c = Catalog::build(&cfg, Some(("http://h/v1", &served)), |_| None).unwrap();
        assert!(matches!(c.get("gpt-4o-mini"), Some(Model::Hosted(_))));
        let cold = c
            .models
            .values()
            .filter(|m| matches!(m, Model::Cold(_)))
            .count();
        assert!(cold >= 4);
    }
}
