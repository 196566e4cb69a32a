//! The participants' own books: inventory, payment and shipping, kept in a
//! sled database separate from the saga log.
//!
//! Every call is first written to an append-only call log (so a checker can
//! prove no participant was called without a durable intent in the saga
//! log), then its effect is applied in one sled transaction together with
//! an effect marker keyed by the call's idempotency key. A repeated call
//! finds the marker and changes nothing: effects happen at most once however
//! often the engine calls.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub initial: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub initial: i64,
    pub balance: i64,
    pub held: i64,
    pub paid: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipments {
    pub created: i64,
    pub cancelled: i64,
}

/// One participant call, as the participant saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    pub saga_id: String,
    pub step: String,
    pub phase: String,
    pub attempt: u32,
}

/// The books, as printed in the `{"ledger": ...}` line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Books {
    pub products: BTreeMap<String, Product>,
    pub accounts: BTreeMap<String, Account>,
    pub shipments: Shipments,
}

impl Books {
    /// `Ok` when every account and product adds up; else the first that
    /// does not.
    pub fn balance(&self) -> Result<(), String> {
        for (name, a) in &self.accounts {
            if a.initial != a.balance + a.held + a.paid {
                return Err(format!(
                    "account {name}: initial {} != balance {} + held {} + paid {}",
                    a.initial, a.balance, a.held, a.paid
                ));
            }
        }
        for (name, p) in &self.products {
            if p.initial != p.available + p.reserved + p.sold {
                return Err(format!(
                    "product {name}: initial {} != available {} + reserved {} + sold {}",
                    p.initial, p.available, p.reserved, p.sold
                ));
            }
        }
        Ok(())
    }
}

/// Why a business operation was refused.
pub enum Refusal {
    /// A business rule says no (no stock, no funds, bad address).
    Rule(String),
    /// The database failed.
    Storage(String),
}

#[derive(Clone)]
pub struct Ledger {
    db: sled::Db,
}

type Tx<'a> = &'a sled::transaction::TransactionalTree;
type TxResult<T> = sled::transaction::ConflictableTransactionResult<T, String>;

fn get<T: for<'de> Deserialize<'de> + Default>(tx: Tx<'_>, key: &str) -> TxResult<T> {
    match tx.get(key)? {
        None => Ok(T::default()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            sled::transaction::ConflictableTransactionError::Abort(format!(
                "corrupt ledger value {key}: {e}"
            ))
        }),
    }
}

fn put<T: Serialize>(tx: Tx<'_>, key: &str, value: &T) -> TxResult<()> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| sled::transaction::ConflictableTransactionError::Abort(e.to_string()))?;
    tx.insert(key, bytes)?;
    Ok(())
}

impl Ledger {
    pub fn open(path: &Path) -> Result<Ledger, String> {
        // sled 0.34 cannot reopen past a snapshot torn by a kill.
        sagalog::discard_torn_sled_snapshots(path)
            .map_err(|e| format!("preparing the ledger at {}: {e}", path.display()))?;
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(None)
            .cache_capacity(8 * 1024 * 1024)
            .open()
            .map_err(|e| format!("opening the ledger at {}: {e}", path.display()))?;
        Ok(Ledger { db })
    }

