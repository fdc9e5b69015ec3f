//! Every redb table of spotd, in one place.

use redb::TableDefinition;

/// `schema_version`, `admin_token_hash`, `demo_account`.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
/// Key hash (hex SHA-256) -> `ApiKey`.
pub const API_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_keys");
/// Key id -> key hash.
pub const API_KEY_IDS: TableDefinition<&str, &str> = TableDefinition::new("api_key_ids");
/// Offer id -> `Offer`.
pub const OFFERS: TableDefinition<&str, &[u8]> = TableDefinition::new("offers");
/// Rental id -> `Rental`.
pub const RENTALS: TableDefinition<&str, &[u8]> = TableDefinition::new("rentals");
/// (account id, created_at ms, rental id) -> (): an account's rentals in time order.
pub const ACCOUNT_RENTALS: TableDefinition<(&str, i64, &str), ()> =
    TableDefinition::new("account_rentals");
/// Rental id -> (): rentals not yet in a terminal state, the workers' to-do list.
pub const ACTIVE_RENTALS: TableDefinition<&str, ()> = TableDefinition::new("active_rentals");
/// (account id, seq) -> `LedgerEntry`.
pub const LEDGER: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("ledger");
/// (scope, idempotency key) -> `IdempotencyRecord`.
pub const IDEMPOTENCY: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("idempotency");

/// Bumped when a table's key or value layout changes.
pub const SCHEMA_VERSION: u32 = 1;
