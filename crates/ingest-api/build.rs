//! Turns `docs/openapi.yaml` (the API description people read and edit) into the JSON that
//! `GET /openapi.json` serves, so the two can never drift apart.

// A build script reports a broken input by panicking: cargo shows the message.
#[expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a build script fails by panicking"
)]
fn main() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.yaml");
    println!("cargo:rerun-if-changed={src}");
    let yaml = std::fs::read_to_string(src).expect("docs/openapi.yaml");
    let doc: serde_json::Value =
        serde_norway::from_str(&yaml).expect("docs/openapi.yaml is valid YAML");
    let out = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("openapi.json");
    std::fs::write(out, serde_json::to_string(&doc).unwrap()).unwrap();
}
