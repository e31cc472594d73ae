//! The README's first command, `scripts/demo`, run as a newcomer would (with the debug
//! binaries `cargo test --workspace` has just built, a smaller data set and its own database
//! and vhost names), and its summary checked: every step happened, the drill passed with
//! measured RTO/RPO, the evidence pack exists and verifies.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn demo_runs_end_to_end_and_prints_its_summary() {
    let root = repo_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    for bin in ["drfleet-worker", "drfleet-scheduler", "drctl"] {
        assert!(
            target.join("debug").join(bin).exists(),
            "target/debug/{bin} is missing: run the workspace's tests (scripts/test.sh), which build it"
        );
    }
    let dir = tempfile_dir();
    let prefix = format!("drtest_demo_{}", std::process::id());
    let out = Command::new(root.join("scripts/demo"))
        .env("DR_DEMO_DIR", &dir)
        .env("DR_DEMO_PREFIX", &prefix)
        .env("DR_DEMO_ROWS", "3000")
        .env("DR_DEMO_PROFILE", "debug")
        .env("DR_DEMO_SKIP_BUILD", "1")
        .env("DR_DEMO_SKIP_INSTALL", "1")
        .env("DR_DEMO_CLEANUP", "1")
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run scripts/demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/demo failed ({}):\n{stdout}\n{stderr}\n{}",
        out.status,
        logs(&dir)
    );
    assert!(stdout.contains("drfleet demo — summary"), "{stdout}");
    for event in [
        "policy_updated",
        "backup_started",
        "backup_completed",
        "verify_completed",
        "restore_initiated",
        "restore_completed",
        "dr_drill_completed",
    ] {
        assert!(
            stdout.contains(event),
            "the summary's events lack {event}:\n{stdout}"
        );
    }
    assert!(stdout.contains("passed=t"), "drill did not pass:\n{stdout}");
    let rto = field(&stdout, "measured RTO");
    let rpo = field(&stdout, "measured RPO");
    assert!(
        rto.split(' ').next().unwrap().parse::<u64>().is_ok()
            && rto.contains("(objective 600000 ms)"),
        "{rto}"
    );
    assert!(
        rpo.split(' ').next().unwrap().parse::<u64>().is_ok(),
        "{rpo}"
    );
    assert!(stdout.contains("audit chain       intact"), "{stdout}");
    assert!(
        stdout.contains("BACKUP_POLICY_EXISTS=COMPLIANT"),
        "{stdout}"
    );
    for f in ["evidence.json", "report.html", "SHA256SUMS"] {
        assert!(
            dir.join("evidence").join(f).exists(),
            "evidence/{f} missing"
        );
    }
    // The secrets file is private and its values never reach the output.
    let secrets = std::fs::read_to_string(dir.join("secrets.env")).unwrap();
    for line in secrets.lines() {
        let value = line.split_once('=').unwrap().1;
        assert!(
            !stdout.contains(value) && !stderr.contains(value),
            "a secret was printed"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("secrets.env"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "secrets.env is readable by others");
    let _ = std::fs::remove_dir_all(&dir);
}

fn field(summary: &str, name: &str) -> String {
    summary
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(name))
        .unwrap_or_else(|| panic!("no `{name}` line in:\n{summary}"))
        .trim()
        .to_string()
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drfleet-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn logs(dir: &Path) -> String {
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("logs")) {
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {}\n", e.path().display()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}
