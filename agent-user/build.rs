//! Embeds the eBPF object that `cargo xtask build` compiled. Without one (a
//! plain `cargo test` of the pure modules), an empty placeholder is embedded
//! and the agent refuses to load, saying how to build it.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=HITCOUNT_EBPF_OBJECT");
    let path = match env::var("HITCOUNT_EBPF_OBJECT") {
        Ok(p) if !p.is_empty() => {
            println!("cargo:rerun-if-changed={p}");
            PathBuf::from(p)
        }
        _ => {
            let p = PathBuf::from(env::var("OUT_DIR").unwrap()).join("no-ebpf-object");
            fs::write(&p, b"").unwrap();
            p
        }
    };
    println!("cargo:rustc-env=HITCOUNT_EBPF_OBJECT_PATH={}", path.display());
}
