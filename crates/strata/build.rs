//! Sets `STRATA_VERSION` for `strata --version`: the crate version and the git commit it was
//! built from, e.g. `0.1.0 (3f2a9c1d7e0b 2026-12-02)`, with `-dirty` for uncommitted changes.
//! Uses only the local git (no network); without git or a `.git` folder it says
//! "commit unknown", unless `STRATA_GIT_COMMIT` is set.

use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .current_dir(dir)
        // `git status` must not rewrite .git/index, which would make this script run again.
        .env("GIT_OPTIONAL_LOCKS", "0")
        .args(args)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from);
    println!("cargo:rerun-if-env-changed=STRATA_GIT_COMMIT");
    let commit = std::env::var("STRATA_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let dir = dir.as_ref().ok()?;
            let hash = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
            // Rebuild when HEAD moves or the index changes; watch only files that exist (a
            // missing one would rerun this script on every build).
            let git_dir = git(dir, &["rev-parse", "--absolute-git-dir"]).unwrap_or_default();
            let mut watched = vec![format!("{git_dir}/HEAD"), format!("{git_dir}/index")];
            if let Some(head_ref) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
                watched.push(format!("{git_dir}/{head_ref}"));
            }
            for path in watched.iter().filter(|p| Path::new(p).is_file()) {
                println!("cargo:rerun-if-changed={path}");
            }
            let dirty = match git(dir, &["status", "--porcelain", "--untracked-files=no"]) {
                Some(changes) if !changes.is_empty() => "-dirty",
                _ => "",
            };
            let date = git(dir, &["log", "-1", "--format=%cs"])
                .map(|d| format!(" {d}"))
                .unwrap_or_default();
            Some(format!("{hash}{dirty}{date}"))
        })
        .unwrap_or_else(|| "commit unknown".into());
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_else(|_| "0.0.0".into());
    println!("cargo:rustc-env=STRATA_VERSION={version} ({commit})");
}
