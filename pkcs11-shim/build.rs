//! Marks the shim DF_1_NODELETE (`-z nodelete`): a `dlclose` by the application (pkcs11-tool,
//! p11-kit and most PKCS#11 consumers unload their module) leaves it mapped. Its exit hook
//! (the goodbye that ends the application's view on the server, registered with `atexit`),
//! its threads' thread-local destructors and any pooled connection thread then never point
//! into unmapped code. Without it, a shim linked by a toolchain whose `atexit` does not tie
//! the hook to the library (zig's, for the glibc 2.17 release build) crashes the application
//! at exit after a dlclose.
fn main() {
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    }
}
