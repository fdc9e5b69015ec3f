//! The simulated instance lifecycle: a stored record of timestamps, and the state those
//! timestamps imply at a given "now".
//!
//! Nothing here ticks: an instance is `provisioning` until `ready_at`, then `running`,
//! until it is deleted (`terminating` for one second, then `terminated`) or preempted
//! (`interrupted` at `preempt_at`). Deriving the state on every read means a restart,
//! or time passing while nobody is looking, always gives the right answer. Randomness
//! (preemption times) comes from a seeded PRNG so a run replays identically.

use serde::{Deserialize, Serialize};

use crate::clock::{rfc3339, Millis};
use crate::providers::protocol::{Instance, InstanceState};
use crate::store::codec::{unknown_version, Body, Versioned};
use crate::store::StoreError;

/// How long a deleted instance stays `terminating`.
pub const TERMINATE_MS: Millis = 1_000;

/// What the sandbox stores per instance (encoded with `store::codec`, so no
/// `skip_serializing_if` or untagged enums), as record version 2; see its
/// [`Versioned`] impl for the older versions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub cloud: String,
    pub id: String,
    /// Creation order within the cloud (the counter that made `id`).
    pub seq: u64,
    pub offer_id: String,
    pub label: String,
    pub image: Option<String>,
    pub model: Option<String>,
    pub created_at: Millis,
    /// When provisioning (and model loading) ends.
    pub ready_at: Millis,
    /// When the cloud preempts it, drawn at creation (interruptible offers only), or set
    /// by the test control endpoint.
    pub preempt_at: Option<Millis>,
    /// When the owner asked to delete it.
    pub deleted_at: Option<Millis>,
    /// A model instance's server answers only this Bearer key, as vLLM does with
    /// `VLLM_API_KEY` in its environment. Added after the first format: records written
    /// before it decode through [`InstanceRecordV0`].
    pub api_key: Option<String>,
}

/// Version 2 is the current layout. Version 1 has two: the first format
/// ([`InstanceRecordV0`]), and the current layout, which spotd 0.1.0 wrote under version
/// 1 without bumping it when `api_key` was added. A body decodes only to its exact
/// length and the second layout is the first plus one field, so a body is at most one
/// of them: trying both cannot mistake one for the other.
impl Versioned for InstanceRecord {
    const VERSION: u8 = 2;

    fn migrate(version: u8, body: Body<'_>) -> Result<InstanceRecord, StoreError> {
        match version {
            1 => match body.decode::<InstanceRecordV0>() {
                Ok(old) => Ok(InstanceRecord::from(old)),
                Err(first) => body.decode::<InstanceRecord>().map_err(|current| {
                    StoreError::Codec(format!(
                        "a version 1 instance record is neither of its layouts ({first}; {current})"
                    ))
                }),
            },
            v => Err(unknown_version(v, Self::VERSION)),
        }
    }
}

/// The record as first stored (no `api_key`), under version 1.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub struct InstanceRecordV0 {
    pub(crate) cloud: String,
    pub(crate) id: String,
    pub(crate) seq: u64,
    pub(crate) offer_id: String,
    pub(crate) label: String,
    pub(crate) image: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) created_at: Millis,
    pub(crate) ready_at: Millis,
    pub(crate) preempt_at: Option<Millis>,
    pub(crate) deleted_at: Option<Millis>,
}

impl From<InstanceRecordV0> for InstanceRecord {
    fn from(o: InstanceRecordV0) -> InstanceRecord {
        InstanceRecord {
            cloud: o.cloud,
            id: o.id,
            seq: o.seq,
            offer_id: o.offer_id,
            label: o.label,
            image: o.image,
            model: o.model,
            created_at: o.created_at,
            ready_at: o.ready_at,
            preempt_at: o.preempt_at,
            deleted_at: o.deleted_at,
            api_key: None,
        }
    }
}

impl InstanceRecord {
    /// The state at `now` and, for a stopped instance, when it stopped.
    pub fn state_at(&self, now: Millis) -> (InstanceState, Option<Millis>) {
        let preempt = self.preempt_at.filter(|p| *p <= now);
        match (self.deleted_at, preempt) {
            // A deletion before the preemption wins: the machine was already going away.
            (Some(d), p) if p.is_none_or(|p| d < p) => {
                if now < d + TERMINATE_MS {
                    (InstanceState::Terminating, None)
                } else {
                    (InstanceState::Terminated, Some(d + TERMINATE_MS))
                }
            }
            // Deleted after the preemption: the owner cleaned up what was left.
            (Some(_), Some(p)) => (InstanceState::Terminated, Some(p)),
            (_, Some(p)) => (InstanceState::Interrupted, Some(p)),
            _ if now < self.ready_at => (InstanceState::Provisioning, None),
            _ => (InstanceState::Running, None),
        }
    }

