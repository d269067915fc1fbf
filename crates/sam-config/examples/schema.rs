//! Print the config's JSON Schema (the same output as `sam-train schema`), for refreshing
//! `configs/schema.json` without building the torch-linked binaries:
//! `cargo run -p sam-config --example schema > configs/schema.json`.
fn main() {
    match serde_json::to_string_pretty(&sam_config::json_schema()) {
        Ok(s) => println!("{s}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
