//! Offers: normalize GPU names and units, index, query, paginate. (In progress.)