    fn flush(&self) -> Result<(), Refusal> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| Refusal::Storage(e.to_string()))
    }

    /// Stocks the shop once; later calls change nothing.
    pub fn initialize(
        &self,
        products: &[(&str, i64)],
        accounts: &[(&str, i64)],
    ) -> Result<(), String> {
        self.db
            .transaction(|tx| {
                if tx.get("init")?.is_some() {
                    return Ok(());
                }
                for (name, stock) in products {
                    let p = Product {
                        initial: *stock,
                        available: *stock,
                        ..Default::default()
                    };
                    put(tx, &format!("product/{name}"), &p)?;
                }
                for (name, money) in accounts {
                    let a = Account {
                        initial: *money,
                        balance: *money,
                        ..Default::default()
                    };
                    put(tx, &format!("account/{name}"), &a)?;
                }
                tx.insert("init", &b"1"[..])?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<String>| e.to_string())?;
        self.db.flush().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Appends a call to the call log, durably, before any effect.
    pub fn record_call(&self, call: &CallRecord) -> Result<(), Refusal> {
        let id = self
            .db
            .generate_id()
            .map_err(|e| Refusal::Storage(e.to_string()))?;
        let mut key = b"call/".to_vec();
        key.extend_from_slice(&id.to_be_bytes());
        let value = serde_json::to_vec(call).map_err(|e| Refusal::Storage(e.to_string()))?;
        self.db
            .insert(key, value)
            .map_err(|e| Refusal::Storage(e.to_string()))?;
        self.flush()
    }

    /// Applies `effect` once per `key`: a second call with the same key
    /// returns the first call's stored result and changes nothing.
    pub fn apply_once<F>(&self, key: &str, effect: F) -> Result<String, Refusal>
    where
        F: Fn(Tx<'_>) -> TxResult<Result<String, String>>,
    {
        let marker = format!("effect/{key}");
        let outcome = self
            .db
            .transaction(|tx| {
                if let Some(done) = tx.get(&marker)? {
                    return Ok(Ok(String::from_utf8_lossy(&done).into_owned()));
                }
                match effect(tx)? {
                    Ok(result) => {
                        tx.insert(marker.as_bytes(), result.as_bytes())?;
                        Ok(Ok(result))
                    }
                    // A refused operation changes nothing and leaves no
                    // marker: the refusal is permanent, and a repeat is
                    // refused again by the same rule.
                    Err(why) => Ok(Err(why)),
                }
            })
            .map_err(|e: sled::transaction::TransactionError<String>| {
                Refusal::Storage(e.to_string())
            })?;
        self.flush()?;
        outcome.map_err(Refusal::Rule)
    }

    /// True when the effect with this key has been applied.
    pub fn applied(tx: Tx<'_>, key: &str) -> TxResult<bool> {
        Ok(tx.get(format!("effect/{key}"))?.is_some())
    }

    pub fn product(tx: Tx<'_>, name: &str) -> TxResult<Product> {
        get(tx, &format!("product/{name}"))
    }
    pub fn set_product(tx: Tx<'_>, name: &str, p: &Product) -> TxResult<()> {
        put(tx, &format!("product/{name}"), p)
    }
    pub fn account(tx: Tx<'_>, name: &str) -> TxResult<Account> {
        get(tx, &format!("account/{name}"))
    }
    pub fn set_account(tx: Tx<'_>, name: &str, a: &Account) -> TxResult<()> {
        put(tx, &format!("account/{name}"), a)
    }
    pub fn shipments(tx: Tx<'_>) -> TxResult<Shipments> {
        get(tx, "shipments")
    }
    pub fn set_shipments(tx: Tx<'_>, s: &Shipments) -> TxResult<()> {
        put(tx, "shipments", s)
    }

    /// Reads the books.
    pub fn books(&self) -> Result<Books, String> {
        let mut books = Books::default();
        for item in self.db.scan_prefix("product/") {
            let (k, v) = item.map_err(|e| e.to_string())?;
            let name = String::from_utf8_lossy(&k["product/".len()..]).into_owned();
            books
                .products
                .insert(name, serde_json::from_slice(&v).map_err(|e| e.to_string())?);
        }
        for item in self.db.scan_prefix("account/") {
            let (k, v) = item.map_err(|e| e.to_string())?;
            let name = String::from_utf8_lossy(&k["account/".len()..]).into_owned();
            books
                .accounts
                .insert(name, serde_json::from_slice(&v).map_err(|e| e.to_string())?);
        }
        if let Some(v) = self.db.get("shipments").map_err(|e| e.to_string())? {
            books.shipments = serde_json::from_slice(&v).map_err(|e| e.to_string())?;
        }
        Ok(books)
    }
}
