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
/// (account id, rental id) -> (): each account's rentals not yet terminal (schema 2), so
/// the per-account limit counts that account's live rentals, not everyone's.
pub const ACCOUNT_ACTIVE: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("account_active");
/// (account id, seq) -> `LedgerEntry`.
pub const LEDGER: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("ledger");
/// (scope, idempotency key) -> `IdempotencyRecord`.
pub const IDEMPOTENCY: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("idempotency");

/// Running totals kept with the writes they count (schema 3), so `/metrics` reads a few
/// keys instead of every rental and ledger entry: `credits` and `charges` (micro-USD,
/// charges positive), `rentals:<state>` (how many rentals are in that state).
pub const TOTALS: TableDefinition<&str, i64> = TableDefinition::new("totals");

/// (created_at ms, rental id) -> (): every rental in time order (schema 4), so the
/// admin's list pages from an index instead of sorting all of history.
pub const RENTALS_BY_TIME: TableDefinition<(i64, &str), ()> =
    TableDefinition::new("rentals_by_time");

/// (normalized GPU model, hour start ms, provider, interruptible) -> `PriceRollup`
/// (schema 5): price history rolled up per hour. Keyed by GPU first, so a range of one
/// GPU's hours is one contiguous scan (a page of history is O(page x providers)).
pub const PRICE_HISTORY: TableDefinition<(&str, i64, &str, bool), &[u8]> =
    TableDefinition::new("price_history");

/// Bumped when a table's key or value layout changes, or a table is added that must be
/// built from the others (`Store::open` migrates: 1 -> 2 builds `account_active`,
/// 2 -> 3 builds `totals`, 3 -> 4 builds `rentals_by_time`, 4 -> 5 adds the empty
/// `price_history`).
pub const SCHEMA_VERSION: u32 = 5;
