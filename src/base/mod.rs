//! Leaves every other layer may use: the environment behind a trait, error plumbing, the open-file
//! limit.

pub mod echo;
pub mod env;
pub mod error;
pub mod fd_limit;
pub mod host;
pub mod lease;
pub(crate) mod single_flight;
