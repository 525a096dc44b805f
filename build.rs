//! Build script: records the commit and the target triple for `fluidity --version`.
//!
//! Sets `FLUIDITY_COMMIT` (the short hash of HEAD, "unknown" when the source is not a git checkout, as in a crate
//! tarball or a container build without `.git`) and `FLUIDITY_TARGET`. It asks cargo to run it again only when HEAD
//! or the branch it points to moves, so ordinary builds do not rerun it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What the commit is called when git cannot say.
const UNKNOWN: &str = "unknown";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = git(&manifest_dir, &["rev-parse", "--short", "HEAD"]);
    if commit.is_some() {
        for path in watched_git_files(&manifest_dir) {
            println!("cargo::rerun-if-changed={}", path.display());
        }
    }
    let target = std::env::var("TARGET").unwrap_or_else(|_| UNKNOWN.to_string());
    println!(
        "cargo::rustc-env=FLUIDITY_COMMIT={}",
        commit.as_deref().unwrap_or(UNKNOWN)
    );
    println!("cargo::rustc-env=FLUIDITY_TARGET={target}");
}

/// Runs git in `dir` and returns its trimmed output, or `None` when git is missing, fails, or prints nothing.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_string())
}

/// The files whose change means HEAD names another commit: HEAD itself, the loose ref of the branch it points to
/// and `packed-refs`. Asked of git, so worktrees (where HEAD and the refs live in different folders) work too.
/// Only files that exist are returned: cargo reruns a build script on every build while a watched file is missing.
fn watched_git_files(dir: &Path) -> Vec<PathBuf> {
    let mut names = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        names.push(branch);
    }
    names
        .iter()
        .filter_map(|name| {
            git(
                dir,
                &["rev-parse", "--path-format=absolute", "--git-path", name],
            )
        })
        .map(PathBuf::from)
        .filter(|path| path.exists())
        .collect()
}
