//! The replicated KV store as the registry sees it: [`strata_store::Store`].

pub use strata_store::Store;
