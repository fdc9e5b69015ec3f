pub mod offer_sync;
pub mod rentals;
