//! A 100 MB store path made by real Nix, in an uncompressed signed cache (built once per machine).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Fixtures, run};

/// A 100 MB store path made by real Nix, in an uncompressed cache (built once per machine).
pub fn hundred_mb_cache(fx: &Fixtures) -> (PathBuf, String) {
    let dir = fx.dir.join("slow");
    let stamp = dir.join("path");
    if let Ok(sp) = fs::read_to_string(&stamp) {
        let sp = sp.trim().to_owned();
        if Path::new(&sp).exists() && dir.join("cache/nix-cache-info").exists() {
            return (dir.join("cache"), sp);
        }
    }
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("src")).unwrap();
    let mut data = vec![0u8; 100 * 1000 * 1000];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    fs::write(dir.join("src/data.bin"), &data).unwrap();
    let out = run(Command::new("nix-store").arg("--add").arg(dir.join("src")));
    let sp = String::from_utf8_lossy(&out).trim().to_owned();
    let to = format!(
        "file://{}?compression=none&secret-key={}",
        dir.join("cache").display(),
        fx.secret_key_path().display()
    );
    run(Command::new("nix").args([
        "--extra-experimental-features",
        "nix-command",
        "copy",
        "--to",
        &to,
        &sp,
    ]));
    fs::write(&stamp, &sp).unwrap();
    (dir.join("cache"), sp)
}
