//! The simulated users and operator: one seeded random action per step, after time
//! has moved on. Each action goes through the daemon's HTTP API (or the sandbox's
//! control endpoints for provider faults), as a client would.

use std::collections::{HashMap, HashSet};

use hyper::Method;
use serde_json::{json, Value};

use super::check::{Answered, Checker};
use super::world::Node;
use super::{Fault, Summary};
use crate::clock::Millis;
use crate::sandbox::Rng;
use crate::store::{Store, StoreError};

const MAX_ACCOUNTS: usize = 30;
const COLD: &str = "meta-llama/Llama-3.1-8B-Instruct";
const GPUS: &[&str] = &["RTX 4090", "RTX 3090", "A100", "H100", "L40S", "T4", "A10"];

struct Acct {
    id: String,
    key: String,
    /// Extra keys that may be revoked.
    spare_keys: Vec<String>,
}

/// A write the daemon acknowledged, with what replays it.
struct Acked {
    path: String,
    idem: String,
    body: Value,
    /// The id the answer gave (a ledger entry's or a rental's).
    id: String,
    key: String,
    /// When it was acknowledged (its key replays for 24 h from then).
    at: Millis,
}

#[path = "faults.rs"]
mod faults;

pub struct Workload {
    rng: Rng,
    verbose: bool,
    accounts: Vec<Acct>,
    /// Rentals the workload made (maybe ended since).
    rentals: Vec<(String, usize)>,
    credits: Vec<Acked>,
    rents: Vec<Acked>,
    /// Clouds taken down, until when.
    down: HashMap<String, Millis>,
    /// The node is down until this clock time (a crash or stop with downtime).
    down_until: Option<Millis>,
    /// A rent the daemon was in the middle of (its create call in flight) when it
    /// crashed: retried with its key after the restart.
    interrupted: Option<(usize, String, Value)>,
    injected: bool,
    seq: u64,
}

