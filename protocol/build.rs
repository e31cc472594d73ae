//! Compiles the wire contract with protox (pure Rust), so no system `protoc` is needed.
fn main() {
    let files = ["proto/dr/v1/commands.proto", "proto/dr/v1/events.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"]).expect("the .proto files compile");
    prost_build::Config::new()
        .enable_type_names()
        .compile_fds(fds)
        .expect("prost-build generates the types");
}
