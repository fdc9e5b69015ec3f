//! What the benches share: the offer their rentals are made of.

use spotd::model::Offer;
use spotd::money::Usd;

/// One H100 at $2.50/h.
pub fn offer() -> Offer {
    Offer {
        id: "bench:o1".into(),
        provider: "bench".into(),
        native_id: "o1".into(),
        gpu: "H100 SXM".into(),
        gpu_count: 1,
        vram_gb: 80,
        vcpus: 16,
        ram_gb: 128,
        disk_gb: 500,
        region: "us-east".into(),
        price_per_hour: Usd(2_500_000),
        on_demand_price_per_hour: None,
        interruptible: true,
        reliability: 0.99,
        available: 1,
        updated_at: 0,
    }
}
