//! storefs: a lazy, verified, read-only /nix/store served over FUSE.
//!
//! # Layout
//! Imports point only this way:
//! `nix` ← `upstream` ← `cache` ← `fs` ← `config` ← `control` ← `daemon` ← `cli`.
//! - [`nix`]: Nix formats, pure (no I/O): base32, store paths, narinfo, signatures, NAR.
//! - [`upstream`]: binary caches over HTTP(S) and `file://`, decompression.
//! - [`cache`]: the verified local disk cache, single-flight fetch, LRU quota.
//! - [`index`]: `storefs index`, which prepares a binary cache directory for file-level
//!   laziness (beside `cache` in the layers; only `cli` uses it).
//! - [`fs`]: filesystem semantics, plus the FUSE adapter and the mount session.
//! - [`wire`]: storefs's own FUSE transport (linux/fuse.h), used only by `fs`.
//! - [`config`]: every setting, resolved into the config types of `upstream`, `cache` and `fs`.
//! - [`daemon`]: wires them together; [`control`]: the control socket; [`cli`]: the command line.
//! - [`logging`], [`metrics`], [`notify`], [`sync`]: used by anyone.

#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod cache;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod failpoint;
pub mod fs;
pub mod index;
pub mod logging;
pub mod metrics;
pub mod nix;
pub mod notify;
pub mod sync;
pub mod upstream;
pub mod wire;
