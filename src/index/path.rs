//! Indexes one store path of a binary cache directory: check its NAR against the narinfo,
//! write it again as seekable zstd, write the signed index, then point the narinfo at the new
//! NAR. Each file is written beside its target and renamed into place after an fsync, in an
//! order that leaves the narinfo pointing at a complete NAR at every instant.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Component, Path, PathBuf};

use super::durable::{self, TempFile};
use super::rewrite::{FileFields, with_file_fields};
use super::{IndexSettings, UrlCounts};
use crate::failpoint;
use crate::nix::file_index::{FileIndex, IndexBuilder, SignedIndex};
use crate::nix::hash::NarHash;
use crate::nix::nar::{ParseError, VisitError, parse};
use crate::nix::narinfo::{self, Compression, NarInfo};
use crate::nix::nixbase32;
use crate::nix::signature::TrustedKeys;
use crate::upstream::decompress::{DecompressError, decoder};

/// Suffix of the index file beside `<hash>.narinfo`.
pub const INDEX_SUFFIX: &str = ".index";

/// What happened to one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its index verifies and its NAR is in place: nothing to do.
    Skipped,
    /// Re-encoded and indexed.
    Indexed(Sizes),
    /// Indexed already; its index written again with the warm list `--warm-list` gives it.
    Rewarmed {
        /// Files in its warm list now.
        warm_files: usize,
    },
}

/// Sizes of one indexed path, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// NarSize.
    pub nar: u64,
    /// The NAR file before (its `FileSize`, or its size on disk).
    pub old_file: u64,
    /// The seekable zstd NAR file.
    pub new_file: u64,
    /// The index file.
    pub index: u64,
    /// Frames written.
    pub frames: u64,
    /// Files in the index's warm list.
    pub warm_files: usize,
}

