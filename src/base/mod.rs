//! Leaves every other layer may use: the environment behind a trait.

pub mod env;
