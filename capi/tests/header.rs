//! `include/isonvme.h` is what cbindgen makes of `src/lib.rs` today: a
//! change to the C API without the header fails here. To refresh it:
//! `ISONVME_WRITE_HEADER=1 cargo test -p isonvme-capi --test header`.

use std::path::Path;

#[test]
fn header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap();
    let bindings = cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen reads src/lib.rs");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
    let path = dir.join("include/isonvme.h");
    if std::env::var_os("ISONVME_WRITE_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "capi/include/isonvme.h is out of date with capi/src/lib.rs: run\n  ISONVME_WRITE_HEADER=1 cargo test -p isonvme-capi --test header\nand commit the header"
    );
}
