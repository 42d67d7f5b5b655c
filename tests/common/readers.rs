//! Jobs reading the store through a handover: each `tests/handover_reader.py` in a mount
//! namespace of its own with a bind mount of the store, reading every file and symlink of a
//! closure again and again, checked against the real /nix/store.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Running readers.
#[derive(Debug)]
pub struct Readers {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Readers {
    /// Starts `n` readers of `closure` (full store paths) through the mount at `mnt`.
    pub fn start(dir: &Path, mnt: &Path, closure: &[String], n: usize) -> Readers {
        let expected = dir.join("expected.txt");
        std::fs::write(&expected, expected_lines(closure)).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/handover_reader.py");
        let children = (0..n)
            .map(|i| {
                Command::new("unshare")
                    .args(["--mount", "--propagation", "private", "python3", script])
                    .arg(mnt)
                    .arg(dir.join(format!("bind{i}")))
                    .arg(&expected)
                    .arg(dir.join(format!("reader{i}.json")))
                    .arg(dir.join("stop"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(dir.join(format!("reader{i}.err"))).unwrap())
                    .spawn()
                    .expect("spawn a reader")
            })
            .collect();
        Readers { children, dir: dir.to_path_buf() }
    }

    /// Reader `i`'s last figures (Null before its first report).
    pub fn status(&self, i: usize) -> Value {
        let text = std::fs::read_to_string(self.dir.join(format!("reader{i}.json")));
        text.ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null)
    }

    /// Reads done by every reader so far.
    pub fn reads(&self) -> u64 {
        (0..self.children.len()).map(|i| self.status(i)["reads"].as_u64().unwrap_or(0)).sum()
    }

    /// Waits until the readers did `more` reads (so a handover hits reading in progress).
    pub fn wait_progress(&mut self, more: u64) {
        let (start, deadline) = (self.reads(), Instant::now() + Duration::from_secs(120));
        while self.reads() < start + more {
            for (i, c) in self.children.iter_mut().enumerate() {
                if let Some(status) = c.try_wait().unwrap() {
                    let err = std::fs::read_to_string(self.dir.join(format!("reader{i}.err")));
                    panic!("reader {i} ended with {status}: {}", err.unwrap_or_default());
                }
            }
            assert!(Instant::now() < deadline, "readers made no progress: stuck?");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the readers after their current round; panics if one does not end within
    /// `timeout` (stuck). Returns each reader's final figures.
    pub fn finish(mut self, timeout: Duration) -> Vec<Value> {
        std::fs::write(self.dir.join("stop"), "").unwrap();
        let deadline = Instant::now() + timeout;
        for (i, c) in self.children.iter_mut().enumerate() {
            loop {
                if let Some(status) = c.try_wait().unwrap() {
                    assert!(status.success(), "reader {i} failed: {status}");
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    panic!("reader {i} is stuck: {}", self_status(&self.dir, i));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        (0..self.children.len()).map(|i| self.status(i)).collect()
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn self_status(dir: &Path, i: usize) -> String {
    std::fs::read_to_string(dir.join(format!("reader{i}.json"))).unwrap_or_default()
}

/// `F <sha256> <rel>` for each file and `L <target> <rel>` for each symlink of `closure`, as
/// the real /nix/store has them.
pub fn expected_lines(closure: &[String]) -> String {
    let mut out = String::new();
    for sp in closure {
        let base = sp.trim_start_matches("/nix/store/");
        walk(Path::new(sp), base, &mut out);
    }
    out
}

fn walk(path: &Path, rel: &str, out: &mut String) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path).unwrap();
        out.push_str(&format!("L\t{}\t{rel}\n", target.display()));
    } else if meta.is_dir() {
        let mut names: Vec<_> =
            std::fs::read_dir(path).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for name in names {
            let name = name.to_string_lossy().into_owned();
            walk(&path.join(&name), &format!("{rel}/{name}"), out);
        }
    } else {
        let mut bytes = Vec::new();
        std::fs::File::open(path).unwrap().read_to_end(&mut bytes).unwrap();
        out.push_str(&format!("F\t{:x}\t{rel}\n", Sha256::digest(&bytes)));
    }
}
