//! Ed25519 narinfo signatures (`Sig:` lines) and trusted public keys (`trusted-public-keys`).
//!
//! Both are `name:base64`. Like Nix, a value is split at its *first* colon; the rest must be
//! canonical padded base64 of exactly 64 (signature) or 32 (public key) bytes, so a value with
//! more colons is rejected by the base64 check. Names must be non-empty; no other rule applies.
//!
//! Verification is strict (`verify_strict`: canonical `S`, no small-order `R` or key), so storefs
//! accepts no more than libsodium's `crypto_sign_verify_detached`, which Nix uses. Unlike Nix,
//! two trusted keys with the same name are a configuration error rather than "first one wins".

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::Signer as _;

use crate::nix::narinfo::NarInfo;
use crate::nix::snippet;

/// Bytes in an ed25519 signature.
pub const SIGNATURE_SIZE: usize = ed25519_dalek::SIGNATURE_LENGTH;
/// Bytes in an ed25519 public key.
pub const PUBLIC_KEY_SIZE: usize = ed25519_dalek::PUBLIC_KEY_LENGTH;
/// Bytes in an ed25519 seed (the first half of a Nix secret key).
pub const SEED_SIZE: usize = ed25519_dalek::SECRET_KEY_LENGTH;
/// Bytes in a Nix (libsodium) secret key: seed followed by public key.
pub const SECRET_KEY_SIZE: usize = SEED_SIZE + PUBLIC_KEY_SIZE;

/// Errors from parsing signatures and keys, or building a key set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No `:` separating name and data.
    #[error("missing ':' in {what} {value:?}")]
    MissingColon {
        /// `signature`, `public key` or `secret key`.
        what: &'static str,
        /// The value (excerpt).
        value: String,
    },
    /// Nothing before the colon.
    #[error("empty name in {what} {value:?}")]
    EmptyName {
        /// `signature`, `public key` or `secret key`.
        what: &'static str,
        /// The value (excerpt).
        value: String,
    },
    /// The data after the colon is not canonical base64.
    #[error("invalid base64 in {what} {name:?}")]
    Base64 {
        /// `signature`, `public key` or `secret key`.
        what: &'static str,
        /// The name before the colon (excerpt).
        name: String,
    },
    /// The data decodes to the wrong number of bytes.
    #[error("{what} {name:?} has {len} bytes, expected {expected}")]
    WrongLength {
        /// `signature`, `public key` or `secret key`.
        what: &'static str,
        /// The name before the colon (excerpt).
        name: String,
        /// Decoded length.
        len: usize,
        /// Required length.
        expected: usize,
    },
    /// The public key is not a valid curve point.
    #[error("public key {0:?} is not a valid ed25519 point")]
    InvalidKey(String),
    /// The public key has small order, so it would accept forged signatures.
    #[error("public key {0:?} is weak (small order)")]
    WeakKey(String),
    /// The secret key's public half does not match its seed.
    #[error("secret key {0:?} is inconsistent: its public half does not match its seed")]
    InconsistentSecretKey(String),
    /// Two trusted keys share a name.
    #[error("duplicate trusted key name {0:?}")]
    DuplicateKeyName(String),
}

/// Why a narinfo is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The narinfo has no `Sig` line.
    #[error("narinfo has no signatures")]
    NoSignatures,
    /// No signature names a trusted key.
    #[error("no signature by a trusted key (signed by: {})", names_seen.join(", "))]
    NoTrustedSignature {
        /// Names claimed by the untrusted signatures, in order, de-duplicated, empty ones
        /// left out (excerpts; a `Sig` without a colon counts as all name).
        names_seen: Vec<String>,
    },
    /// A signature names a trusted key but is malformed or does not verify.
    #[error("signature by trusted key {key:?} does not verify")]
    BadSignature {
        /// The first trusted key name whose signature failed.
        key: String,
    },
}

