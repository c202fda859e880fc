use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use nix::sys::signal::Signal;

use signet_identity::{Bundle, BundleSet, TrustDomain, X509Svid};
use signet_testkit::pki::{Leaf, TestCa};

use super::config::{DEFAULT_TIMEOUT, parse_mode, parse_signal};
use super::reload::{run_cmd, send_signal};
use super::*;

fn parse(toml_text: &str) -> anyhow::Result<HelperConfig> {
    let file: HelperSettings = toml::from_str(toml_text).map_err(|e| anyhow!("{e}"))?;
    HelperConfig::try_from(file)
}

fn err(toml_text: &str) -> String {
    format!("{:#}", parse(toml_text).unwrap_err())
}

#[test]
fn defaults_are_the_spiffe_helper_names_and_secure_modes() {
    let c = parse(r#"dir = "/run/certs""#).unwrap();
    assert_eq!(c.dir, PathBuf::from("/run/certs"));
    assert_eq!(
        (
            c.svid_file.as_str(),
            c.key_file.as_str(),
            c.bundle_file.as_str()
        ),
        ("svid.pem", "svid_key.pem", "bundle.pem")
    );
    assert_eq!((c.cert_mode, c.key_mode), (0o644, 0o600));
    assert_eq!(c.owner, Owner::default());
    assert!(c.cmd.is_none() && c.signal.is_none() && c.jwts.is_empty());
    assert!(!c.once && !c.include_federated);
    assert_eq!(c.timeout, DEFAULT_TIMEOUT);
}

#[test]
fn the_postgres_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/postgres");
    for name in ["db-helper.toml", "app-helper.toml"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        // The postgres user may not exist where the unit tests run.
        let text = text.replace("owner = \"postgres\"", "owner = \"0\"");
        let c = parse(&text).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(c.key_mode, 0o600, "{name}");
    }
    let db = parse(
        &std::fs::read_to_string(dir.join("db-helper.toml"))
            .unwrap()
            .replace("owner = \"postgres\"", "owner = \"0\""),
    )
    .unwrap();
    assert_eq!(
        db.signal,
        Some((
            Signal::SIGHUP,
            PathBuf::from("/var/lib/postgresql/15/main/postmaster.pid")
        ))
    );
}

#[test]
fn unknown_keys_are_named() {
    let e = err("dir = \"/x\"\nkey_fle = \"k.pem\"\n");
    assert!(e.contains("unknown field `key_fle`"), "{e}");
}

