//! Rebuilds the crate when a file under `sql/` changes: the migrations, rollbacks and seed are
//! embedded with `include_dir!`/`include_str!`, and cargo does not see a new file in a directory
//! on its own.

fn main() {
    println!("cargo:rerun-if-changed=sql");
}
