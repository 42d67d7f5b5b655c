//! `storefs index DIR`: the command line of the cache indexer (`crate::index`): flags, the
//! secret key file, progress on stderr, the summary on stdout, exit codes.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{EXIT_OK, EXIT_RUNTIME, EXIT_USAGE};
use crate::config::parse_size;
use crate::index::warm::WarmLists;
use crate::index::{self, IndexSettings, Outcome, Step, Summary};
use crate::nix::file_index::MAX_FRAME_BYTES;
use crate::nix::signature::SigningKey;
use crate::sync::Arc;

/// Without a terminal, one progress line per this many paths.
const PROGRESS_EVERY: usize = 100;
/// `--frame-size`'s default as the help shows it: [`index::DEFAULT_FRAME_BYTES`] (a test ties
/// the two).
const DEFAULT_FRAME_SIZE: &str = "256K";

/// `storefs index`.
#[derive(Debug, Args)]
#[command(after_help = "What it does, for every <hash>.narinfo in DIR:\n  \
    1. reads the NAR (xz, zstd, bzip2 or none) and checks it against NarSize and NarHash;\n  \
    2. writes it again as seekable zstd (nar/<FileHash>.nar.zst): independent frames cut at \
    file boundaries plus a seek table; every zstd decoder, Nix's included, reads it as usual;\n  \
    3. writes <hash>.index beside the narinfo: the tree, each file's SHA-256 and frames, signed \
    with the key over the store path, NarHash and the index's digest;\n  \
    4. points the narinfo's URL, Compression, FileHash and FileSize at the new NAR (Sig lines \
    stay: they do not cover these fields), then removes the old NAR.\n\n\
    Every file is written beside its target, fsynced and renamed, so a narinfo always names a \
    complete NAR, even if the run is killed. A rerun skips paths whose index verifies, so it is \
    safe to run again after a kill or after adding paths. One run per directory at a time.\n\n\
    With --warm-list LOG (a `storefs mount --record-reads LOG` of a typical job), each index also \
    lists the files that job opened and the other paths it used, signed with the rest; a mount \
    fetches them before its readers ask (docs/OPERATIONS.md, \"Warm lists\").\n\n\
    Examples:\n  \
    nix-store --generate-binary-cache-key mycache-1 /etc/nix/cache.sec /etc/nix/cache.pub\n  \
    storefs index /srv/cache --secret-key-file /etc/nix/cache.sec --jobs 8\n  \
    storefs index /srv/cache --secret-key-file /etc/nix/cache.sec --warm-list reads.log")]
pub struct IndexArgs {
    /// The binary cache directory: the one holding nix-cache-info, the .narinfo files and nar/.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Nix secret key file that signs the indexes (`name:base64`, as `nix-store
    /// --generate-binary-cache-key` writes it). Readers trust indexes by its public key.
    #[arg(long, value_name = "FILE")]
    secret_key_file: PathBuf,
    /// Paths indexed at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    jobs: usize,
    /// NAR bytes per frame: small files share a frame, larger ones are split into frames of
    /// this size. Smaller frames let a reader fetch less around a small file but compress
    /// worse and make the index larger.
    #[arg(long, value_name = "SIZE", default_value = DEFAULT_FRAME_SIZE)]
    frame_size: String,
    /// Write warm lists into the indexes: FILE lists files as `/nix/store/<hash>-<name>/<path>`,
    /// one a line, in the order a job opened them (what `storefs mount --record-reads FILE`
    /// writes). A mount fetches a path's warm list in the background from its first lookup,
    /// paced by how far its readers got in the learned order.
    /// Each index gets exactly its path's list (none for a path FILE does not name); an index
    /// that is already current is rewritten only when its list changes.
    #[arg(long, value_name = "FILE")]
    warm_list: Option<PathBuf>,
}

