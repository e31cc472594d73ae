//! The wire contract compiles with a stock `protoc` (what clients in other languages use),
//! not only with the pure-Rust compiler the build script runs.
//!
//! Needs `protoc` on PATH (Debian: `apt-get install protobuf-compiler`, plus
//! `libprotobuf-dev` if `/usr/include/google/protobuf/timestamp.proto` is missing).
//! Deliberately not skipped when absent: CI installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use prost_types::FileDescriptorSet;

const PROTOS: [&str; 2] = ["dr/v1/commands.proto", "dr/v1/events.proto"];

fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("proto")
}

/// Runs `protoc` with the crate's proto path (and the system include dir for the
/// well-known types, when present) plus `args`, over both files; panics on failure.
fn protoc(args: &[String]) {
    let mut cmd = Command::new("protoc");
    cmd.arg(format!("--proto_path={}", proto_dir().display()));
    let system_include = Path::new("/usr/include");
    if system_include
        .join("google/protobuf/timestamp.proto")
        .is_file()
    {
        cmd.arg(format!("--proto_path={}", system_include.display()));
    }
    cmd.args(args).args(PROTOS);
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`protoc` is not on PATH. This test checks the .proto files compile with a stock \
             protoc; install it (Debian/Ubuntu: `apt-get install protobuf-compiler libprotobuf-dev`)"
        ),
        Err(e) => panic!("could not run protoc: {e}"),
    };
    assert!(
        out.status.success(),
        "protoc {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn arg(flag: &str, path: &Path) -> String {
    format!("{flag}={}", path.display())
}

#[test]
fn stock_protoc_builds_a_descriptor_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dr.v1.pb");
    protoc(&[
        arg("--descriptor_set_out", &out),
        "--include_imports".into(),
    ]);

    let fds = FileDescriptorSet::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
    let names: Vec<&str> = fds.file.iter().map(|f| f.name()).collect();
    for p in PROTOS.iter().chain(&["google/protobuf/timestamp.proto"]) {
        assert!(names.contains(p), "{p} in {names:?}");
    }
    let events = fds
        .file
        .iter()
        .find(|f| f.name() == "dr/v1/events.proto")
        .unwrap();
    assert_eq!(events.package(), "dr.v1");
    let envelope = events
        .message_type
        .iter()
        .find(|m| m.name() == "EventEnvelope")
        .unwrap();
    let oneof: Vec<&str> = envelope
        .field
        .iter()
        .filter(|f| f.oneof_index.is_some())
        .map(|f| f.name())
        .collect();
    assert_eq!(oneof, drfleet_protocol::events::EVENT_TYPES);
    let commands = fds
        .file
        .iter()
        .find(|f| f.name() == "dr/v1/commands.proto")
        .unwrap();
    assert_eq!(commands.package(), "dr.v1");
    for m in [
        "CommandEnvelope",
        "BackupCommand",
        "RestoreCommand",
        "DrillCommand",
        "VerifyCommand",
    ] {
        assert!(commands.message_type.iter().any(|x| x.name() == m), "{m}");
    }
}

#[test]
fn stock_protoc_generates_python_and_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let py = dir.path().join("python");
    let cpp = dir.path().join("cpp");
    std::fs::create_dir_all(&py).unwrap();
    std::fs::create_dir_all(&cpp).unwrap();
    protoc(&[arg("--python_out", &py), arg("--cpp_out", &cpp)]);

    for f in [
        py.join("dr/v1/commands_pb2.py"),
        py.join("dr/v1/events_pb2.py"),
        cpp.join("dr/v1/commands.pb.h"),
        cpp.join("dr/v1/commands.pb.cc"),
        cpp.join("dr/v1/events.pb.h"),
        cpp.join("dr/v1/events.pb.cc"),
    ] {
        let len = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{} was not generated", f.display());
    }
}
