use super::*;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGQ5 me@host\n";

fn files(dir: &Path, items: &[(&str, &str)]) {
    for (n, t) in items {
        std::fs::write(dir.join(n), t).unwrap();
    }
}

fn input(dir: &Path, user: Option<&str>, key: Option<&str>) -> CloudInitInput {
    CloudInitInput {
        user_data: user.map(|u| dir.join(u)),
        ssh_key: key.map(|k| dir.join(k)),
        ..Default::default()
    }
}

#[test]
fn parse_takes_the_user_data_then_options() {
    let p = |s: &str| CloudInitInput::parse(OsStr::new(s)).map_err(|e| e.to_string());
    let c = p("u.yaml,meta-data=m.yaml,network-config=n,,x.yaml").unwrap();
    assert_eq!(c.user_data.as_deref(), Some(Path::new("u.yaml")));
    assert_eq!(c.meta_data.as_deref(), Some(Path::new("m.yaml")));
    assert_eq!(c.network_config.as_deref(), Some(Path::new("n,x.yaml")));
    assert!(
        p("u.yaml,vendor-data=x")
            .unwrap_err()
            .contains("unknown option 'vendor-data=x'")
    );
    assert!(
        p(",meta-data=m")
            .unwrap_err()
            .contains("the user-data file comes first")
    );
    assert!(
        p("u,meta-data=a,meta-data=b")
            .unwrap_err()
            .contains("given twice")
    );
}

#[test]
fn the_key_user_data_is_cloud_config_with_the_user_and_key() {
    let text = key_user_data(KEY);
    assert!(text.starts_with("#cloud-config\n"));
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    let user = &docs[0]["users"][1];
    assert_eq!(user["name"].as_str(), Some(DEFAULT_USER));
    assert_eq!(user["ssh_authorized_keys"][0].as_str(), Some(KEY.trim()));
    assert_eq!(user["sudo"].as_str(), Some("ALL=(ALL) NOPASSWD:ALL"));
    assert_eq!(docs[0]["ssh_pwauth"].as_bool(), Some(false));
}

#[test]
fn keys_are_public_ones_and_the_identity_sits_beside() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    files(
        dir,
        &[
            ("id.pub", KEY),
            (
                "id",
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n",
            ),
            ("lone.pub", KEY),
            ("junk.pub", "hello\n"),
        ],
    );
    let ci = validate(&input(dir, None, Some("id.pub")), None).unwrap();
    let login = ci.ssh.unwrap();
    assert_eq!(login.identity.as_deref(), Some(dir.join("id").as_path()));
    assert!(ci.user_data.contains(KEY.trim()));
    let ci = validate(&input(dir, None, Some("lone.pub")), None).unwrap();
    assert_eq!(ci.ssh.unwrap().identity, None);
    let e = validate(&input(dir, None, Some("id")), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with(
            "a private key, which is never copied into a seed; give the .pub file beside it"
        ),
        "{e}"
    );
    let e = validate(&input(dir, None, Some("junk.pub")), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an OpenSSH public key"), "{e}");
    let e = validate(&input(dir, None, Some("nope.pub")), None)
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("nope.pub: no such file"), "{e}");
    // --ssh: ~/.ssh/id_ed25519.pub, else id_rsa.pub, else what to do.
    std::fs::create_dir(dir.join(".ssh")).unwrap();
    let ssh = CloudInitInput {
        ssh: true,
        ..Default::default()
    };
    let e = validate(&ssh, Some(dir)).unwrap_err().to_string();
    assert!(
        e.contains("id_ed25519.pub or id_rsa.pub") && e.contains("ssh-keygen"),
        "{e}"
    );
    files(&dir.join(".ssh"), &[("id_rsa.pub", KEY)]);
    let ci = validate(&ssh, Some(dir)).unwrap();
    assert_eq!(ci.ssh.unwrap().public_key, dir.join(".ssh/id_rsa.pub"));
}

#[test]
fn user_data_is_cloud_config_yaml_or_a_known_format() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    files(
        dir,
        &[
            ("ok.yaml", "#cloud-config\npackages: [htop]\n"),
            ("script.sh", "#!/bin/sh\necho hi\n"),
            ("bad.yaml", "#cloud-config\npackages: [htop\n"),
            ("list.yaml", "#cloud-config\n- a\n- b\n"),
            ("plain.yaml", "packages: [htop]\n"),
            ("meta.yaml", "local-hostname: web\n"),
            ("id.pub", KEY),
        ],
    );
    let v = |u: &str| validate(&input(dir, Some(u), None), None).map_err(|e| e.to_string());
    assert!(v("ok.yaml").unwrap().user_data.contains("htop"));
    assert!(v("script.sh").unwrap().user_data.starts_with("#!/bin/sh"));
    assert!(
        v("bad.yaml")
            .unwrap_err()
            .contains("bad.yaml: not valid YAML: ")
    );
    assert!(v("list.yaml").unwrap_err().contains("not a mapping"));
    assert!(
        v("plain.yaml")
            .unwrap_err()
            .contains("no #cloud-config header")
    );
    assert!(
        v("missing.yaml")
            .unwrap_err()
            .ends_with("missing.yaml: no such file")
    );
    let e = validate(&input(dir, Some("ok.yaml"), Some("id.pub")), None).unwrap_err();
    assert!(
        e.to_string()
            .contains("--ssh-key writes a user-data of its own")
    );
    let mut i = input(dir, Some("ok.yaml"), None);
    i.meta_data = Some(dir.join("list.yaml"));
    assert!(
        validate(&i, None)
            .unwrap_err()
            .to_string()
            .contains("meta-data")
    );
    i.meta_data = Some(dir.join("meta.yaml"));
    let ci = validate(&i, None).unwrap();
    // The user's hostname stays; the instance id is added.
    let seed = seed_files(&ci, "vm1", "iid-1");
    let meta = String::from_utf8(seed[1].1.clone()).unwrap();
    let y = &yaml_rust2::YamlLoader::load_from_str(&meta).unwrap()[0];
    assert_eq!(y["local-hostname"].as_str(), Some("web"));
    assert_eq!(y["instance-id"].as_str(), Some("iid-1"));
    assert_eq!(seed[0].0, "user-data");
}