/// Splits `name:base64` at the first colon and decodes the data into exactly `N` bytes.
fn parse_named<'s, const N: usize>(
    what: &'static str,
    s: &'s str,
) -> Result<(&'s str, [u8; N]), Error> {
    let (name, data) = s
        .split_once(':')
        .ok_or_else(|| Error::MissingColon { what, value: snippet(s.as_bytes()) })?;
    if name.is_empty() {
        return Err(Error::EmptyName { what, value: snippet(s.as_bytes()) });
    }
    let decoded =
        BASE64.decode(data).map_err(|_| Error::Base64 { what, name: snippet(name.as_bytes()) })?;
    let len = decoded.len();
    let bytes = decoded.try_into().map_err(|_| Error::WrongLength {
        what,
        name: snippet(name.as_bytes()),
        len,
        expected: N,
    })?;
    Ok((name, bytes))
}

/// A parsed `Sig:` value.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Signature {
    name: String,
    bytes: [u8; SIGNATURE_SIZE],
}

impl Signature {
    /// Parses `name:base64(64 bytes)`.
    ///
    /// # Errors
    ///
    /// No colon, an empty name, bad base64 or a length other than 64 bytes.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (name, bytes) = parse_named::<SIGNATURE_SIZE>("signature", s)?;
        Ok(Self { name: name.to_owned(), bytes })
    }

    /// The key name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw signature bytes.
    #[must_use]
    pub fn bytes(&self) -> &[u8; SIGNATURE_SIZE] {
        &self.bytes
    }
}

impl fmt::Display for Signature {
    /// Writes `name:base64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.bytes))
    }
}

/// A trusted public key: `name:base64(32 bytes)`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TrustedKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl TrustedKey {
    /// Parses `name:base64(32 bytes)`, refusing invalid and weak (small-order) keys.
    ///
    /// # Errors
    ///
    /// Malformed text, a non-point, or a weak key.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (name, bytes) = parse_named::<PUBLIC_KEY_SIZE>("public key", s)?;
        Self::from_parts(name, &bytes)
    }

    fn from_parts(name: &str, bytes: &[u8; PUBLIC_KEY_SIZE]) -> Result<Self, Error> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map_err(|_| Error::InvalidKey(snippet(name.as_bytes())))?;
        if key.is_weak() {
            return Err(Error::WeakKey(snippet(name.as_bytes())));
        }
        Ok(Self { name: name.to_owned(), key })
    }

    /// The key name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `sig` is this key's valid, strictly checked signature of `message`.
    /// The signature's name is not compared; [`TrustedKeys::verify`] does that.
    #[must_use]
    pub fn verifies(&self, message: &[u8], sig: &Signature) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(&sig.bytes);
        self.key.verify_strict(message, &sig).is_ok()
    }
}

impl fmt::Display for TrustedKey {
    /// Writes `name:base64`, the `trusted-public-keys` form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

/// The configured set of trusted keys, with unique names.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<String, TrustedKey>,
}

impl TrustedKeys {
    /// Builds a set.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateKeyName`] when two keys share a name (Nix would silently keep one).
    pub fn new(keys: Vec<TrustedKey>) -> Result<Self, Error> {
        let mut map = BTreeMap::new();
        for key in keys {
            if map.contains_key(&key.name) {
                return Err(Error::DuplicateKeyName(snippet(key.name.as_bytes())));
            }
            map.insert(key.name.clone(), key);
        }
        Ok(Self { keys: map })
    }

    /// Parses every `name:base64` item and builds a set.
    ///
    /// # Errors
    ///
    /// The first malformed key, or a duplicate name.
    pub fn parse_all<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, Error> {
        let keys = items.into_iter().map(TrustedKey::parse).collect::<Result<Vec<_>, _>>()?;
        Self::new(keys)
    }

