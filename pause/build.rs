//! Link `peapod-pause` as a static, libc-free executable.
//!
//! Only this binary gets these flags (`rustc-link-arg-bin`), so the rest of
//! the workspace links normally.
fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    for arg in [
        // We provide `_start` ourselves and use no C runtime or libc.
        "-nostartfiles",
        "-nostdlib",
        "-static",
        // rustc asks for PIE; nothing would apply relocations without ld.so.
        "-no-pie",
    ] {
        println!("cargo::rustc-link-arg-bin=peapod-pause={arg}");
    }
}
