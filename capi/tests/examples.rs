//! The C and C++ examples, compiled against `include/isonvme.h` and the
//! `libisonvme.so` this build made, and run on the simulated controller.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the library (cargo does not for integration tests of a crate
/// without an rlib) into this test's target directory; returns where.
fn library_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            // target/<profile>/deps/examples-<hash>
            let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
            let target_dir = profile_dir.parent().unwrap();
            let release = profile_dir
                .file_name()
                .is_some_and(|name| name == "release");
            let mut cargo = Command::new(env!("CARGO"));
            cargo
                .args(["build", "--lib", "-p", "isonvme-capi", "--locked"])
                .env("CARGO_TARGET_DIR", target_dir);
            if release {
                cargo.arg("--release");
            }
            let status = cargo.status().expect("running cargo build for libisonvme");
            assert!(status.success(), "cargo build -p isonvme-capi failed");
            assert!(
                profile_dir.join("libisonvme.so").exists(),
                "libisonvme.so is not in {}",
                profile_dir.display()
            );
            profile_dir
        })
        .clone()
}

/// Compiles `source` with `compiler` into a temporary executable.
fn build(compiler: &str, source: &str, extra: &[&str], out: &Path) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = library_dir();
    let status = Command::new(compiler)
        .args(extra)
        .arg("-Wall")
        .arg("-Werror")
        .arg("-O2")
        .arg(format!("-I{}", dir.join("include").display()))
        .arg(dir.join(source))
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lisonvme")
        .arg("-o")
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("running {compiler} (install gcc and g++): {e}"));
    assert!(status.success(), "{compiler} {source} failed");
}

#[test]
fn the_c_latency_example_reads_from_an_isolated_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("latency");
    build("cc", "examples/latency.c", &["-std=c11"], &exe);
    let output = Command::new(&exe)
        .args(["sim,size=16M", "2000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("2000 reads in"), "{stdout}");
    assert!(
        stdout.contains("completions reaped on isolated CPUs: 0"),
        "{stdout}"
    );
}

#[test]
fn the_cpp_wrapper_example_writes_reads_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("raii");
    build("c++", "examples/raii.cpp", &["-std=c++17"], &exe);
    let output = Command::new(&exe)
        .args(["sim,size=16M", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("read back and verified"), "{stdout}");
}

#[test]
fn errors_are_codes_with_a_message_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("errors");
    build("cc", "tests/errors.c", &["-std=c11"], &exe);
    let output = Command::new(&exe).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[test]
fn the_installed_library_links_through_pkg_config_shared_and_static() {
    let prefix = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let status = Command::new(root.join("scripts/install-capi.sh"))
        .arg(prefix.path())
        .env("ISONVME_PROFILE", profile_dir.file_name().unwrap())
        .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "install-capi.sh failed");
    let pkg_config = |args: &[&str]| -> Vec<String> {
        let output = Command::new("pkg-config")
            .args(args)
            .arg("isonvme")
            .env("PKG_CONFIG_PATH", prefix.path().join("lib/pkgconfig"))
            .output()
            .unwrap_or_else(|e| panic!("running pkg-config (install pkg-config): {e}"));
        assert!(
            output.status.success(),
            "pkg-config {args:?} isonvme failed"
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/latency.c");
    let archive = prefix.path().join("lib/libisonvme.a");
    // Static: the archive itself, with the system libraries pkg-config
    // lists for static linking (-lisonvme alone would take the .so).
    let static_flags: Vec<String> = pkg_config(&["--static", "--cflags", "--libs"])
        .into_iter()
        .map(|flag| {
            if flag == "-lisonvme" {
                archive.display().to_string()
            } else {
                flag
            }
        })
        .collect();
    let mut shared_flags = pkg_config(&["--cflags", "--libs"]);
    shared_flags.push(format!(
        "-Wl,-rpath,{}",
        prefix.path().join("lib").display()
    ));
    for (kind, flags) in [("shared", shared_flags), ("static", static_flags)] {
        let out = prefix.path().join(format!("latency-{kind}"));
        let status = Command::new("cc")
            .arg("-std=c11")
            .arg(&source)
            .args(&flags)
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cc with pkg-config ({kind}) failed: {flags:?}"
        );
        let needs_so = Command::new("ldd")
            .arg(&out)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("libisonvme.so"))
            .unwrap_or(kind == "shared");
        assert_eq!(needs_so, kind == "shared", "{kind} linking");
        // Not cargo's LD_LIBRARY_PATH: the rpath or the archive must do.
        let output = Command::new(&out)
            .args(["sim,size=16M", "500"])
            .env_remove("LD_LIBRARY_PATH")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{kind}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
