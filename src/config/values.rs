//! Parsers for the values settings are written in: sizes, `--min-free`, listen addresses, and
//! paths made absolute. Each error names the value; the resolvers add the setting's name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::ConfigError;
use crate::cache::MinFree;

/// Parses `20G`, `500M`, `1024`, `10GiB` (binary units; whole numbers only, never 0).
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::Size(s.to_owned());
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    let bytes = n.checked_mul(1u64 << shift).ok_or_else(bad)?;
    if bytes == 0 {
        return Err(bad());
    }
    Ok(bytes)
}

/// Parses `--min-free`: `5%`, `2G`, `500M`, `0`.
pub fn parse_min_free(s: &str) -> Result<MinFree, ConfigError> {
    let t = s.trim();
    if let Some(pct) = t.strip_suffix('%') {
        return match pct.trim().parse::<u8>() {
            Ok(p) if p < 100 => Ok(MinFree::Percent(p)),
            _ => Err(ConfigError::Invalid(format!("invalid percentage {s:?}: expected 0% to 99%"))),
        };
    }
    if t == "0" {
        return Ok(MinFree::Bytes(0));
    }
    parse_size(t).map(MinFree::Bytes)
}

/// Parses `ADDR:PORT`, e.g. `127.0.0.1:9101` or `[::]:9101`.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse()
        .map_err(|_| ConfigError::Invalid(format!("{s:?} is not ADDR:PORT (e.g. 127.0.0.1:9101)")))
}

/// Makes `path` absolute against the current directory, without touching the filesystem
/// (the mountpoint may not be reachable yet, and must never be resolved through the mount).
pub fn absolute(path: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(path)
        .map_err(|e| ConfigError::Invalid(format!("cannot make {} absolute: {e}", path.display())))
}