    /// Holds one of the offer's machines (counts against `available`).
    pub fn holds_capacity(&self, now: Millis) -> bool {
        matches!(
            self.state_at(now).0,
            InstanceState::Provisioning | InstanceState::Running | InstanceState::Terminating
        )
    }

    /// The wire view. `base` is `http://ADDR/<cloud>`, for model endpoints; `ssh_port`
    /// is a plain instance's loopback SSH listener (see `sandbox::ssh`), shown while
    /// it runs.
    pub fn to_instance(&self, now: Millis, base: &str, ssh_port: Option<u16>) -> Instance {
        let (state, ended) = self.state_at(now);
        let endpoint = match (&self.model, state) {
            (Some(_), InstanceState::Running) => Some(format!("{base}/instances/{}/v1", self.id)),
            _ => None,
        };
        let ssh = match (&self.model, state, ssh_port) {
            (None, InstanceState::Running, Some(port)) => Some(crate::model::Ssh {
                host: "127.0.0.1".into(),
                port,
                user: "root".into(),
            }),
            _ => None,
        };
        Instance {
            id: self.id.clone(),
            offer_id: self.offer_id.clone(),
            label: self.label.clone(),
            state,
            endpoint,
            ssh,
            created_at: rfc3339(self.created_at),
            ended_at: ended.map(rfc3339),
        }
    }
}

/// Preemption time for a running interruptible instance: `ready_at` plus an exponential
/// delay with `rate_per_hour`, drawn from `key`. `None` when the rate is zero.
pub fn preemption_time(ready_at: Millis, rate_per_hour: f64, key: u64) -> Option<Millis> {
    if !rate_per_hour.is_finite() || rate_per_hour <= 0.0 {
        return None;
    }
    // u in (0, 1]: 53 random bits, never zero, so ln(u) is finite.
    let u = ((Rng::new(key).next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
    let delay_ms = -u.ln() / rate_per_hour * 3_600_000.0;
    // Time, not money: a float is fine; clamp so absurd rates stay in range.
    let delay = delay_ms.clamp(0.0, 1e15) as i64;
    Some(ready_at.saturating_add(delay))
}

/// SplitMix64: tiny, seedable, and good enough for a simulation.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Combines several keys into one PRNG seed, order-sensitively.
pub fn mix(parts: &[u64]) -> u64 {
    parts.iter().fold(0x5350_4f54_445f_5342u64, |acc, p| {
        Rng::new(acc ^ p.rotate_left(17)).next_u64()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> InstanceRecord {
        InstanceRecord {
            cloud: "nimbus".into(),
            id: "nimbus-000001".into(),
            seq: 1,
            offer_id: "o".into(),
            label: "rnt_1".into(),
            image: None,
            model: None,
            created_at: 1_000,
            ready_at: 21_000,
            preempt_at: None,
            deleted_at: None,
            api_key: None,
        }
    }

    #[test]
    fn lifecycle_from_timestamps() {
        let mut r = rec();
        assert_eq!(r.state_at(20_999).0, InstanceState::Provisioning);
        assert_eq!(r.state_at(21_000).0, InstanceState::Running);
        r.deleted_at = Some(30_000);
        assert_eq!(r.state_at(30_500), (InstanceState::Terminating, None));
        assert_eq!(
            r.state_at(31_000),
            (InstanceState::Terminated, Some(31_000))
        );
        assert!(r.holds_capacity(30_999));
        assert!(!r.holds_capacity(31_000));
        // A preemption after the deletion changes nothing.
        r.preempt_at = Some(30_200);
        assert_eq!(r.state_at(40_000).0, InstanceState::Terminated);
        // A preemption before it: interrupted until the owner deletes what is left,
        // then terminated, ended at the preemption.
        r.preempt_at = Some(25_000);
        assert_eq!(
            r.state_at(40_000),
            (InstanceState::Terminated, Some(25_000))
        );
        r.deleted_at = None;
        assert_eq!(
            r.state_at(40_000),
            (InstanceState::Interrupted, Some(25_000))
        );
    }

    #[test]
    fn preemption_is_seeded_and_rate_dependent() {
        assert_eq!(preemption_time(0, 0.0, 1), None);
        assert_eq!(preemption_time(0, f64::NAN, 1), None);
        let a = preemption_time(0, 1.0, 99).unwrap();
        assert_eq!(Some(a), preemption_time(0, 1.0, 99));
        // Mean delay of 1000 draws at 60/h is about one minute.
        let mean: i64 = (0..1000u64)
            .map(|k| preemption_time(0, 60.0, mix(&[k])).unwrap())
            .sum::<i64>()
            / 1000;
        assert!((45_000..75_000).contains(&mean), "{mean}");
    }
}
