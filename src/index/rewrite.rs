//! Rewrites the four unsigned narinfo fields that name the NAR file (`URL`, `Compression`,
//! `FileHash`, `FileSize`) and leaves every other line byte for byte as it was, `Sig` lines
//! included: they sign the store path, NarHash, NarSize and References, none of which change.

/// The new values of the NAR file fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFields {
    /// `URL`.
    pub url: String,
    /// `Compression`.
    pub compression: String,
    /// `FileHash` (`sha256:<nix32>`).
    pub file_hash: String,
    /// `FileSize`.
    pub file_size: u64,
}

/// `text` with the NAR file fields set to `fields`: each present one replaced where it stands,
/// a missing one added after `URL` (in Nix's order: URL, Compression, FileHash, FileSize).
#[must_use]
pub fn with_file_fields(text: &str, fields: &FileFields) -> String {
    let values = [
        ("URL", fields.url.clone()),
        ("Compression", fields.compression.clone()),
        ("FileHash", fields.file_hash.clone()),
        ("FileSize", fields.file_size.to_string()),
    ];
    let key_of = |line: &str| line.split_once(": ").map(|(k, _)| k.to_owned());
    let present: Vec<String> = text.lines().filter_map(key_of).collect();
    let mut out = String::with_capacity(text.len() + 128);
    for line in text.lines() {
        let key = key_of(line);
        match values.iter().find(|(k, _)| Some(*k) == key.as_deref()) {
            Some((k, v)) => out.push_str(&format!("{k}: {v}\n")),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
        if key.as_deref() == Some("URL") {
            for (k, v) in &values[1..] {
                if !present.iter().any(|p| p == k) {
                    out.push_str(&format!("{k}: {v}\n"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> FileFields {
        FileFields {
            url: "nar/new.nar.zst".into(),
            compression: "zstd".into(),
            file_hash: "sha256:new".into(),
            file_size: 42,
        }
    }

    #[test]
    fn replaces_the_file_fields_and_keeps_every_other_line() {
        let cases = [
            (
                "all_present",
                "StorePath: /nix/store/x\nURL: nar/old.nar.xz\nCompression: xz\nFileHash: sha256:old\nFileSize: 7\nNarHash: sha256:n\nSig: k:s==\n",
                "StorePath: /nix/store/x\nURL: nar/new.nar.zst\nCompression: zstd\nFileHash: sha256:new\nFileSize: 42\nNarHash: sha256:n\nSig: k:s==\n",
            ),
            (
                "missing_ones_added_after_url",
                "StorePath: /nix/store/x\nURL: nar/old.nar\nNarHash: sha256:n\nSig: k:s==\n",
                "StorePath: /nix/store/x\nURL: nar/new.nar.zst\nCompression: zstd\nFileHash: sha256:new\nFileSize: 42\nNarHash: sha256:n\nSig: k:s==\n",
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(with_file_fields(input, &fields()), want, "case {name}");
        }
    }
}
