//! GPU names and provider offers in spotd's own vocabulary.
//!
//! Every cloud spells the same card differently ("NVIDIA H100 80GB HBM3", "h100_sxm5",
//! "H100-SXM"); users filter and compare across clouds, so every offer carries one
//! normalized model name. Unknown names are kept (trimmed) rather than guessed.

use crate::clock::Millis;
use crate::model::Offer;
use crate::providers::ProviderOffer;

/// Words that name a vendor or a product line, never the model itself.
const NOISE: &[&str] = &["nvidia", "geforce", "tesla", "amd", "instinct", "radeon"];

/// Model needles in the order they must be tried: a longer or more specific needle
/// comes before any needle it contains ("a100" before "a10", "l40s" before "l4").
/// A needle matches only when it is not glued to a further digit ("a10" must not
/// match "a1000"), see [`find_model`].
const MODELS: &[(&str, &str)] = &[
    ("gh200", "GH200"),
    ("h200", "H200"),
    ("b200", "B200"),
    ("mi300x", "MI300X"),
    ("a6000", "RTX A6000"),
    ("a5000", "RTX A5000"),
    ("a4000", "RTX A4000"),
    ("5090", "RTX 5090"),
    ("4090", "RTX 4090"),
    ("4080", "RTX 4080"),
    ("3090ti", "RTX 3090 Ti"),
    ("3090 ti", "RTX 3090 Ti"),
    ("3090", "RTX 3090"),
    ("3080", "RTX 3080"),
    ("l40s", "L40S"),
    ("l40", "L40"),
    ("a40", "A40"),
    ("a10g", "A10G"),
    ("a10", "A10"),
    ("v100", "V100"),
    ("l4", "L4"),
    ("t4", "T4"),
];

/// Maps a provider's spelling of a GPU to spotd's name, e.g. "NVIDIA H100 80GB HBM3"
/// -> "H100 SXM", "h100_pcie" -> "H100 PCIe", "RTX_4090" -> "RTX 4090",
/// "A100-SXM4-80GB" -> "A100 80GB". Unknown names come back trimmed.
pub(crate) fn normalize_gpu(raw: &str) -> String {
    normalize_with_vram(raw, None)
}

/// Like [`normalize_gpu`], using the offer's per-GPU memory to tell variants apart
/// when the name does not (a bare "A100" is the 40 GB or the 80 GB card).
fn normalize_with_vram(raw: &str, vram_gb: Option<u32>) -> String {
    let trimmed = raw.trim();
    let lower = trimmed.to_ascii_lowercase();
    let tokens: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty() && !NOISE.contains(t))
        .collect();
    // Separators become one space, so "RTX_4090", "rtx-4090" and "RTX 4090" read the
    // same; glued spellings ("rtx4090", "h100sxm5") are found by `find_model`.
    let compact: String = tokens.join(" ");
    let has = |w: &str| tokens.iter().any(|t| t.contains(w));

    if find_model(&compact, "h100") {
        return if has("pcie") {
            "H100 PCIe".into()
        } else if has("nvl") {
            "H100 NVL".into()
        } else {
            // "HBM3", "SXM5" or nothing at all: the SXM board is what clouds mean by a
            // bare H100 (the PCIe card is always labelled as such).
            "H100 SXM".into()
        };
    }
    if find_model(&compact, "a100") {
        let forty = has("40g") || matches!(vram_gb, Some(v) if v < 60);
        return if forty { "A100 40GB" } else { "A100 80GB" }.into();
    }
    if has("ada") && (find_model(&compact, "6000") || has("6000")) {
        return "RTX 6000 Ada".into();
    }
    for (needle, name) in MODELS {
        if find_model(&compact, needle) {
            return (*name).into();
        }
    }
    trimmed.to_string()
}

/// `needle` occurs in `compact` with no digit glued to either side: "a10" does not
/// match "a1000" nor "l4" match "l40s", while "h100" matches "h100 80gb" and "4090"
/// matches "rtx4090".
fn find_model(compact: &str, needle: &str) -> bool {
    let bytes = compact.as_bytes();
    let mut start = 0;
    while let Some(i) = compact[start..].find(needle) {
        let at = start + i;
        let end = at + needle.len();
        let next_is_digit = bytes.get(end).is_some_and(|b| b.is_ascii_digit());
        let prev_is_digit = at > 0 && bytes[at - 1].is_ascii_digit();
        if !next_is_digit && !prev_is_digit {
            return true;
        }
        start = at + 1;
    }
    false
}

/// Why an offer cannot enter the market (a buggy or hostile pool): a negative price
/// would pay the renter, no GPU or no id makes nothing to rent. `None` when it can.
pub(crate) fn insane_offer(p: &ProviderOffer) -> Option<&'static str> {
    if p.id.trim().is_empty() {
        Some("empty id")
    } else if p.gpu_count == 0 {
        Some("gpu_count 0")
    } else if p.price_per_hour.is_negative()
        || p.on_demand_price_per_hour.is_some_and(|x| x.is_negative())
    {
        Some("negative price")
    } else {
        None
    }
}

/// The normalized record of one provider offer; the id is `provider:native_id`.
/// A reliability outside 0..1 (or not a number) is clamped, so sorting stays total.
pub(crate) fn offer_from_provider(provider: &str, p: ProviderOffer, now: Millis) -> Offer {
    let reliability = if p.reliability.is_nan() {
        0.0
    } else {
        p.reliability.clamp(0.0, 1.0)
    };
    Offer {
        id: format!("{provider}:{}", p.id),
        provider: provider.to_string(),
        gpu: normalize_with_vram(&p.gpu, Some(p.vram_gb)),
        native_id: p.id,
        gpu_count: p.gpu_count,
        vram_gb: p.vram_gb,
        vcpus: p.vcpus,
        ram_gb: p.ram_gb,
        disk_gb: p.disk_gb,
        region: p.region.trim().to_string(),
        price_per_hour: p.price_per_hour,
        on_demand_price_per_hour: p.on_demand_price_per_hour,
        interruptible: p.interruptible,
        reliability,
        available: p.available,
        updated_at: now,
    }
}