/// Runs `storefs index`.
pub fn run(args: &IndexArgs) -> ExitCode {
    let settings = match settings(args) {
        Ok(s) => s,
        Err(msg) => {
            eprintln!("storefs index: {msg}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let terminal = std::io::stderr().is_terminal();
    let progress = |step: &Step<'_>| print_step(step, terminal);
    let summary = match index::run(&settings, &progress) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("storefs index: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    if terminal {
        eprintln!();
    }
    print_summary(&summary);
    if summary.failed.is_empty() { ExitCode::from(EXIT_OK) } else { ExitCode::from(EXIT_RUNTIME) }
}

fn settings(args: &IndexArgs) -> Result<IndexSettings, String> {
    let file = args.secret_key_file.display();
    let text = std::fs::read_to_string(&args.secret_key_file)
        .map_err(|e| format!("cannot read secret key file {file}: {e}"))?;
    let key = SigningKey::parse(text.trim()).map_err(|e| format!("secret key file {file}: {e}"))?;
    let frame_bytes = parse_size(&args.frame_size)
        .map_err(|e| format!("--frame-size: {e}"))
        .and_then(|n| match n {
            1..=MAX_FRAME_BYTES => Ok(n),
            _ => Err(format!(
                "--frame-size {}: must be between 1 byte and {} MiB",
                args.frame_size,
                MAX_FRAME_BYTES >> 20
            )),
        })?;
    if args.jobs == 0 {
        return Err("--jobs 0: at least one path must run at a time".to_owned());
    }
    if !args.dir.is_dir() {
        return Err(format!("{} is not a directory", args.dir.display()));
    }
    let warm = match &args.warm_list {
        Some(file) => Some(Arc::new(WarmLists::read(file).map_err(|e| e.to_string())?)),
        None => None,
    };
    Ok(IndexSettings {
        dir: args.dir.clone(),
        key,
        jobs: args.jobs,
        frame_bytes,
        zstd_level: index::DEFAULT_ZSTD_LEVEL,
        warm,
    })
}

/// A failure always gets its own line; otherwise a status line redrawn on a terminal, or a
/// line every [`PROGRESS_EVERY`] paths (and at the end) when stderr is a log.
fn print_step(step: &Step<'_>, terminal: bool) {
    let mut err = std::io::stderr().lock();
    if let Err(e) = step.result {
        let clear = if terminal { "\r\x1b[K" } else { "" };
        let _ = writeln!(err, "{clear}storefs index: {}: {e}", step.narinfo);
    }
    let what = match step.result {
        Ok(Outcome::Indexed(_)) => "indexed",
        Ok(Outcome::Skipped) => "already indexed",
        Ok(Outcome::Rewarmed { .. }) => "new warm list for",
        Err(_) => "failed",
    };
    if terminal {
        let _ = write!(err, "\r\x1b[K[{}/{}] {what} {}", step.done, step.total, step.narinfo);
    } else if step.done % PROGRESS_EVERY == 0 || step.done == step.total {
        let _ = writeln!(err, "storefs index: {}/{} paths done", step.done, step.total);
    }
}

fn print_summary(s: &Summary) {
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    println!(
        "indexed {} paths, skipped {} already indexed, {} failed, in {:.2} s",
        s.indexed,
        s.skipped,
        s.failed.len(),
        s.elapsed.as_secs_f64()
    );
    if s.warm_files > 0 || s.rewarmed > 0 {
        println!(
            "warm lists: {} files in the indexes written; {} indexes rewritten for them alone",
            s.warm_files, s.rewarmed
        );
    }
    if s.indexed > 0 {
        println!(
            "nar {} bytes; nar files {} -> {} bytes ({:.3}x); indexes {} bytes ({:.2}% of nar); \
             {} frames",
            s.nar_bytes,
            s.old_file_bytes,
            s.new_file_bytes,
            ratio(s.new_file_bytes, s.old_file_bytes),
            s.index_bytes,
            100.0 * ratio(s.index_bytes, s.nar_bytes),
            s.frames
        );
    }
    for (name, err) in &s.failed {
        println!("failed: {name}: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_frame_size_is_the_indexers() {
        assert_eq!(parse_size(DEFAULT_FRAME_SIZE).unwrap(), index::DEFAULT_FRAME_BYTES);
    }
}
