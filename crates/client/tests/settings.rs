//! Settings files on disk: search order, errors naming file and line, permissions.
//! The environment is passed as a function, never changed: tests run in parallel.

use std::ffi::OsString;
use std::fs;
use std::path::Path;

use keep_client::{ClusterSettings, Error};

const TOKEN: &str = "v2/zzzzz-gj3su-077z32aux8dg2s1/settingstestsecret0123456789";
const KEY: &str = "settingstestsigningkey0123456789";

fn env_of(vars: Vec<(&'static str, OsString)>) -> impl Fn(&str) -> Option<OsString> {
    move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

#[test]
fn name_is_searched_in_xdg_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let sys = tmp.path().join("sys");
    write(
        &sys.join("arvados/src.conf"),
        "ARVADOS_API_HOST=system.example\n",
    );
    let env = env_of(vec![
        ("HOME", home.clone().into()),
        ("XDG_CONFIG_DIRS", sys.clone().into()),
    ]);
    // Only the system dir has it.
    let s = ClusterSettings::load_with_env("src", &env).unwrap();
    assert_eq!(s.api_host.as_deref(), Some("system.example"));
    assert_eq!(s.path.as_deref(), Some(&*sys.join("arvados/src.conf")));

    // The user's file wins; `src.conf` names the same file.
    write(
        &home.join(".config/arvados/src.conf"),
        "# user file\nARVADOS_API_HOST=user.example\n",
    );
    for name in ["src", "src.conf"] {
        let s = ClusterSettings::load_with_env(name, &env).unwrap();
        assert_eq!(s.api_host.as_deref(), Some("user.example"), "{name}");
    }

    // XDG_CONFIG_HOME replaces ~/.config.
    let xdg = tmp.path().join("xdg");
    write(
        &xdg.join("arvados/src.conf"),
        "ARVADOS_API_HOST=xdg.example\n",
    );
    let env2 = env_of(vec![
        ("HOME", home.clone().into()),
        ("XDG_CONFIG_HOME", xdg.clone().into()),
        ("XDG_CONFIG_DIRS", sys.clone().into()),
    ]);
    let s = ClusterSettings::load_with_env("src", &env2).unwrap();
    assert_eq!(s.api_host.as_deref(), Some("xdg.example"));
}

#[test]
fn missing_name_lists_where_it_looked() {
    let tmp = tempfile::tempdir().unwrap();
    let env = env_of(vec![
        ("HOME", tmp.path().into()),
        ("XDG_CONFIG_DIRS", tmp.path().join("etc").into()),
    ]);
    let e = ClusterSettings::load_with_env("nosuch", &env).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(".config/arvados/nosuch.conf"), "{msg}");
    assert!(msg.contains("etc/arvados/nosuch.conf"), "{msg}");
    assert!(matches!(e, Error::Settings { .. }));
}

#[test]
fn path_with_slash_is_literal() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("cluster.conf");
    write(
        &p,
        &format!(
            "# comment without equals sign\r\n\r\nARVADOS_API_HOST=zzzzz.example:443\r\nARVADOS_API_TOKEN={TOKEN}\r\nARVADOS_API_HOST_INSECURE=true\r\nARVADOS_BLOB_SIGNING_KEY={KEY}\r\n"
        ),
    );
    let s = ClusterSettings::load_with_env(p.to_str().unwrap(), &env_of(vec![])).unwrap();
    assert_eq!(s.api_host.as_deref(), Some("zzzzz.example:443"));
    assert_eq!(s.api_token.as_ref().unwrap().expose(), TOKEN);
    assert!(s.insecure);
    assert!(s.blob_signing_key.is_some());
    let dbg = format!("{s:?}");
    assert!(
        !dbg.contains("settingstestsecret") && !dbg.contains(KEY),
        "{dbg}"
    );

    let e = ClusterSettings::load_with_env(
        tmp.path().join("absent.conf").to_str().unwrap(),
        &env_of(vec![]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("absent.conf"), "{e}");
}

#[test]
fn malformed_files_name_file_and_line_but_not_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.conf");
    // A token pasted without its key on line 3.
    write(&p, &format!("ARVADOS_API_HOST=h\n# ok\n{TOKEN}\n"));
    let e = ClusterSettings::load_with_env(p.to_str().unwrap(), &env_of(vec![])).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("{}:3: ", p.display())), "{msg}");
    assert!(!msg.contains("settingstestsecret"), "{msg}");
    assert!(!format!("{e:?}").contains("settingstestsecret"));

    write(
        &p,
        "ARVADOS_API_HOST=h\r\nARVADOS_API_HOST_INSECURE=sometimes\r\n",
    );
    let e = ClusterSettings::load_with_env(p.to_str().unwrap(), &env_of(vec![])).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("{}:2: ", p.display())), "{msg}");
    assert!(msg.contains("sometimes"), "{msg}");
}

#[cfg(unix)]
#[test]
fn signing_key_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("src.conf");
    write(&p, &format!("ARVADOS_BLOB_SIGNING_KEY={KEY}\n"));
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    let s = ClusterSettings::load_with_env(p.to_str().unwrap(), &env_of(vec![])).unwrap();
    assert!(s.signing_key_readable_by_others());
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(!s.signing_key_readable_by_others());

    let q = tmp.path().join("dst.conf");
    write(&q, "ARVADOS_API_HOST=h\n");
    fs::set_permissions(&q, fs::Permissions::from_mode(0o644)).unwrap();
    let s = ClusterSettings::load_with_env(q.to_str().unwrap(), &env_of(vec![])).unwrap();
    assert!(
        !s.signing_key_readable_by_others(),
        "no key, nothing to warn about"
    );
}