#[test]
fn wrong_types_are_named() {
    let e = err("dir = \"/x\"\nonce = \"yes\"\n");
    assert!(e.contains("once"), "{e}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let e = err(r#"
svid_file = "../svid.pem"
key_file = "bundle.pem"
cert_mode = "0999"
key_mode = "0644"
signal = "NOPE"
pid_file = "/run/x.pid"
cmd_args = "reload"
timeout = "soon"
health_listen = "localhost"
jwt_file = "t.token"
"#);
    for want in [
        "dir is required",
        "svid_file \"../svid.pem\": must be a file name, not a path",
        "bundle_file \"bundle.pem\": another file has the same name",
        "cert_mode \"0999\": not an octal mode",
        "key_mode \"0644\": other users could use the private key",
        "signal \"NOPE\": not a signal name",
        "cmd_args is set but there is no cmd",
        "timeout \"soon\"",
        "health_listen \"localhost\"",
        "jwt_file is set but there is no jwt_audience",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[test]
fn modes_parse_as_octal_and_must_let_the_owner_read() {
    assert_eq!(parse_mode("0644"), Ok(0o644));
    assert_eq!(parse_mode("640"), Ok(0o640));
    assert_eq!(parse_mode("0o600"), Ok(0o600));
    assert!(parse_mode("1777").is_err(), "no sticky or setuid bits");
    assert!(parse_mode("rw-r--r--").is_err());
    assert!(parse_mode("").is_err());
    let c = parse("dir = \"/x\"\ncert_mode = \"0640\"\nkey_mode = \"0640\"\n").unwrap();
    assert_eq!((c.cert_mode, c.key_mode), (0o640, 0o640));
    let e = err("dir = \"/x\"\ncert_mode = \"0044\"\n");
    assert!(e.contains("the owner must be able to read"), "{e}");
    let e = err("dir = \"/x\"\nkey_mode = \"0604\"\n");
    assert!(e.contains("other users could use"), "{e}");
}

#[test]
fn signal_and_pid_file_come_together() {
    let c = parse("dir = \"/x\"\nsignal = \"hup\"\npid_file = \"/d/postmaster.pid\"\n").unwrap();
    assert_eq!(
        c.signal,
        Some((Signal::SIGHUP, PathBuf::from("/d/postmaster.pid")))
    );
    assert!(err("dir = \"/x\"\nsignal = \"HUP\"\n").contains("signal needs pid_file"));
    assert!(err("dir = \"/x\"\npid_file = \"/p\"\n").contains("pid_file needs signal"));
    assert_eq!(parse_signal("SIGUSR1"), Ok(Signal::SIGUSR1));
    assert_eq!(parse_signal("1"), Ok(Signal::SIGHUP));
    assert!(parse_signal("999").is_err());
}

#[test]
fn cmd_args_are_a_line_or_a_list() {
    let c =
        parse("dir = \"/x\"\ncmd = \"pg_ctl\"\ncmd_args = \"reload  -D /var/lib/pg\"\n").unwrap();
    assert_eq!(
        c.cmd,
        Some((
            "pg_ctl".to_string(),
            vec!["reload".into(), "-D".into(), "/var/lib/pg".into()]
        ))
    );
    let c = parse("dir = \"/x\"\ncmd = \"sh\"\ncmd_args = [\"-c\", \"echo a b\"]\n").unwrap();
    assert_eq!(c.cmd.unwrap().1, vec!["-c".to_string(), "echo a b".into()]);
    assert!(err("dir = \"/x\"\ncmd = \" \"\n").contains("cmd is empty"));
}

#[test]
fn jwt_files_are_one_per_audience() {
    let c = parse("dir = \"/x\"\njwt_audience = [\"db\"]\n").unwrap();
    assert_eq!(
        c.jwts,
        vec![JwtTarget {
            audience: "db".into(),
            file: "jwt_svid.token".into()
        }]
    );
    let c = parse("dir = \"/x\"\njwt_audience = [\"db\"]\njwt_file = \"db.jwt\"\n").unwrap();
    assert_eq!(c.jwts[0].file, "db.jwt");
    let c =
        parse("dir = \"/x\"\njwt_audience = [\"db\", \"https://api.example.org/v1\"]\n").unwrap();
    let files: Vec<_> = c.jwts.iter().map(|j| j.file.as_str()).collect();
    assert_eq!(
        files,
        [
            "jwt_svid.db.token",
            "jwt_svid.https___api.example.org_v1.token"
        ]
    );
    let e = err("dir = \"/x\"\njwt_audience = [\"a\", \"b\"]\njwt_file = \"t\"\n");
    assert!(
        e.contains("jwt_file names one file but there are 2 audiences"),
        "{e}"
    );
    let e = err("dir = \"/x\"\njwt_audience = [\"a/b\", \"a:b\"]\n");
    assert!(e.contains("another file has the same name"), "{e}");
    let e = err("dir = \"/x\"\njwt_audience = [\"\"]\n");
    assert!(e.contains("an audience is empty"), "{e}");
}

#[test]
fn owner_and_group_take_names_or_numbers() {
    let c = parse("dir = \"/x\"\nowner = \"root\"\ngroup = \"4242\"\n").unwrap();
    assert_eq!(
        c.owner,
        Owner {
            uid: Some(0),
            gid: Some(4242)
        }
    );
    let e =
        err("dir = \"/x\"\nowner = \"no-such-user-signet\"\ngroup = \"no-such-group-signet\"\n");
    assert!(
        e.contains("owner \"no-such-user-signet\": no such user"),
        "{e}"
    );
    assert!(
        e.contains("group \"no-such-group-signet\": no such group"),
        "{e}"
    );
}

#[test]
fn flags_override_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("helper.toml");
    std::fs::write(
        &path,
        "dir = \"/file\"\nsocket = \"/file.sock\"\njwt_audience = [\"a\"]\ncert_mode = \"0640\"\n",
    )
    .unwrap();
    let flags = HelperSettings {
        dir: Some("/flag".into()),
        agent_socket: Some("/flag.sock".into()),
        jwt_audience: vec!["b".into()],
        once: true,
        ..HelperSettings::default()
    };
    let args = HelperArgs {
        config: Some(path),
        check_config: false,
        output: Output::Text,
        settings: flags,
    };
    let (c, _, _) = args.resolve().unwrap();
    assert_eq!(c.dir, PathBuf::from("/flag"));
    assert_eq!(c.agent_socket.client_path(), PathBuf::from("/flag.sock"));
    assert_eq!(c.jwts[0].audience, "b");
    assert_eq!(c.cert_mode, 0o640);
    assert!(c.once);
    // Keys no flag gave come from the file, whatever their type.
    let file_only = HelperArgs {
        config: args_path(&tmp),
        check_config: false,
        output: Output::Text,
        settings: HelperSettings::default(),
    };
    let (c, _, _) = file_only.resolve().unwrap();
    assert_eq!(c.dir, PathBuf::from("/file"));
    assert_eq!(c.jwts[0].audience, "a");
    assert!(!c.once);
}

fn args_path(tmp: &tempfile::TempDir) -> Option<PathBuf> {
    Some(tmp.path().join("helper.toml"))
}

#[test]
fn a_missing_directory_or_a_file_is_named_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let e = format!("{:#}", probe_dir(&missing, Owner::default()).unwrap_err());
    assert!(e.contains(&missing.display().to_string()), "{e}");
    assert!(e.contains("No such file or directory"), "{e}");
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = format!("{:#}", probe_dir(&file, Owner::default()).unwrap_err());
    assert!(e.contains("not a directory"), "{e}");
    probe_dir(tmp.path(), Owner::default()).unwrap();
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "the probe file is removed"
    );
}