impl Workload {
    pub fn new(seed: u64, verbose: bool) -> Workload {
        Workload {
            rng: Rng::new(seed ^ 0x005e_ed0f_5107),
            verbose,
            accounts: Vec::new(),
            rentals: Vec::new(),
            credits: Vec::new(),
            rents: Vec::new(),
            down: HashMap::new(),
            down_until: None,
            interrupted: None,
            injected: false,
            seq: 0,
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.rng.next_u64() % n
        }
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    fn key_name(&mut self, what: &str) -> String {
        self.seq += 1;
        format!("sim-{what}-{}", self.seq)
    }

    pub fn down_clouds(&self) -> HashSet<String> {
        self.down.keys().cloned().collect()
    }

    fn log(&self, node: &Node, msg: &str) {
        if self.verbose {
            eprintln!("{} {msg}", crate::clock::rfc3339(node.clock.now()));
        }
    }

    /// One step: time passes, then one action. Answers whether the node was started
    /// again in this step (after a crash or a stop).
    pub async fn step(
        &mut self,
        node: &mut Node,
        summary: &mut Summary,
        checker: &mut Checker,
        inject: Option<Fault>,
    ) -> Result<bool, String> {
        let dt = 20_000 + self.below(580_000) as Millis;
        let mut restarted = false;
        if node.is_up() {
            node.clock
                .advance_settled(dt)
                .await
                .map_err(|e| e.to_string())?;
        } else {
            node.clock.advance(dt);
        }
        if let Some(until) = self.down_until {
            if node.clock.now() >= until {
                if inject == Some(Fault::LoseAck) && !self.injected {
                    self.lose_an_ack(node).await?;
                }
                node.restart().await?;
                self.down_until = None;
                restarted = true;
                self.log(node, "daemon started again");
                // The sandbox clouds restarted with the daemon: their outages go on.
                for cloud in self.down.keys() {
                    let body = json!({"offers": true, "down": true});
                    let r = node
                        .cloud(Method::POST, &format!("/{cloud}/_control/fail"), Some(body))
                        .await?;
                    expect(&r.status, &[200], "a cloud stays down", &r.text)?;
                }
                self.retry_after_crash(node).await?;
                self.retry_interrupted_rent(node).await?;
            } else {
                return Ok(false);
            }
        }
        self.heal_clouds(node).await?;
        let roll = self.below(1000);
        match roll {
            0..=39 => self.new_account(node).await?,
            40..=119 => self.top_up(node, inject).await?,
            120..=139 => self.keys(node).await?,
            140..=299 => self.rent(node).await?,
            300..=419 => self.teardown(node, inject).await?,
            420..=479 => self.activity(node).await?,
            480..=699 => self.chat(node, summary, checker, inject).await?,
            700..=739 => self.cold(node).await?,
            740..=749 => self.provider_fault(node, summary).await?,
            750..=754 => {
                self.log(node, "crash");
                node.crash().await;
                summary.crashes += 1;
                self.down_until = Some(node.clock.now() + self.below(1_800_000) as Millis);
            }
            755..=759 => self.crash_mid_rent(node, summary).await?,
            760..=764 => {
                self.log(node, "graceful stop");
                node.stop().await?;
                summary.restarts += 1;
                self.down_until = Some(node.clock.now() + self.below(600_000) as Millis);
            }
            _ => {}
        }
        if inject == Some(Fault::SkipCharge) && node.is_up() && !self.injected {
            self.skip_a_charge(node).await?;
        }
        if inject == Some(Fault::StaleTotals) && node.is_up() && !self.injected {
            let store = node.store().cloned().ok_or("node down")?;
            store
                .write(|tx| tx.skew_total("charges", -1))
                .await
                .map_err(|e| e.to_string())?;
            self.injected = true;
        }
        if inject == Some(Fault::Orphan) && node.is_up() && !self.injected {
            self.plant_orphan(node).await?;
        }
        if inject == Some(Fault::PassCap) && node.is_up() && !self.injected {
            self.pass_a_cap(node).await?;
        }
        if node.is_up() {
            node.clock.settle().await.map_err(|e| e.to_string())?;
        }
        Ok(restarted)
    }

    fn pick_account(&mut self) -> Option<usize> {
        if self.accounts.is_empty() {
            return None;
        }
        Some(self.below(self.accounts.len() as u64) as usize)
    }

    async fn new_account(&mut self, node: &Node) -> Result<(), String> {
        if self.accounts.len() >= MAX_ACCOUNTS {
            return Ok(());
        }
        // Some start near zero: they run out of credit.
        let credit = match self.below(4) {
            0 => "0.05".to_string(),
            1 => "1.5".to_string(),
            _ => format!("{}", 5 + self.below(60)),
        };
        let name = self.key_name("team");
        let r = node
            .call(
                Method::POST,
                "/admin/v1/accounts",
                &node.admin,
                &[],
                Some(json!({"name": name, "credit": credit.parse::<Value>().map_err(|e| e.to_string())?})),
            )
            .await?;
        expect(&r.status, &[201], "create an account", &r.text)?;
        let id = str_of(&r.body["id"])?;
        self.accounts.push(Acct {
            id: id.clone(),
            key: str_of(&r.body["api_key"]["key"])?,
            spare_keys: Vec::new(),
        });
        self.log(node, &format!("account {name} with ${credit}"));
        // A third get spend caps (SPEC section 6), small enough to bite: an hourly one
        // of one to a few GPUs, a monthly one of a few hours of them.
        if self.chance(333) {
            let per_hour = ["0.5", "1", "2.5", "4"][self.below(4) as usize];
            let per_month = ["0.8", "2", "6", "15"][self.below(4) as usize];
            let mut caps = json!({});
            if self.chance(700) {
                caps["max_usd_per_hour"] = per_hour.parse::<Value>().map_err(|e| e.to_string())?;
            }
            if self.chance(700) || caps.as_object().is_some_and(|o| o.is_empty()) {
                caps["max_usd_per_month"] =
                    per_month.parse::<Value>().map_err(|e| e.to_string())?;
            }
            let r = node
                .call(
                    Method::PATCH,
                    &format!("/admin/v1/accounts/{id}"),
                    &node.admin,
                    &[],
                    Some(caps.clone()),
                )
                .await?;
            expect(&r.status, &[200], "set spend caps", &r.text)?;
            self.log(node, &format!("caps on {name}: {caps}"));
        }
        Ok(())
    }

    async fn top_up(&mut self, node: &Node, inject: Option<Fault>) -> Result<(), String> {
        let Some(i) = self.pick_account() else {
            return Ok(());
        };
        let amount = format!("{}.{:02}", self.below(20), self.below(100));
        let idem = self.key_name("credit");
        let path = format!("/admin/v1/accounts/{}/credits", self.accounts[i].id);
        let body = json!({"amount": amount.parse::<Value>().map_err(|e| e.to_string())?, "note": "top-up"});
        let headers = [("Idempotency-Key", idem.as_str())];
        let send = || {
            node.call(
                Method::POST,
                &path,
                &node.admin,
                &headers,
                Some(body.clone()),
            )
        };
        let r = send().await?;
        if r.status == 400 && amount.parse::<f64>().unwrap_or(0.0) == 0.0 {
            return Ok(()); // a zero credit is refused, and that is fine
        }
        expect(&r.status, &[200], "credit", &r.text)?;
        let entry = str_of(&r.body["entry"]["id"])?;
        // A client retrying at once (its answer lost): the same entry, nothing new.
        if self.chance(300) {
            let again = send().await?;
            let same = again.status == 200 && again.body["entry"]["id"] == entry.as_str();
            if !same {
                return Err(format!(
                    "an idempotent credit retry acted again: {} {}",
                    again.status, again.text
                ));
            }
        }
        let _ = inject;
        self.credits.push(Acked {
            path,
            idem,
            body,
            id: entry,
            key: node.admin.clone(),
            at: node.clock.now(),
        });
        Ok(())
    }

    async fn keys(&mut self, node: &Node) -> Result<(), String> {
        let Some(i) = self.pick_account() else {
            return Ok(());
        };
        if self.accounts[i].spare_keys.is_empty() || self.chance(500) {
            let path = format!("/admin/v1/accounts/{}/keys", self.accounts[i].id);
            let r = node
                .call(Method::POST, &path, &node.admin, &[], None)
                .await?;
            expect(&r.status, &[201], "create a key", &r.text)?;
            self.accounts[i].spare_keys.push(str_of(&r.body["id"])?);
        } else {
            let k = self.accounts[i].spare_keys.remove(0);
            let r = node
                .call(
                    Method::DELETE,
                    &format!("/admin/v1/keys/{k}"),
                    &node.admin,
                    &[],
                    None,
                )
                .await?;
            expect(&r.status, &[200], "revoke a key", &r.text)?;
        }
        Ok(())
    }

    async fn rent(&mut self, node: &Node) -> Result<(), String> {
        let Some(i) = self.pick_account() else {
            return Ok(());
        };
        let key = self.accounts[i].key.clone();
        let mut body = if self.chance(500) {
            let gpu = GPUS[self.below(GPUS.len() as u64) as usize];
            json!({"gpu": gpu, "max_price_per_hour": 1 + self.below(4)})
        } else {
            let r = node
                .call(
                    Method::GET,
                    "/v1/gpus/offers?sort=price&limit=40",
                    &key,
                    &[],
                    None,
                )
                .await?;
            expect(&r.status, &[200], "list offers", &r.text)?;
            let offers = r.body["data"].as_array().cloned().unwrap_or_default();
            if offers.is_empty() {
                return Ok(());
            }
            let o = &offers[self.below(offers.len() as u64) as usize];
            json!({"offer_id": o["id"]})
        };
        if self.chance(300) {
            body["idle_timeout_seconds"] = json!(600 + self.below(3000));
        }
        if self.chance(300) {
            body["max_duration_seconds"] = json!(1800 + self.below(20_000));
        }
        if self.chance(250) {
            // 0.05 to 2 USD: from minutes to hours of a GPU.
            let cents = 5 + self.below(196);
            body["max_cost"] = format!("{}.{:02}", cents / 100, cents % 100)
                .parse::<Value>()
                .map_err(|e| e.to_string())?;
        }
        let idem = self.key_name("rent");
        self.send_rent(node, i, idem, body, "rent").await
    }

    /// Sends a rent with its Idempotency-Key; an acknowledged one is remembered, to be
    /// checked after crashes and retried.
    async fn send_rent(
        &mut self,
        node: &Node,
        i: usize,
        idem: String,
        body: Value,
        what: &str,
    ) -> Result<(), String> {
        let key = self.accounts[i].key.clone();
        let headers = [("Idempotency-Key", idem.as_str())];
        let r = node
            .call(
                Method::POST,
                "/v1/gpus/rentals",
                &key,
                &headers,
                Some(body.clone()),
            )
            .await?;
        // 402 no funds, 404 offer gone, 409 no capacity or too many, 503 provider error.
        expect(&r.status, &[201, 402, 404, 409, 503], what, &r.text)?;
        if r.status == 201 {
            let id = str_of(&r.body["id"])?;
            self.log(node, &format!("{what} {id}: {body}"));
            self.rentals.push((id.clone(), i));
            self.rents.push(Acked {
                path: "/v1/gpus/rentals".into(),
                idem,
                body,
                id,
                key,
                at: node.clock.now(),
            });
        }
        Ok(())
    }

    async fn teardown(&mut self, node: &Node, inject: Option<Fault>) -> Result<(), String> {
        if self.rentals.is_empty() {
            return Ok(());
        }
        let n = self.below(self.rentals.len() as u64) as usize;
        let (id, i) = self.rentals.remove(n);
        let key = self.accounts[i].key.clone();
        let r = node
            .call(
                Method::DELETE,
                &format!("/v1/gpus/rentals/{id}"),
                &key,
                &[],
                None,
            )
            .await?;
        // 409: it had ended already (preempted, out of credit, a limit).
        expect(&r.status, &[200, 409], "tear down", &r.text)?;
        self.log(node, &format!("teardown {id}: {}", r.status));
        if r.status == 200 && !self.injected {
            let store = node.store().cloned().ok_or("node down")?;
            match inject {
                Some(Fault::Rounding) => self.overcharge(&store, &id).await?,
                Some(Fault::LoseRelease) => self.keep_hold(&store, &id).await?,
                _ => {}
            }
        }
        Ok(())
    }

    async fn activity(&mut self, node: &Node) -> Result<(), String> {
        if self.rentals.is_empty() {
            return Ok(());
        }
        let n = self.below(self.rentals.len() as u64) as usize;
        let (id, i) = self.rentals[n].clone();
        let key = self.accounts[i].key.clone();
        let r = node
            .call(
                Method::POST,
                &format!("/v1/gpus/rentals/{id}/activity"),
                &key,
                &[],
                None,
            )
            .await?;
        expect(&r.status, &[200, 409], "activity", &r.text)
    }

    async fn chat(
        &mut self,
        node: &Node,
        summary: &mut Summary,
        checker: &mut Checker,
        inject: Option<Fault>,
    ) -> Result<(), String> {
        let Some(i) = self.pick_account() else {
            return Ok(());
        };
        let key = self.accounts[i].key.clone();
        let kind = self.below(3);
        let stream = kind > 0;
        let body = json!({"model": "gpt-4o-mini", "stream": stream,
            "messages": [{"role": "user", "content": format!("tell me about spot GPU number {}", self.below(1000))}]});
        let cut = (1 + self.below(5)).to_string();
        let mut headers = vec![("x-sandbox-chunk-delay-ms", "0")];
        if kind == 2 {
            headers.push(("x-sandbox-cut-after", cut.as_str()));
        }
        let r = node
            .call(
                Method::POST,
                "/v1/chat/completions",
                &key,
                &headers,
                Some(body),
            )
            .await?;
        expect(&r.status, &[200, 402], "chat", &r.text)?;
        if r.status != 200 {
            return Ok(());
        }
        summary.hosted_requests += 1;
        let request_id = r
            .request_id
            .clone()
            .ok_or("an answer without x-request-id")?;
        let had_usage = if stream {
            r.text.contains("\"content\":\"") && !r.text.contains("\"content\":\"\"}")
                || r.text.matches("\"content\":\"").count() > 1
        } else {
            r.body["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0
        };
        // Stream charges land in the background: let them.
        node.clock.settle().await.map_err(|e| e.to_string())?;
        if matches!(inject, Some(Fault::UnnamedCharge | Fault::Undercharge)) && !self.injected {
            let store = node.store().cloned().ok_or("node down")?;
            let under = inject == Some(Fault::Undercharge) && !stream;
            if inject == Some(Fault::UnnamedCharge) || under {
                self.tamper_charge(&store, &self.accounts[i].id.clone(), &request_id, under)
                    .await?;
            }
        }
        let expected = (!stream)
            .then(|| {
                let u = &r.body["usage"];
                crate::inference::catalog::sandbox_cost(
                    "gpt-4o-mini",
                    u["prompt_tokens"].as_u64()?,
                    u["completion_tokens"].as_u64()?,
                )
            })
            .flatten();
        checker.expect_charge(Answered {
            request_id,
            account: self.accounts[i].id.clone(),
            had_usage,
            expected,
            at: node.clock.now(),
        });
        Ok(())
    }

    async fn cold(&mut self, node: &Node) -> Result<(), String> {
        let Some(i) = self.pick_account() else {
            return Ok(());
        };
        let key = self.accounts[i].key.clone();
        let body = json!({"model": COLD, "messages": [{"role": "user", "content": "hi"}]});
        let r = node
            .call(
                Method::POST,
                "/v1/chat/completions",
                &key,
                &[("Prefer", "wait=900")],
                Some(body),
            )
            .await?;
        // 202: still deploying past the wait; 402: no funds; 409: no capacity or too
        // many rentals; 502/503: the deployment or provider failed (preempted meanwhile).
        expect(
            &r.status,
            &[200, 202, 402, 409, 502, 503],
            "cold model",
            &r.text,
        )?;
        self.log(node, &format!("cold model: {}", r.status));
        Ok(())
    }

    async fn provider_fault(&mut self, node: &Node, summary: &mut Summary) -> Result<(), String> {
        let clouds = crate::sandbox::cloud_names();
        let cloud = clouds[self.below(clouds.len() as u64) as usize].clone();
        summary.provider_faults += 1;
        let body = if self.chance(500) && !self.down.contains_key(&cloud) {
            // Down for about an hour: every call answers 503.
            let until = node.clock.now() + 1_800_000 + self.below(3_600_000) as Millis;
            self.down.insert(cloud.clone(), until);
            json!({"offers": true, "down": true})
        } else {
            // The next creates make their instance and answer 500 all the same.
            json!({"offers": false, "create_lies": 1 + self.below(3)})
        };
        self.log(node, &format!("provider fault on {cloud}: {body}"));
        let r = node
            .cloud(Method::POST, &format!("/{cloud}/_control/fail"), Some(body))
            .await?;
        expect(&r.status, &[200], "provider fault", &r.text)
    }

    /// A crash while a rent's provider create is in flight: the cloud holds creates
    /// for a while (on the clock, which stands still), the rent is sent, and the daemon
    /// is killed with the call outstanding.
    async fn crash_mid_rent(
        &mut self,
        node: &mut Node,
        summary: &mut Summary,
    ) -> Result<(), String> {
        let Some(i) = self.pick_account() else {
            return Ok(());
        };
        let clouds = crate::sandbox::cloud_names();
        let cloud = clouds[self.below(clouds.len() as u64) as usize].clone();
        if self.down.contains_key(&cloud) {
            return Ok(());
        }
        let key = self.accounts[i].key.clone();
        let path = format!("/v1/gpus/offers?provider={cloud}&sort=price&limit=10");
        let r = node.call(Method::GET, &path, &key, &[], None).await?;
        let Some(o) = r.body["data"].as_array().and_then(|d| d.first()).cloned() else {
            return Ok(());
        };
        let hold = json!({"offers": false, "create_delay_seconds": 600});
        let c = node
            .cloud(Method::POST, &format!("/{cloud}/_control/fail"), Some(hold))
            .await?;
        expect(&c.status, &[200], "hold creates", &c.text)?;
        let idem = self.key_name("rent");
        let body = json!({"offer_id": o["id"]});
        node.call_in_background("/v1/gpus/rentals", &key, &idem, body.clone());
        // Until the create has reached the cloud, where it waits on the clock (real
        // time bounded: a rent refused before its create, say for credit, never comes).
        let parked = format!("/{cloud}/_control/parked");
        for _ in 0..400 {
            let p = node.cloud(Method::GET, &parked, None).await?;
            if p.body["parked"].as_u64().unwrap_or(0) > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        self.log(node, &format!("crash with a rent in flight on {cloud}"));
        node.crash().await;
        summary.crashes += 1;
        self.interrupted = Some((i, idem, body));
        self.down_until = Some(node.clock.now() + self.below(600_000) as Millis);
        Ok(())
    }

    /// The rent that was in flight at the crash, retried with its key: it rents (anew,
    /// the abandoned attempt failed for nothing) or is refused as any rent can be.
    async fn retry_interrupted_rent(&mut self, node: &Node) -> Result<(), String> {
        let Some((i, idem, body)) = self.interrupted.take() else {
            return Ok(());
        };
        self.send_rent(node, i, idem, body, "the rent retried after a crash")
            .await
    }

    async fn heal_clouds(&mut self, node: &Node) -> Result<(), String> {
        let now = node.clock.now();
        let healed: Vec<String> = self
            .down
            .iter()
            .filter(|(_, u)| **u <= now)
            .map(|(c, _)| c.clone())
            .collect();
        for cloud in healed {
            self.down.remove(&cloud);
            let r = node
                .cloud(
                    Method::POST,
                    &format!("/{cloud}/_control/fail"),
                    Some(json!({"offers": false, "down": false})),
                )
                .await?;
            expect(&r.status, &[200], "heal a cloud", &r.text)?;
            self.log(node, &format!("{cloud} is back"));
        }
        Ok(())
    }

    /// After a restart: the last acknowledged credit and rent, retried with their keys,
    /// replay their first answers and act no more.
    async fn retry_after_crash(&mut self, node: &Node) -> Result<(), String> {
        for (what, a) in [("credit", self.credits.last()), ("rent", self.rents.last())] {
            // A key replays for 24 h; used after that it is a new operation.
            let Some(a) = a.filter(|a| node.clock.now() - a.at < 23 * 3_600_000) else {
                continue;
            };
            let headers = [("Idempotency-Key", a.idem.as_str())];
            let r = node
                .call(
                    Method::POST,
                    &a.path,
                    &a.key,
                    &headers,
                    Some(a.body.clone()),
                )
                .await?;
            let id = if what == "credit" {
                &r.body["entry"]["id"]
            } else {
                &r.body["id"]
            };
            if !matches!(r.status, 200 | 201) || id != a.id.as_str() {
                return Err(format!(
                    "the {what} {} retried after a restart did not replay its answer: {} {}",
                    a.id, r.status, r.text
                ));
            }
        }
        Ok(())
    }

    /// Every write acknowledged before a crash is still there.
    pub async fn verify_acknowledged(&self, store: &Store) -> Result<(), String> {
        let rents: Vec<String> = self.rents.iter().map(|a| a.id.clone()).collect();
        let credits: Vec<(String, String)> = self
            .credits
            .iter()
            .map(|a| {
                (
                    a.path.split('/').nth(4).unwrap_or("").to_string(),
                    a.id.clone(),
                )
            })
            .collect();
        store
            .read(move |rx| {
                for id in &rents {
                    if rx.rental(id)?.is_none() {
                        return Ok(Err(format!(
                            "acknowledged rental {id} is missing after a restart"
                        )));
                    }
                }
                let mut entries: HashMap<String, HashSet<String>> = HashMap::new();
                for (acct, id) in &credits {
                    if !entries.contains_key(acct) {
                        let ids = rx
                            .ledger_after(acct, 0, usize::MAX)?
                            .into_iter()
                            .map(|e| e.id)
                            .collect();
                        entries.insert(acct.clone(), ids);
                    }
                    if !entries[acct].contains(id) {
                        return Ok(Err(format!(
                            "acknowledged credit {id} of {acct} is missing after a restart"
                        )));
                    }
                }
                Ok::<_, StoreError>(Ok(()))
            })
            .await
            .map_err(|e| e.to_string())?
    }
}

fn str_of(v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("expected a string, got {v}"))
}

fn expect(status: &u16, ok: &[u16], what: &str, body: &str) -> Result<(), String> {
    if ok.contains(status) {
        Ok(())
    } else {
        let body: String = body.chars().take(400).collect();
        Err(format!("{what}: unexpected {status}: {body}"))
    }
}
