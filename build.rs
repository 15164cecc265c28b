//! Bakes the libtorch library directory into our binaries' rpath, so
//! `streamcast` (and the test and bench binaries) find libtorch without
//! LD_LIBRARY_PATH. torch-sys reports the directory it linked against
//! through its `links = "tch"` metadata.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Some(dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        let dir = dir.to_string_lossy();
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
