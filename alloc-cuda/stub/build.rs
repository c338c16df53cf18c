//! Compiles `libcuda_stub.c` into two shared libraries named `libcuda.so`
//! (with and without the virtual-memory symbols) under `OUT_DIR`, and passes
//! their paths to the crate as `STUB_LIBCUDA_VM` and `STUB_LIBCUDA_NO_VM`
//! (empty for targets other than Linux, where nothing is compiled).

use std::path::{Path, PathBuf};
use std::process::Command;

fn build(out: &Path, variant: &str, defines: &[&str]) -> PathBuf {
    let dir = out.join(variant);
    std::fs::create_dir_all(&dir).expect("create the stub's directory");
    let lib = dir.join("libcuda.so");
    // `cc` finds the compiler and flags for the target (CC, CFLAGS, the
    // toolchain defaults); it builds static archives, so the shared library
    // is linked with the compiler it found.
    let compiler = cc::Build::new().pic(true).opt_level(1).get_compiler();
    let mut cmd: Command = compiler.to_command();
    cmd.args(["-shared", "-Wl,-soname,libcuda.so", "-o"])
        .arg(&lib)
        .args(defines)
        .arg("libcuda_stub.c")
        .arg("-lpthread");
    let status = cmd.status().expect("run the C compiler for libcuda_stub.c");
    assert!(
        status.success(),
        "compiling libcuda_stub.c failed: {status}"
    );
    lib
}

fn main() {
    println!("cargo::rerun-if-changed=libcuda_stub.c");
    println!("cargo::rerun-if-changed=build.rs");
    // The stub is a Linux shared library (ELF soname, Linux mmap flags);
    // other targets get no stub, and `stub()` says so if a test asks.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        println!("cargo::rustc-env=STUB_LIBCUDA_VM=");
        println!("cargo::rustc-env=STUB_LIBCUDA_NO_VM=");
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let vm = build(&out, "vm", &[]);
    let no_vm = build(&out, "no-vm", &["-DSTUB_NO_VM"]);
    println!("cargo::rustc-env=STUB_LIBCUDA_VM={}", vm.display());
    println!("cargo::rustc-env=STUB_LIBCUDA_NO_VM={}", no_vm.display());
}