#[test]
fn an_unwritable_directory_is_named_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let result = probe_dir(&ro, Owner::default());
    if nix::unistd::geteuid().is_root() {
        // Root ignores permission bits: nothing to refuse.
        assert!(result.is_ok());
        eprintln!("the refusal half of this test needs a non-root user");
    } else {
        let e = format!("{:#}", result.unwrap_err());
        assert!(e.contains(&ro.display().to_string()), "{e}");
        assert!(e.contains("Permission denied"), "{e}");
        let other = Owner {
            uid: Some(0),
            gid: None,
        };
        let e = format!("{:#}", probe_dir(tmp.path(), other).unwrap_err());
        assert!(e.contains("changing the owner needs root"), "{e}");
    }
}

/// An X509-SVID for `id` from a throwaway CA (the helper does not verify
/// trust).
fn svid(id: &str) -> X509Svid {
    let leaf = TestCa::new("svid-ca").leaf(&Leaf {
        uris: &[id],
        ..Leaf::default()
    });
    X509Svid::from_pem(leaf.pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap()
}

fn bundle(td: &str) -> Bundle {
    let mut b = Bundle::new(TrustDomain::parse(td).unwrap());
    b.add_x509_authority(TestCa::for_trust_domain(td).der);
    b
}

fn context(svids: Vec<X509Svid>) -> (X509Context, Bundle, Bundle) {
    let own = bundle("example.org");
    let fed = bundle("partner.test");
    let mut bundles = BundleSet::new();
    bundles.insert(fed.clone());
    bundles.insert(own.clone());
    (X509Context { svids, bundles }, own, fed)
}

#[test]
fn x509_files_are_written_with_their_modes_and_only_when_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = parse(&format!("dir = \"{}\"", tmp.path().display())).unwrap();
    let db = svid("spiffe://example.org/db");
    let (ctx, own, fed) = context(vec![db.clone()]);

    let w = write_x509(&config, &ctx, None).unwrap().unwrap();
    assert_eq!(w.spiffe_id, "spiffe://example.org/db");
    assert_eq!(w.serial, db.serial());
    let read = |name: &str| std::fs::read_to_string(tmp.path().join(name)).unwrap();
    let mode = |name: &str| {
        std::fs::metadata(tmp.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(read("svid.pem"), db.chain_pem());
    assert_eq!(read("svid_key.pem"), *db.private_key().to_pem());
    assert_eq!(read("bundle.pem"), own.x509_pem(), "own trust domain only");
    assert_eq!(
        (mode("svid.pem"), mode("svid_key.pem"), mode("bundle.pem")),
        (0o644, 0o600, 0o644)
    );
    let parsed =
        X509Svid::from_pem(read("svid.pem").as_bytes(), read("svid_key.pem").as_bytes()).unwrap();
    assert_eq!(parsed.serial(), db.serial());

    // The same state again writes nothing.
    std::fs::remove_file(tmp.path().join("bundle.pem")).unwrap();
    assert!(write_x509(&config, &ctx, Some(&w)).unwrap().is_none());
    assert!(!tmp.path().join("bundle.pem").exists());

    // Federated bundles on request, own first; configured names and modes.
    config.include_federated = true;
    config.svid_file = "server.crt".into();
    config.key_file = "server.key".into();
    config.cert_mode = 0o640;
    config.key_mode = 0o400;
    write_x509(&config, &ctx, Some(&w)).unwrap().unwrap();
    assert_eq!(
        read("bundle.pem"),
        format!("{}{}", own.x509_pem(), fed.x509_pem())
    );
    assert_eq!((mode("server.crt"), mode("server.key")), (0o640, 0o400));
    let names: BTreeSet<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(
            [
                "bundle.pem",
                "server.crt",
                "server.key",
                "svid.pem",
                "svid_key.pem"
            ]
            .map(String::from)
        ),
        "no temp files are left behind"
    );
}

#[test]
fn the_chosen_svid_is_written_or_the_offered_ones_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = parse(&format!("dir = \"{}\"", tmp.path().display())).unwrap();
    let (ctx, _, _) = context(vec![
        svid("spiffe://example.org/a"),
        svid("spiffe://example.org/b"),
    ]);
    config.svid_id = Some("spiffe://example.org/b".into());
    let w = write_x509(&config, &ctx, None).unwrap().unwrap();
    assert_eq!(w.spiffe_id, "spiffe://example.org/b");
    config.svid_id = Some("spiffe://example.org/c".into());
    let e = format!("{:#}", write_x509(&config, &ctx, None).unwrap_err());
    assert!(
        e.contains("no SVID for svid_id spiffe://example.org/c")
            && e.contains("spiffe://example.org/a, spiffe://example.org/b"),
        "{e}"
    );
}

