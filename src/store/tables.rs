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

/// Webhook id -> `Webhook` (schema 6): the endpoints events are delivered to.
pub const WEBHOOKS: TableDefinition<&str, &[u8]> = TableDefinition::new("webhooks");
/// Delivery seq -> `Delivery` (schema 6): the outbox, one row per event and endpoint.
pub const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
/// (next attempt ms, seq) -> () (schema 6): deliveries whose attempt is due then, and
/// only those (a delivery waiting for an earlier event of its stream is not here), so
/// the delivery worker reads what is due and nothing else.
pub const DELIVERIES_DUE: TableDefinition<(i64, u64), ()> = TableDefinition::new("deliveries_due");
/// (webhook id, stream, seq) -> () (schema 6): unfinished deliveries of one rental's (or
/// account's) events to one endpoint, in event order; the first is the one that may go.
pub const DELIVERY_STREAMS: TableDefinition<(&str, &str, u64), ()> =
    TableDefinition::new("delivery_streams");
/// (webhook id, seq) -> () (schema 6): each endpoint's deliveries, for its list.
pub const WEBHOOK_DELIVERIES: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("webhook_deliveries");
/// (finished ms, seq) -> () (schema 6): finished deliveries in the order they finished,
/// for the retention sweep.
pub const DELIVERIES_DONE: TableDefinition<(i64, u64), ()> =
    TableDefinition::new("deliveries_done");

/// Bumped when a table's key or value layout changes, or a table is added that must be
/// built from the others (`Store::open` migrates: 1 -> 2 builds `account_active`,
/// 2 -> 3 builds `totals`, 3 -> 4 builds `rentals_by_time`, 4 -> 5 adds the empty
/// `price_history`, 5 -> 6 the empty webhook tables).
pub const SCHEMA_VERSION: u32 = 6;
