// `sqlx::migrate!()` embeds migrations/ at compile time; a migration added or changed
// must rebuild the crate (stable Rust cannot track the folder from the macro itself).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
