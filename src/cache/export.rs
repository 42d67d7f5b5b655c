//! Validity registrations for `nix-store --load-db`, from verified narinfos, so a Nix inside a
//! job container sees mounted paths as valid instead of substituting them again.
//!
//! The format is what `nix-store --dump-db` prints (Nix 2.8, `makeValidityRegistration` with
//! hashes): per path, these lines:
//! ```text
//! /nix/store/<hash>-<name>      the path
//! <64 hex digits>               NarHash as base16, no `sha256:` prefix
//! <decimal>                     NarSize
//! /nix/store/<hash>-<name>.drv  the deriver, or an empty line when unknown
//! <decimal>                     number of references
//! /nix/store/...                each reference, one per line, sorted
//! ```
//! Paths come sorted, like Nix's path sets. `--load-db` also accepts `sha256:<hex>` but refuses
//! a registration whose references are not valid, so export a whole closure into a fresh store.

use std::fmt::Write as _;

use super::{CacheError, NarCache};
use crate::nix::narinfo::NarInfo;
use crate::nix::store_path::StorePath;
use crate::sync::Arc;

/// One path's registration in `--dump-db` format (see the module doc).
pub fn registration(info: &NarInfo) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{}", info.store_path.to_absolute_path());
    let _ = writeln!(out, "{}", info.nar_hash.to_hex());
    let _ = writeln!(out, "{}", info.nar_size);
    let _ = writeln!(
        out,
        "{}",
        info.deriver.as_ref().map(StorePath::to_absolute_path).unwrap_or_default()
    );
    let mut refs: Vec<String> = info.references.iter().map(StorePath::to_absolute_path).collect();
    refs.sort();
    refs.dedup();
    let _ = writeln!(out, "{}", refs.len());
    for r in refs {
        let _ = writeln!(out, "{r}");
    }
    out
}

impl NarCache {
    /// Registrations of `paths` (with `closure`, of their whole closure) for `nix-store
    /// --load-db`, from verified narinfos. Paths not cached are fetched first (through `get`),
    /// since only a fetched narinfo counts as verified here.
    pub async fn export_db(
        self: &Arc<Self>,
        paths: &[StorePath],
        closure: bool,
    ) -> Result<String, CacheError> {
        let mut all = if closure { self.closure(paths).await? } else { paths.to_vec() };
        all.sort_by_key(StorePath::to_absolute_path);
        all.dedup();
        let mut out = String::new();
        for sp in &all {
            let entry = self.get(sp).await?;
            out.push_str(&registration(&entry.narinfo));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::hash::NarHash;

    #[test]
    fn prints_what_nix_store_dump_db_prints() {
        // From `nix-store --dump-db` (Nix 2.8) of a fixture path.
        let text = "StorePath: /nix/store/1hk0yspna9l1r54qrr00b8dm530dy168-multi-ref\n\
                    URL: nar/x.nar\nCompression: none\n\
                    NarHash: sha256:ddcdbf59ae4d8c4914231852b2efce142049365f5b64d27775572eb9d228fbd8\n\
                    NarSize: 528\n\
                    References: 3g040cf1izicfsr8qv0x7sk1n09nspj5-hello.txt \
                    173hqv0jwmlqimly794mayygb24a0d5w-with-refs-1.0 \
                    1hk0yspna9l1r54qrr00b8dm530dy168-multi-ref\n";
        let info = NarInfo::parse(text.as_bytes()).unwrap();
        assert_eq!(
            info.nar_hash,
            NarHash::parse(
                "sha256:ddcdbf59ae4d8c4914231852b2efce142049365f5b64d27775572eb9d228fbd8"
            )
            .unwrap()
        );
        let want = "/nix/store/1hk0yspna9l1r54qrr00b8dm530dy168-multi-ref\n\
                    ddcdbf59ae4d8c4914231852b2efce142049365f5b64d27775572eb9d228fbd8\n\
                    528\n\
                    \n\
                    3\n\
                    /nix/store/173hqv0jwmlqimly794mayygb24a0d5w-with-refs-1.0\n\
                    /nix/store/1hk0yspna9l1r54qrr00b8dm530dy168-multi-ref\n\
                    /nix/store/3g040cf1izicfsr8qv0x7sk1n09nspj5-hello.txt\n";
        assert_eq!(registration(&info), want);
    }

    #[test]
    fn prints_the_deriver() {
        let text = "StorePath: /nix/store/0afmqpz5z4ywcyl0lz8n47i31yrfp1rv-chain-03\n\
                    URL: nar/x.nar\nCompression: none\n\
                    NarHash: sha256:ae4721c4ce80ca8287f939444e9d5afeec507925f6b93bb8a6fa3c765a1b61bb\n\
                    NarSize: 816\nReferences: \n\
                    Deriver: priakwr5yk63xnn2lzy6az024fyfbml3-chain-03.drv\n";
        let info = NarInfo::parse(text.as_bytes()).unwrap();
        let text = registration(&info);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[3], "/nix/store/priakwr5yk63xnn2lzy6az024fyfbml3-chain-03.drv");
        assert_eq!(lines[4], "0");
        assert_eq!(lines.len(), 5);
    }
}