    /// Whether no key is configured (then nothing can verify).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Number of keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The keys' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The key with this name.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&TrustedKey> {
        self.keys.get(name)
    }

    /// Returns the name of the trusted key whose signature over `info.fingerprint()` verifies
    /// (strictly). Signatures by unknown names, and malformed ones, are skipped.
    ///
    /// # Errors
    ///
    /// [`VerifyError::NoSignatures`] when there is no `Sig`; [`VerifyError::BadSignature`] when a
    /// signature names a trusted key but is malformed or wrong (and none verifies);
    /// [`VerifyError::NoTrustedSignature`] otherwise.
    pub fn verify(&self, info: &NarInfo) -> Result<String, VerifyError> {
        self.verify_message(info.fingerprint().as_bytes(), &info.signatures)
    }

    /// Returns the name of the trusted key whose signature (one of `signatures`, raw
    /// `name:base64` values) over `message` verifies; the rules and errors of [`Self::verify`].
    /// The signed file index (`file_index`) uses it with its own fingerprint.
    ///
    /// # Errors
    ///
    /// As [`Self::verify`].
    pub fn verify_message(
        &self,
        message: &[u8],
        signatures: &[String],
    ) -> Result<String, VerifyError> {
        if signatures.is_empty() {
            return Err(VerifyError::NoSignatures);
        }
        let fingerprint = message;
        let mut names_seen: Vec<String> = Vec::new();
        let mut first_bad: Option<&str> = None;
        for raw in signatures {
            // Split like Signature::parse does, so that a malformed signature that claims a
            // trusted name is reported as bad rather than as "untrusted".
            let claimed = raw.split_once(':').map_or(raw.as_str(), |(name, _)| name);
            let Some(key) = self.keys.get(claimed) else {
                let seen = snippet(claimed.as_bytes());
                if !seen.is_empty() && !names_seen.contains(&seen) {
                    names_seen.push(seen);
                }
                continue;
            };
            match Signature::parse(raw) {
                Ok(sig) if key.verifies(fingerprint, &sig) => {
                    return Ok(key.name.clone());
                }
                _ => {
                    first_bad.get_or_insert(&key.name);
                }
            }
        }
        match first_bad {
            Some(key) => Err(VerifyError::BadSignature { key: key.to_owned() }),
            None => Err(VerifyError::NoTrustedSignature { names_seen }),
        }
    }
}