/// Why a path could not be indexed; each names the file and the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The narinfo is malformed.
    #[error("{}: {source}", file.display())]
    Narinfo {
        /// The narinfo.
        file: PathBuf,
        /// Why.
        #[source]
        source: narinfo::Error,
    },
    /// The URL leaves the cache directory.
    #[error("{}: URL {url:?} is not a relative path inside the cache", file.display())]
    BadUrl {
        /// The narinfo.
        file: PathBuf,
        /// The URL.
        url: String,
    },
    /// The NAR's compression cannot be decoded.
    #[error("{}: {source}", file.display())]
    Decompress {
        /// The NAR file.
        file: PathBuf,
        /// Why.
        #[source]
        source: DecompressError,
    },
    /// The NAR is malformed, or longer than NarSize.
    #[error("{}: {source}", file.display())]
    Nar {
        /// The NAR file.
        file: PathBuf,
        /// Why.
        #[source]
        source: ParseError,
    },
    /// The NAR's size is not NarSize.
    #[error("{}: nar has {found} bytes, the narinfo's NarSize is {expected}", file.display())]
    NarSize {
        /// The NAR file.
        file: PathBuf,
        /// NarSize.
        expected: u64,
        /// The NAR's size.
        found: u64,
    },
    /// The NAR's hash is not NarHash.
    #[error("{}: nar hashes to {found}, the narinfo's NarHash is {expected}", file.display())]
    NarHash {
        /// The NAR file.
        file: PathBuf,
        /// NarHash.
        expected: NarHash,
        /// What it hashes to.
        found: NarHash,
    },
    /// The rewritten narinfo would not name the new NAR, or would sign otherwise (a narinfo
    /// this tool cannot edit line by line); nothing was replaced.
    #[error("{}: rewriting URL, Compression, FileHash and FileSize would change other fields", file.display())]
    Rewrite {
        /// The narinfo.
        file: PathBuf,
    },
    /// Writing the new NAR, the index or the narinfo failed.
    #[error("cannot write {}: {source}", file.display())]
    Write {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Indexes the path of the narinfo `name` in `settings.dir`; see the module docs.
///
/// # Errors
///
/// The narinfo or its NAR is unreadable or does not match, or a write failed. Nothing the
/// narinfo points at has changed then.
pub fn index_path(
    settings: &IndexSettings,
    name: &str,
    urls: &UrlCounts,
) -> Result<Outcome, PathError> {
    let dir = &settings.dir;
    let narinfo_file = dir.join(name);
    let read = |file: &Path| fs::read(file).map_err(|source| read_error(file, source));
    let text = read(&narinfo_file)?;
    let info = NarInfo::parse(&text)
        .map_err(|source| PathError::Narinfo { file: narinfo_file.clone(), source })?;
    let index_file = dir.join(format!("{}{INDEX_SUFFIX}", info.store_path.hash_part()));
    if let Some(indexed) = already_indexed(settings, &index_file, &info) {
        return rewarm(settings, &index_file, indexed);
    }
    let old_nar = nar_file(dir, &narinfo_file, &info.url)?;
    let old_size = fs::metadata(&old_nar).map_err(|source| read_error(&old_nar, source))?.len();

    let nar_dir = dir.join("nar");
    let write_error = |file: &Path| {
        let file = file.to_path_buf();
        move |source| PathError::Write { file, source }
    };
    fs::create_dir_all(&nar_dir).map_err(write_error(&nar_dir))?;
    let mut tmp = TempFile::create(&nar_dir).map_err(write_error(&nar_dir))?;
    let (out, consumed) = {
        let src = File::open(&old_nar).map_err(|source| read_error(&old_nar, source))?;
        let reader = decoder(info.compression, BufReader::new(src))
            .map_err(|source| PathError::Decompress { file: old_nar.clone(), source })?;
        let mut w = BufWriter::with_capacity(1 << 20, tmp.file());
        let mut builder = IndexBuilder::new(&mut w, settings.frame_bytes, settings.zstd_level);
        let consumed = parse(reader, info.nar_size, &mut builder).map_err(|source| {
            match write_failure(&source) {
                Some(e) => PathError::Write { file: nar_dir.clone(), source: e },
                None => PathError::Nar { file: old_nar.clone(), source },
            }
        })?;
        let out = builder
            .finish()
            .map_err(|e| PathError::Write { file: nar_dir.clone(), source: io::Error::other(e) })?;
        w.flush().map_err(write_error(&nar_dir))?;
        (out, consumed)
    };
    if consumed != info.nar_size {
        let (expected, found) = (info.nar_size, consumed);
        return Err(PathError::NarSize { file: old_nar, expected, found });
    }
    if out.nar_hash != info.nar_hash {
        let (expected, found) = (info.nar_hash, out.nar_hash);
        return Err(PathError::NarHash { file: old_nar, expected, found });
    }
    let url = format!("nar/{}.nar.zst", nixbase32::encode(out.file_hash.digest()));
    let new_nar = dir.join(&url);
    tmp.commit(&new_nar).map_err(write_error(&new_nar))?;
    failpoint::hit("index::after_nar_written");

    let (file_hash, file_size) = (out.file_hash, out.file_size);
    let mut index = out.into_index(info.store_path.clone());
    if let Some(lists) = &settings.warm {
        (index.warm, index.warm_paths) = lists.resolve_all(&index);
    }
    let (frames, warm_files) = (index.frames.len() as u64, index.warm.len());
    let index_bytes = SignedIndex::sign(index, &settings.key).to_compressed_bytes();
    durable::replace(&index_file, &index_bytes).map_err(write_error(&index_file))?;

    let fields = FileFields {
        url: url.clone(),
        compression: Compression::Zstd.as_str().to_owned(),
        file_hash: file_hash.to_string(),
        file_size,
    };
    // The narinfo parsed, so it is UTF-8.
    let new_text = with_file_fields(&String::from_utf8_lossy(&text), &fields);
    // What is about to be served must parse, and sign as before (no signed line changed).
    let narinfo_error = |source| PathError::Narinfo { file: narinfo_file.clone(), source };
    let new_info = NarInfo::parse(new_text.as_bytes()).map_err(narinfo_error)?;
    let rewritten = new_info.fingerprint() == info.fingerprint()
        && new_info.signatures == info.signatures
        && new_info.url == url
        && new_info.compression == Compression::Zstd
        && new_info.file_hash.as_deref().and_then(|h| NarHash::parse(h).ok()) == Some(file_hash)
        && new_info.file_size == Some(file_size);
    if !rewritten {
        return Err(PathError::Rewrite { file: narinfo_file });
    }
    durable::replace(&narinfo_file, new_text.as_bytes()).map_err(write_error(&narinfo_file))?;
    failpoint::hit("index::after_narinfo_rename");

    if urls.moved(&info.url, &url) {
        // Unreferenced now; a failure only leaves an unused file behind.
        let _ = fs::remove_file(&old_nar);
    }
    Ok(Outcome::Indexed(Sizes {
        nar: info.nar_size,
        old_file: info.file_size.unwrap_or(old_size),
        new_file: file_size,
        index: index_bytes.len() as u64,
        frames,
        warm_files,
    }))
}

/// A path indexed already: skipped, unless `--warm-list` gives it another warm list than its
/// index has; then only the index is written again, signed anew (the NAR and narinfo stay).
fn rewarm(
    settings: &IndexSettings,
    index_file: &Path,
    mut index: FileIndex,
) -> Result<Outcome, PathError> {
    let Some(lists) = &settings.warm else { return Ok(Outcome::Skipped) };
    let (warm, warm_paths) = lists.resolve_all(&index);
    if warm == index.warm && warm_paths == index.warm_paths {
        return Ok(Outcome::Skipped);
    }
    (index.warm, index.warm_paths) = (warm, warm_paths);
    let warm_files = index.warm.len();
    let bytes = SignedIndex::sign(index, &settings.key).to_compressed_bytes();
    durable::replace(index_file, &bytes)
        .map_err(|source| PathError::Write { file: index_file.to_path_buf(), source })?;
    Ok(Outcome::Rewarmed { warm_files })
}

fn read_error(file: &Path, source: io::Error) -> PathError {
    PathError::Read { file: file.to_path_buf(), source }
}

/// The I/O error of a failed frame write, if that is why the parse stopped (the output disk,
/// not the NAR, is then at fault).
fn write_failure(err: &ParseError) -> Option<io::Error> {
    let ParseError::Visitor(inner) = err else { return None };
    let inner: &VisitError = inner;
    inner.downcast_ref::<io::Error>().map(|e| io::Error::new(e.kind(), e.to_string()))
}

/// The path's index, if it verifies with our own key against the narinfo (which then names
/// the seekable NAR, by `FileHash`) and that NAR is in place with its size.
fn already_indexed(
    settings: &IndexSettings,
    index_file: &Path,
    info: &NarInfo,
) -> Option<FileIndex> {
    let bytes = fs::read(index_file).ok()?;
    let keys = TrustedKeys::new(vec![settings.key.public()]).ok()?;
    let (index, _) = SignedIndex::open(&bytes, &keys, info).ok()?;
    let nar = nar_file(&settings.dir, index_file, &info.url).ok()?;
    fs::metadata(nar).is_ok_and(|m| m.len() == index.nar_file.size).then_some(index)
}

/// The file a narinfo's URL names, which must be a plain relative path inside `dir`.
fn nar_file(dir: &Path, narinfo_file: &Path, url: &str) -> Result<PathBuf, PathError> {
    let rel = Path::new(url);
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain || url.contains("://") || url.contains('?') {
        return Err(PathError::BadUrl { file: narinfo_file.to_path_buf(), url: url.to_owned() });
    }
    Ok(dir.join(rel))
}
