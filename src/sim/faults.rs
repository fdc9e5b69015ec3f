//! The injected defects of `spotd simulate --inject`: each writes what a bug would
//! have left behind, for the checker to catch (`tests/integration/simulate.rs` proves
//! it does, one defect per invariant).

use hyper::Method;
use serde_json::json;

use super::super::world::Node;
use super::Workload;
use crate::model::RentalState;
use crate::money::Usd;
use crate::store::{Store, StoreError};

impl Workload {
    pub(super) async fn skip_a_charge(&mut self, node: &Node) -> Result<(), String> {
        let store = node.store().cloned().ok_or("node down")?;
        let done = store
            .write(|tx| {
                let found = tx.accounts()?.into_iter().find(|a| a.balance > Usd(0));
                let Some(mut a) = found else { return Ok(false) };
                a.balance -= Usd(1);
                tx.put_account(&a)?;
                Ok::<_, StoreError>(true)
            })
            .await
            .map_err(|e| e.to_string())?;
        self.injected |= done;
        Ok(())
    }

    pub(super) async fn overcharge(&mut self, store: &Store, rental: &str) -> Result<(), String> {
        let id = rental.to_string();
        let done = store
            .write(move |tx| {
                let Some(mut r) = tx.rental(&id)? else {
                    return Ok(false);
                };
                let Some(mut a) = tx.account(&r.account_id)? else {
                    return Ok(false);
                };
                if a.available() >= Usd(1) {
                    let now = r.ended_at.unwrap_or(0);
                    crate::ledger::charge_rental(
                        tx,
                        &mut a,
                        &mut r,
                        Usd(1),
                        Some("injected".into()),
                        now,
                    )?;
                    tx.put_rental(&r)?;
                    tx.put_account(&a)?;
                    return Ok(true);
                }
                Ok::<_, crate::error::Error>(false)
            })
            .await
            .map_err(|e| e.to_string())?;
        self.injected |= done;
        Ok(())
    }

    pub(super) async fn keep_hold(&mut self, store: &Store, rental: &str) -> Result<(), String> {
        let id = rental.to_string();
        store
            .write(move |tx| {
                let Some(mut r) = tx.rental(&id)? else {
                    return Ok(());
                };
                let Some(mut a) = tx.account(&r.account_id)? else {
                    return Ok(());
                };
                if r.state == RentalState::Terminated || r.state == RentalState::Terminating {
                    r.hold_open = true;
                    a.held += r.held();
                    tx.put_rental(&r)?;
                    tx.put_account(&a)?;
                }
                Ok::<_, StoreError>(())
            })
            .await
            .map_err(|e| e.to_string())?;
        self.injected = true;
        Ok(())
    }

    /// The request's charge loses its request id, or (`under`) is one micro-dollar
    /// short, the balance kept equal to the ledger's sum.
    pub(super) async fn tamper_charge(
        &mut self,
        store: &Store,
        account: &str,
        request_id: &str,
        under: bool,
    ) -> Result<(), String> {
        let (acct, rid) = (account.to_string(), request_id.to_string());
        let done = store
            .write(move |tx| {
                let entries = tx.ledger_after(&acct, 0, usize::MAX)?;
                let Some(mut e) = entries
                    .into_iter()
                    .find(|e| e.request_id.as_deref() == Some(rid.as_str()))
                else {
                    return Ok(false);
                };
                if under {
                    let Some(mut a) = tx.account(&acct)? else {
                        return Ok(false);
                    };
                    // Charged short everywhere it is counted, as a wrong amount
                    // written through the ledger would be.
                    e.amount += Usd(1);
                    a.balance += Usd(1);
                    a.month_spent -= Usd(1);
                    tx.put_account(&a)?;
                } else {
                    e.request_id = None;
                }
                tx.put_ledger(&e)?;
                Ok::<_, StoreError>(true)
            })
            .await
            .map_err(|e| e.to_string())?;
        self.injected |= done;
        Ok(())
    }

    pub(super) async fn plant_orphan(&mut self, node: &Node) -> Result<(), String> {
        let cloud = crate::sandbox::cloud_names()[0].clone();
        let offers = node
            .cloud(Method::GET, &format!("/{cloud}/offers"), None)
            .await?;
        let list = offers.body["offers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for o in list
            .iter()
            .filter(|o| o["available"].as_u64().unwrap_or(0) > 0)
        {
            let r = node
                .cloud(
                    Method::POST,
                    &format!("/{cloud}/instances"),
                    Some(json!({"offer_id": o["id"], "label": "rnt_injectedorphan01"})),
                )
                .await?;
            if r.status == 201 {
                self.injected = true;
                self.log(node, &format!("planted an orphan on {cloud}: {}", r.text));
                return Ok(());
            }
        }
        Err(format!(
            "could not plant an orphan on {cloud}: {}",
            offers.text.chars().take(300).collect::<String>()
        ))
    }

    pub(super) async fn lose_an_ack(&mut self, node: &Node) -> Result<(), String> {
        let Some(a) = self.rents.last() else {
            return Ok(());
        };
        // The crashed incarnation's writer thread may still be letting go of the file.
        let mut tries = 0;
        let db = loop {
            match redb::Database::open(node.dir.join("spotd.redb")) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if tries < 400 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut t = txn
                .open_table(crate::store::tables::RENTALS)
                .map_err(|e| e.to_string())?;
            t.remove(a.id.as_str()).map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())?;
        self.injected = true;
        Ok(())
    }

    /// A charge the monthly guard should have refused: one micro-dollar past an
    /// account's `max_usd_per_month`, booked as any charge is (the balance, the ledger
    /// and the month's running figure all agree), so only the cap is wrong.
    pub(super) async fn pass_a_cap(&mut self, node: &Node) -> Result<(), String> {
        let store = node.store().cloned().ok_or("node down")?;
        let now = node.clock.now();
        let done = store
            .write(move |tx| {
                for mut a in tx.accounts()? {
                    let Some(cap) = a.max_usd_per_month else {
                        continue;
                    };
                    let over = cap - crate::guards::spent_this_month(&a, now) + Usd(1);
                    if over <= Usd::ZERO || over > a.available() {
                        continue;
                    }
                    crate::ledger::append(
                        tx,
                        &mut a,
                        crate::model::LedgerKind::Charge,
                        -over,
                        crate::ledger::Refs {
                            request_id: Some("req_injectedpastcap0"),
                            note: Some("injected: past the monthly cap".into()),
                            ..Default::default()
                        },
                        now,
                    )?;
                    tx.put_account(&a)?;
                    return Ok(true);
                }
                Ok::<_, crate::error::Error>(false)
            })
            .await
            .map_err(|e| e.to_string())?;
        self.injected |= done;
        Ok(())
    }
}
