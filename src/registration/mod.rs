//! Nix registration on the new root.

pub mod parse;
