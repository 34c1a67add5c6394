//! The two ways to build the router's image agree with each other and with the installer: the
//! Dockerfile at the repository root and `deploy/image/build.sh` give the same user, entrypoint
//! and version, and the installer's default image carries that version.

use std::path::PathBuf;

fn repository_file(path: &str) -> String {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The value after `prefix` on the line that starts with it.
fn after<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with `{prefix}`"))
        .trim()
}

#[test]
fn the_dockerfile_and_build_sh_make_the_same_image_of_this_version() {
    let dockerfile = repository_file("Dockerfile");
    let build = repository_file("deploy/image/build.sh");
    // build.sh reads the router's version where this does.
    let manifest = repository_file("Cargo.toml");
    let version = after(&manifest, "version = ").trim_matches('"');
    assert_eq!(
        version,
        env!("CARGO_PKG_VERSION"),
        "router and installer versions"
    );

    assert_eq!(after(&dockerfile, "ARG VERSION="), version);
    assert!(
        scoregate_ext::ops::default_image().ends_with(&format!(":{version}")),
        "{}",
        scoregate_ext::ops::default_image()
    );

    assert_eq!(after(&dockerfile, "USER "), "65532:65532");
    assert_eq!(
        after(&build, "--config.user ").trim_end_matches(" \\"),
        "65532:65532"
    );
    assert_eq!(
        after(&dockerfile, "ENTRYPOINT "),
        r#"["/usr/local/bin/scoregate"]"#
    );
    assert_eq!(
        after(&build, "--config.entrypoint ").trim_end_matches(" \\"),
        "/usr/local/bin/scoregate"
    );
    // Both assemble the root filesystem with the same script.
    assert!(dockerfile.contains("rootfs.sh /rootfs /scoregate"));
    assert!(build.contains("deploy/image/rootfs.sh \"$work/rootfs\" \"$binary\""));
}
