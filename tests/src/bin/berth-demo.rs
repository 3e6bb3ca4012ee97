//! `cargo xtask demo`: a guided run of berth on the test topology.
fn main() {
    println!("demo not wired yet");
}
