//! Compiles the XDP steering program (`bpf/steer.c`) into `$OUT_DIR/steer.o`,
//! which `src/steer.rs` embeds, and the node-traffic socket programs
//! (`bpf/host_sock.c`, `-mcpu=v3` for the atomic fetch-and-add of their
//! cursor) into `$OUT_DIR/host_sock.o`, which `src/host_sock.rs` embeds. Needs clang with the BPF target and the
//! libbpf headers (`bpf/bpf_helpers.h`): `scripts/deps.sh` installs them.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SRC: &str = "bpf/steer.c";
const HOST_SRC: &str = "bpf/host_sock.c";
const HINT: &str = "install clang llvm libbpf-dev: scripts/deps.sh";

fn main() {
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed={HOST_SRC}");
    println!("cargo:rerun-if-changed=bpf/fastpath.h");
    println!("cargo:rerun-if-changed=bpf/ranges.h");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CLANG");

    compile(SRC, "steer.o", &[]);
    compile(HOST_SRC, "host_sock.o", &["-mcpu=v3"]);
}

/// Compiles `src` (relative to the crate) into `$OUT_DIR/obj`.
fn compile(src_rel: &str, obj: &str, extra: &[&str]) {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join(src_rel);
    let obj = out.join(obj);
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());

    // <asm/types.h> lives under the multiarch include directory on Debian.
    let multiarch = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{}-linux-gnu", env::consts::ARCH));

    let output = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .args(extra)
        .arg(format!("-I/usr/include/{multiarch}"))
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{clang}` to build {src_rel}: {e}; {HINT}"));
    if !output.status.success() {
        panic!(
            "`{clang}` failed to compile {src_rel} ({}):\n{}\n{HINT}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