/// A Nix signing key, for tests and CLI tooling (storefs itself never signs).
///
/// `Debug` shows only the name, so the secret does not end up in logs.
#[derive(Clone)]
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("name", &self.name).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Parses Nix's secret key format (`nix-store --generate-binary-cache-key`):
    /// `name:base64(32-byte seed followed by the 32-byte public key)`.
    ///
    /// # Errors
    ///
    /// Malformed text, or a public half that does not match the seed.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (name, bytes) = parse_named::<SECRET_KEY_SIZE>("secret key", s)?;
        let (seed, public) = bytes.split_at(SEED_SIZE);
        let seed: [u8; SEED_SIZE] = seed.try_into().expect("split_at(SEED_SIZE) of 64 bytes");
        let key = Self::generate(name, seed);
        if key.key.verifying_key().as_bytes() != public {
            return Err(Error::InconsistentSecretKey(snippet(name.as_bytes())));
        }
        Ok(key)
    }

    /// Derives a key from a 32-byte seed (deterministic, for reproducible fixtures).
    #[must_use]
    pub fn generate(name: &str, seed: [u8; SEED_SIZE]) -> Self {
        Self { name: name.to_owned(), key: ed25519_dalek::SigningKey::from_bytes(&seed) }
    }

    /// The key name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key.
    ///
    /// # Panics
    ///
    /// Never: a key derived from a seed is the base point times a clamped scalar, which is
    /// never a multiple of the group order, so the point has prime order and is not weak.
    #[must_use]
    pub fn public(&self) -> TrustedKey {
        TrustedKey::from_parts(&self.name, self.key.verifying_key().as_bytes())
            .expect("a key derived from a seed is a valid, non-weak point")
    }

    /// `name:base64(public key)`, the `trusted-public-keys` form.
    #[must_use]
    pub fn to_public_string(&self) -> String {
        format!("{}:{}", self.name, BASE64.encode(self.key.verifying_key().as_bytes()))
    }

    /// `name:base64(seed ++ public key)`, Nix's secret key file format.
    #[must_use]
    pub fn to_secret_string(&self) -> String {
        let mut bytes = [0u8; SECRET_KEY_SIZE];
        bytes[..SEED_SIZE].copy_from_slice(self.key.as_bytes());
        bytes[SEED_SIZE..].copy_from_slice(self.key.verifying_key().as_bytes());
        format!("{}:{}", self.name, BASE64.encode(bytes))
    }

    /// Signs an arbitrary message; returns `name:base64(signature)`.
    #[must_use]
    pub fn sign_message(&self, message: &[u8]) -> String {
        let sig = self.key.sign(message);
        format!("{}:{}", self.name, BASE64.encode(sig.to_bytes()))
    }

    /// Signs `info.fingerprint()`; returns the `Sig:` value `name:base64(signature)`.
    #[must_use]
    pub fn sign(&self, info: &NarInfo) -> String {
        self.sign_message(info.fingerprint().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::hash::NarHash;
    use crate::nix::store_path::StorePath;
    use proptest::prelude::*;

    const CACHE_NIXOS_ORG: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

    /// A key pair made by `nix-store --generate-binary-cache-key test-1 sk pk` (Nix 2.8.0).
    const NIX_SECRET: &str = "test-1:d7nyEqoClcD4DoP38bo/RmJNMUhUKUEO4JkY9bwz1etqHt/tupV3wgdwejvKJlfFC8G89l+6iumkzy7a0CB5hw==";
    const NIX_PUBLIC: &str = "test-1:ah7f7bqVd8IHcHo7yiZXxQvBvPZfuorppM8u2tAgeYc=";

    /// Narinfos written and signed by `nix copy --to file://...?secret-key=sk` (Nix 2.8.0).
    const NIX_SIGNED: &[(&str, &str)] = &[
        (
            "no_references_with_ca",
            "StorePath: /nix/store/3g040cf1izicfsr8qv0x7sk1n09nspj5-hello.txt
URL: nar/1hx9g0vnr044mhslkz8j78a8fgsjx710a20mfg01wcslcvxkndkq.nar
Compression: none
FileHash: sha256:1hx9g0vnr044mhslkz8j78a8fgsjx710a20mfg01wcslcvxkndkq
FileSize: 128
NarHash: sha256:1hx9g0vnr044mhslkz8j78a8fgsjx710a20mfg01wcslcvxkndkq
NarSize: 128
References: 
Sig: test-1:3tq4BoN1QOzys/v/G381nJZW+XUisnbKhJu9KtTCE7uPMvg4oh3N57sKJ1pB5zdC2Ki8pMdTfxXL0+sBdWaoDw==
CA: fixed:r:sha256:1hx9g0vnr044mhslkz8j78a8fgsjx710a20mfg01wcslcvxkndkq
",
        ),
        ("one_reference_and_deriver", crate::nix::narinfo::tests::NIX_WITH_REFS),
        (
            "three_references_including_self",
            "StorePath: /nix/store/1hk0yspna9l1r54qrr00b8dm530dy168-multi-ref
URL: nar/1gzs1w4ackqbxa5ixwghf8n68x386zzgmj4ld86jjdfasbq5fzrh.nar.zst
Compression: zstd
FileHash: sha256:1gzs1w4ackqbxa5ixwghf8n68x386zzgmj4ld86jjdfasbq5fzrh
FileSize: 213
NarHash: sha256:1n7v539bjbjpfmvx4r2vbwv4j80lrvpv4lhq4ca4k32dmrcvzkfx
NarSize: 528
References: 173hqv0jwmlqimly794mayygb24a0d5w-with-refs-1.0 1hk0yspna9l1r54qrr00b8dm530dy168-multi-ref 3g040cf1izicfsr8qv0x7sk1n09nspj5-hello.txt
Sig: test-1:zTJc7g9XZS4fA6o0zZS+GUf+so3hOm7HWeTpJdSnkh9fV6xdYroNbKm01qaDMIyj1/nMBiR4khHnhtKerOBqBA==
",
        ),
    ];

    fn key(name: &str, seed_byte: u8) -> SigningKey {
        SigningKey::generate(name, [seed_byte; SEED_SIZE])
    }

    fn sample() -> NarInfo {
        let sp = |s: &str| StorePath::from_basename(s.as_bytes()).unwrap();
        NarInfo {
            store_path: sp("sb0pjqhfnvrfkx6qzf6zlv3r6bl2x3dq-hello-2.12.1"),
            url: "nar/0qa8y4ppfi7gr9s0rr8rhw1xsgaxdhr0hn4iqvxfl7pb3zp0pvw4.nar.xz".to_owned(),
            compression: crate::nix::narinfo::Compression::Xz,
            nar_hash: NarHash::parse("sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s")
                .unwrap(),
            nar_size: 226_560,
            file_hash: Some(
                "sha256:0qa8y4ppfi7gr9s0rr8rhw1xsgaxdhr0hn4iqvxfl7pb3zp0pvw4".to_owned(),
            ),
            file_size: Some(50_264),
            references: vec![
                sp("sb0pjqhfnvrfkx6qzf6zlv3r6bl2x3dq-hello-2.12.1"),
                sp("0c7c96gikmzv87i7lv3vq5s1cmfjd6zf-glibc-2.38-23"),
            ],
            deriver: Some(sp("6xg9nn8r0a5kfx8fprm2jh1bijj5pnmx-hello-2.12.1.drv")),
            signatures: Vec::new(),
            ca: None,
        }
    }

    fn signed_by(info: &NarInfo, keys: &[&SigningKey]) -> NarInfo {
        let mut info = info.clone();
        info.signatures = keys.iter().map(|k| k.sign(&info)).collect();
        info
    }

    #[test]
    fn parses_cache_nixos_org_key() {
        let key = TrustedKey::parse(CACHE_NIXOS_ORG).unwrap();
        assert_eq!(key.name(), "cache.nixos.org-1");
        assert_eq!(key.to_string(), CACHE_NIXOS_ORG);
    }

    #[test]
    fn nix_secret_key_matches_nix_public_key() {
        let sk = SigningKey::parse(NIX_SECRET).unwrap();
        assert_eq!(sk.to_public_string(), NIX_PUBLIC);
        assert_eq!(sk.to_secret_string(), NIX_SECRET);
        assert_eq!(sk.public(), TrustedKey::parse(NIX_PUBLIC).unwrap());
    }

    #[test]
    fn verifies_nix_signed_narinfos() {
        let keys = TrustedKeys::parse_all([NIX_PUBLIC]).unwrap();
        let sk = SigningKey::parse(NIX_SECRET).unwrap();
        for (name, text) in NIX_SIGNED {
            let info = NarInfo::parse(text.as_bytes()).unwrap();
            assert_eq!(keys.verify(&info).as_deref(), Ok("test-1"), "case {name}");
            // ed25519 is deterministic, so our signer must reproduce Nix's signature exactly.
            assert_eq!(vec![sk.sign(&info)], info.signatures, "case {name}");
            assert_eq!(info.to_string(), *text, "case {name}: Display matches Nix");
        }
    }

    #[test]
    fn signature_parse_cases() {
        let good = key("k-1", 1).sign_message(b"x");
        let data = good.split_once(':').unwrap().1.to_owned();
        let cases: Vec<(&str, String, Result<&str, &str>)> = vec![
            ("valid", good.clone(), Ok("k-1")),
            ("name_with_dots", format!("cache.example.org-1:{data}"), Ok("cache.example.org-1")),
            ("no_colon", data.clone(), Err("missing ':'")),
            ("empty_name", format!(":{data}"), Err("empty name")),
            ("empty", String::new(), Err("missing ':'")),
            ("extra_colon", format!("a:b:{data}"), Err("invalid base64")),
            ("bad_base64", "k:!!!!".to_owned(), Err("invalid base64")),
            ("unpadded", format!("k:{}", data.trim_end_matches('=')), Err("invalid base64")),
            ("too_short", "k:AAAA".to_owned(), Err("has 3 bytes, expected 64")),
            ("public_key_length", format!("k:{}", BASE64.encode([0u8; 32])), Err("has 32 bytes")),
            ("too_long", format!("k:{}", BASE64.encode([0u8; 65])), Err("has 65 bytes")),
            ("whitespace", format!("k: {data}"), Err("invalid base64")),
            ("non_ascii", format!("ké:{data}é"), Err("invalid base64")),
        ];
        for (name, input, want) in cases {
            match (Signature::parse(&input), want) {
                (Ok(sig), Ok(n)) => {
                    assert_eq!(sig.name(), n, "case {name}");
                    assert_eq!(sig.to_string(), input, "case {name}");
                }
                (Err(e), Err(msg)) => {
                    assert!(e.to_string().contains(msg), "case {name}: {e} lacks {msg:?}")
                }
                (got, _) => panic!("case {name}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn trusted_key_parse_cases() {
        // The identity point (y = 1) is a valid encoding of a small-order point.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        // y = 2 is not on the curve.
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        let cases: Vec<(&str, String, Result<(), &str>)> = vec![
            ("nixos", CACHE_NIXOS_ORG.to_owned(), Ok(())),
            ("nix_generated", NIX_PUBLIC.to_owned(), Ok(())),
            ("identity_is_weak", format!("k:{}", BASE64.encode(identity)), Err("is weak")),
            ("all_zero_is_weak", format!("k:{}", BASE64.encode([0u8; 32])), Err("is weak")),
            (
                "not_a_point",
                format!("k:{}", BASE64.encode(not_a_point)),
                Err("not a valid ed25519"),
            ),
            ("too_short", "k:AAAA".to_owned(), Err("has 3 bytes, expected 32")),
            ("secret_key_given", NIX_SECRET.to_owned(), Err("has 64 bytes, expected 32")),
            (
                "no_colon",
                "6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=".to_owned(),
                Err("missing ':'"),
            ),
            (
                "empty_name",
                ":6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=".to_owned(),
                Err("empty name"),
            ),
            (
                "bad_base64",
                "k:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY".to_owned(),
                Err("invalid base64"),
            ),
        ];
        for (name, input, want) in cases {
            match (TrustedKey::parse(&input), want) {
                (Ok(_), Ok(())) => {}
                (Err(e), Err(msg)) => {
                    assert!(e.to_string().contains(msg), "case {name}: {e} lacks {msg:?}")
                }
                (got, _) => panic!("case {name}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn secret_key_parse_rejects_mismatched_halves() {
        let a = key("k", 1).to_secret_string();
        let b = key("k", 2).to_secret_string();
        let (sa, sb) = (BASE64.decode(&a[2..]).unwrap(), BASE64.decode(&b[2..]).unwrap());
        let mixed = [&sa[..32], &sb[32..]].concat();
        let err = SigningKey::parse(&format!("k:{}", BASE64.encode(mixed))).unwrap_err();
        assert_eq!(err, Error::InconsistentSecretKey("k".to_owned()));
        assert!(!format!("{:?}", key("k", 1)).contains(&a[2..12]), "Debug must not leak");
    }

    #[test]
    fn duplicate_key_names_refused() {
        let a = key("cache-1", 1).to_public_string();
        let b = key("cache-1", 2).to_public_string();
        let err = TrustedKeys::parse_all([a.as_str(), b.as_str()]).unwrap_err();
        assert_eq!(err.to_string(), "duplicate trusted key name \"cache-1\"");
        // Even the very same key twice is refused: it is a configuration mistake.
        assert!(TrustedKeys::parse_all([a.as_str(), a.as_str()]).is_err());
        let c = key("cache-2", 2).to_public_string();
        assert_eq!(TrustedKeys::parse_all([a.as_str(), c.as_str()]).unwrap().len(), 2);
    }

    #[test]
    fn verify_cases() {
        let trusted = key("cache-1", 1);
        let other_trusted = key("cache-2", 3);
        let impostor = key("cache-1", 2); // same name, different key
        let stranger = key("stranger-1", 4);
        let keys = TrustedKeys::new(vec![trusted.public(), other_trusted.public()]).unwrap();
        let info = sample();
        let good = signed_by(&info, &[&trusted]);

        let mut replayed = sample();
        replayed.store_path =
            StorePath::from_basename(b"0c7c96gikmzv87i7lv3vq5s1cmfjd6zf-glibc-2.38-23").unwrap();
        let replayed = {
            let mut r = signed_by(&replayed, &[&trusted]);
            r.signatures = good.signatures.clone();
            r
        };
        let tamper = |f: fn(&mut NarInfo)| {
            let mut t = good.clone();
            f(&mut t);
            t
        };
        let with_sigs = |sigs: Vec<String>| {
            let mut t = info.clone();
            t.signatures = sigs;
            t
        };
        let zero_sig = format!("cache-1:{}", BASE64.encode([0u8; 64]));

        type Want = Result<&'static str, VerifyError>;
        let bad = |k: &str| Err(VerifyError::BadSignature { key: k.to_owned() });
        let cases: Vec<(&str, NarInfo, Want)> = vec![
            ("valid", good.clone(), Ok("cache-1")),
            ("second_trusted_key", signed_by(&info, &[&other_trusted]), Ok("cache-2")),
            ("no_signatures", info.clone(), Err(VerifyError::NoSignatures)),
            (
                "unknown_signer",
                signed_by(&info, &[&stranger]),
                Err(VerifyError::NoTrustedSignature { names_seen: vec!["stranger-1".to_owned()] }),
            ),
            ("wrong_key_same_name", signed_by(&info, &[&impostor]), bad("cache-1")),
            ("replayed_from_other_path", replayed, bad("cache-1")),
            (
                "tampered_store_path",
                tamper(|t| {
                    t.store_path =
                        StorePath::from_basename(b"sb0pjqhfnvrfkx6qzf6zlv3r6bl2x3dq-hello-2.12.2")
                            .unwrap()
                }),
                bad("cache-1"),
            ),
            (
                "tampered_nar_hash",
                tamper(|t| t.nar_hash = NarHash::from_digest([7; 32])),
                bad("cache-1"),
            ),
            ("tampered_nar_size", tamper(|t| t.nar_size += 1), bad("cache-1")),
            (
                "tampered_references_dropped",
                tamper(|t| {
                    t.references.pop();
                }),
                bad("cache-1"),
            ),
            (
                "tampered_references_added",
                tamper(|t| {
                    t.references.push(
                        StorePath::from_basename(b"00000000000000000000000000000000-evil").unwrap(),
                    )
                }),
                bad("cache-1"),
            ),
            (
                "unsigned_fields_may_change",
                tamper(|t| {
                    t.url = "nar/other.nar".to_owned();
                    t.compression = crate::nix::narinfo::Compression::Zstd;
                    t.file_size = None;
                    t.deriver = None;
                    t.ca = Some("x".to_owned());
                }),
                Ok("cache-1"),
            ),
            ("reference_order_irrelevant", tamper(|t| t.references.reverse()), Ok("cache-1")),
            (
                "malformed_then_valid",
                with_sigs(vec![
                    "garbage".to_owned(),
                    "cache-1:!!!".to_owned(),
                    ":AAAA".to_owned(),
                    "a:b:c".to_owned(),
                    trusted.sign(&info),
                ]),
                Ok("cache-1"),
            ),
            (
                "impostor_then_valid",
                with_sigs(vec![impostor.sign(&info), trusted.sign(&info)]),
                Ok("cache-1"),
            ),
            ("malformed_trusted_only", with_sigs(vec!["cache-1:!!!".to_owned()]), bad("cache-1")),
            ("all_zero_signature", with_sigs(vec![zero_sig]), bad("cache-1")),
            (
                "untrusted_names_deduplicated",
                with_sigs(vec![stranger.sign(&info), stranger.sign(&info), "x".to_owned()]),
                Err(VerifyError::NoTrustedSignature {
                    names_seen: vec!["stranger-1".to_owned(), "x".to_owned()],
                }),
            ),
        ];
        for (name, info, want) in cases {
            assert_eq!(keys.verify(&info).as_deref().map_err(Clone::clone), want, "case {name}");
        }
        let empty = TrustedKeys::default();
        assert!(empty.is_empty());
        assert!(matches!(empty.verify(&good), Err(VerifyError::NoTrustedSignature { .. })));
    }

    #[test]
    fn non_canonical_signature_rejected() {
        // Adding the group order L to S gives a signature that lax verifiers accept and
        // libsodium (and verify_strict) reject.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let k = key("cache-1", 1);
        let keys = TrustedKeys::new(vec![k.public()]).unwrap();
        let info = sample();
        let sig = Signature::parse(&k.sign(&info)).unwrap();
        let mut bytes = *sig.bytes();
        let mut carry = 0u16;
        for (s, l) in bytes[32..].iter_mut().zip(L) {
            let sum = u16::from(*s) + u16::from(l) + carry;
            *s = (sum & 0xff) as u8;
            carry = sum >> 8;
        }
        let mut forged = info.clone();
        forged.signatures = vec![format!("cache-1:{}", BASE64.encode(bytes))];
        assert_eq!(
            keys.verify(&forged),
            Err(VerifyError::BadSignature { key: "cache-1".to_owned() })
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(VerifyError::NoSignatures.to_string(), "narinfo has no signatures");
        assert_eq!(
            VerifyError::NoTrustedSignature { names_seen: vec!["a".into(), "b".into()] }
                .to_string(),
            "no signature by a trusted key (signed by: a, b)"
        );
    }

    proptest! {
        #[test]
        fn signature_parse_never_panics(s in "\\PC{0,120}") {
            let _ = Signature::parse(&s);
        }

        #[test]
        fn trusted_key_parse_never_panics(s in "\\PC{0,80}") {
            let _ = TrustedKey::parse(&s);
            let _ = SigningKey::parse(&s);
        }

        #[test]
        fn key_parse_never_panics_on_random_keys(
            name in "[a-z.-]{1,10}",
            bytes in any::<[u8; 32]>(),
        ) {
            let _ = TrustedKey::parse(&format!("{name}:{}", BASE64.encode(bytes)));
        }

        #[test]
        fn sign_verify_round_trip(seed in any::<[u8; 32]>(), size in 1..u64::MAX) {
            let k = SigningKey::generate("k-1", seed);
            let keys = TrustedKeys::new(vec![k.public()]).unwrap();
            let mut info = sample();
            info.nar_size = size;
            let info = signed_by(&info, &[&k]);
            prop_assert_eq!(keys.verify(&info), Ok("k-1".to_owned()));
            prop_assert_eq!(TrustedKey::parse(&k.to_public_string()).unwrap(), k.public());
        }
    }
}
