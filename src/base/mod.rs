//! Leaves every other layer may use: the environment behind a trait, error plumbing.

pub mod env;
pub mod error;
pub mod host;
pub mod lease;
pub(crate) mod single_flight;