#[test]
fn files_go_to_the_owner_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = parse(&format!("dir = \"{}\"", tmp.path().display())).unwrap();
    let me = std::fs::metadata(tmp.path()).unwrap();
    config.owner = Owner {
        uid: Some(me.uid()),
        gid: Some(me.gid()),
    };
    if nix::unistd::geteuid().is_root() {
        config.owner.uid = Some(65534);
    }
    let (ctx, _, _) = context(vec![svid("spiffe://example.org/db")]);
    write_x509(&config, &ctx, None).unwrap().unwrap();
    let key = std::fs::metadata(tmp.path().join("svid_key.pem")).unwrap();
    assert_eq!(Some(key.uid()), config.owner.uid);
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
}

#[test]
fn an_unwritable_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let config = parse(&format!("dir = \"{}\"", tmp.path().join("gone").display())).unwrap();
    let (ctx, _, _) = context(vec![svid("spiffe://example.org/db")]);
    let e = format!("{:#}", write_x509(&config, &ctx, None).unwrap_err());
    assert!(
        e.contains(&format!(
            "cannot write {}",
            tmp.path().join("gone/bundle.pem").display()
        )),
        "{e}"
    );
    assert!(e.contains("No such file or directory"), "{e}");
}

#[test]
fn the_signal_goes_to_the_pid_in_the_pid_file() {
    let tmp = tempfile::tempdir().unwrap();
    let pid_file = tmp.path().join("app.pid");
    let e = send_signal(Signal::SIGHUP, &pid_file, None).unwrap_err();
    assert!(e.contains("cannot read it"), "{e}");
    std::fs::write(&pid_file, "not a pid\n").unwrap();
    let e = send_signal(Signal::SIGHUP, &pid_file, None).unwrap_err();
    assert!(e.contains("not a pid"), "{e}");

    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    // postmaster.pid style: the pid first, other lines after.
    std::fs::write(&pid_file, format!("{}\n/var/lib/data\n", child.id())).unwrap();
    let done = send_signal(Signal::SIGTERM, &pid_file, None).unwrap();
    assert!(done.contains(&child.id().to_string()), "{done}");
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
}

#[tokio::test]
async fn the_reload_command_reports_its_outcome() {
    assert!(run_cmd("true", &[]).await.is_ok());
    let e = run_cmd("sh", &["-c".into(), "echo broken >&2; exit 3".into()])
        .await
        .unwrap_err();
    assert!(e.contains("exit status: 3") && e.contains("broken"), "{e}");
    let e = run_cmd("/no/such/command", &[]).await.unwrap_err();
    assert!(e.contains("cannot start it"), "{e}");
}
