//! What operators expect from a service: settings from a distribution's defaults and
//! secrets from files, a required token, `healthcheck` exit codes, JSON logs, systemd
//! readiness, `--version` with the revision, Apprise, HTTPS through a private CA, and
//! a dashboard and alert rules that only use metrics the service exports.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use dbwarden::config::{ChannelSettings, ConfigError, ConfigSource, Settings};
use serde_json::Value;

fn load(dir: &Path, file: Option<&str>, env: &[(&str, String)]) -> Result<Settings, ConfigError> {
    let source = match file {
        Some(text) => {
            let path = dir.join("settings.toml");
            std::fs::write(&path, text).expect("settings file");
            ConfigSource::Explicit(path)
        }
        None => ConfigSource::Explicit(dir.join("empty.toml")),
    };
    if file.is_none() {
        std::fs::write(dir.join("empty.toml"), "").expect("empty file");
    }
    let mut vars = vec![(
        "DBWARDEN__DATABASE__PATH".to_string(),
        dir.join("db/events.db").display().to_string(),
    )];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Settings::load_with_env(&source, vars)
}

#[test]
fn secrets_come_from_files_and_mistakes_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-from-a-file\n").expect("token");
    let hmac = dir.path().join("hmac");
    std::fs::write(&hmac, "hmac-key").expect("hmac");
    let env = [("DBWARDEN__API__TOKEN_FILE", token.display().to_string())];
    let settings = load(dir.path(), None, &env).expect("token from a file");
    assert_eq!(settings.api.token.as_deref(), Some("s3cret-from-a-file"));

    let file = format!(
        "[[notify.channels]]\nkind = \"webhook\"\nurl = \"https://hooks.example/a\"\nsecret_file = \"{}\"\n",
        hmac.display()
    );
    let settings = load(dir.path(), Some(&file), &[]).expect("channel secret from a file");
    match &settings.notify.channels[0] {
        ChannelSettings::Webhook { secret, .. } => assert_eq!(secret.as_deref(), Some("hmac-key")),
        other => panic!("{other:?}"),
    }
    assert!(!settings.to_masked_toml().contains("hmac-key"));

    let err = |file: Option<&str>, env: &[(&str, String)]| {
        load(dir.path(), file, env)
            .expect_err("refused")
            .to_string()
    };
    let both = err(
        Some("[api]\ntoken = \"x\"\n"),
        &[("DBWARDEN__API__TOKEN_FILE", token.display().to_string())],
    );
    assert!(
        both.contains("api.token_file") && both.contains("not both"),
        "{both}"
    );
    let missing = err(
        None,
        &[("DBWARDEN__API__TOKEN_FILE", "/no/such/secret".into())],
    );
    assert!(
        missing.contains("api.token_file") && missing.contains("/no/such/secret"),
        "{missing}"
    );
    std::fs::write(dir.path().join("blank"), "\n").expect("blank");
    let blank = err(
        None,
        &[(
            "DBWARDEN__API__TOKEN_FILE",
            dir.path().join("blank").display().to_string(),
        )],
    );
    assert!(blank.contains("is empty"), "{blank}");
    let in_channel = err(
        Some("[[notify.channels]]\nkind = \"ntfy\"\nurl = \"https://ntfy.example/t\"\ntoken_file = \"/no/such\"\n"),
        &[],
    );
    assert!(
        in_channel.contains("notify.channels[0].token_file"),
        "{in_channel}"
    );
}

#[test]
fn a_distributions_defaults_sit_between_the_built_in_ones_and_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let defaults = dir.path().join("defaults.toml");
    std::fs::write(
        &defaults,
        "[api]\nlisten = \"0.0.0.0:8484\"\nrequire_token = true\n[backup]\ndir = \"/backups\"\n",
    )
    .expect("defaults");
    let env = vec![
        ("DBWARDEN_DEFAULTS", defaults.display().to_string()),
        ("DBWARDEN__API__TOKEN", "t0ken".to_string()),
    ];
    let settings =
        load(dir.path(), Some("[backup]\ndir = \"/srv/backups\"\n"), &env).expect("load");
    assert_eq!(
        settings.api.listen.to_string(),
        "0.0.0.0:8484",
        "from the distribution's defaults"
    );
    assert!(settings.api.require_token);
    assert_eq!(
        settings.backup.dir,
        Path::new("/srv/backups"),
        "the file overrides them"
    );
    std::fs::write(&defaults, "[api]\nlistn = \"x\"\n").expect("defaults");
    let e = load(dir.path(), None, &env)
        .expect_err("unknown key")
        .to_string();
    assert!(
        e.contains("api.listn") && e.contains("defaults.toml"),
        "{e}"
    );
}

#[test]
fn a_required_token_must_be_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("DBWARDEN__API__REQUIRE_TOKEN", "true".to_string())];
    let e = load(dir.path(), None, &env)
        .expect_err("no token")
        .to_string();
    assert!(
        e.contains("api.token") && e.contains("require_token"),
        "{e}"
    );
    let token = dir.path().join("token");
    std::fs::write(&token, "t").expect("token");
    let mut with = env.to_vec();
    with.push(("DBWARDEN__API__TOKEN_FILE", token.display().to_string()));
    assert!(load(dir.path(), None, &with).is_ok());
}

fn dbwarden(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbwarden"));
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .env("DBWARDEN__DATABASE__PATH", dir.join("data/events.db"))
        .env("DBWARDEN__BACKUP__DIR", dir.join("backups"))
        .env("DBWARDEN__JOBS__DIR", dir.join("no-jobs"));
    cmd
}

#[test]
fn version_names_the_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dbwarden(dir.path()).arg("--version").output().expect("run");
    assert!(out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout);
    let revision = shown
        .split(['(', ')'])
        .nth(1)
        .unwrap_or_default()
        .trim_end_matches("-dirty");
    assert!(
        revision == "unknown"
            || (revision.len() == 12 && revision.bytes().all(|b| b.is_ascii_hexdigit())),
        "{shown}"
    );
    assert!(
        shown.starts_with(&format!("dbwarden {}", env!("CARGO_PKG_VERSION"))),
        "{shown}"
    );
}

#[actix_rt::test]
async fn healthcheck_exits_0_only_when_healthy() {
    let mut app = common::TestApp::spawn(&[]).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let workdir = app.dir.path().to_path_buf();
    // The service answers on this thread: the command must not block it.
    let check = |addr: String| {
        let workdir = workdir.clone();
        async move {
            tokio::process::Command::from(dbwarden(&workdir))
                .args(["healthcheck", "--timeout", "5"])
                .env("DBWARDEN__API__LISTEN", addr)
                .output()
                .await
                .expect("healthcheck")
        }
    };
    let out = check(addr.clone()).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "healthy");
    // Backups stop: the service is degraded, and a container health check says so.
    std::fs::rename(app.dir.path().join("backups"), app.dir.path().join("gone")).expect("remove");
    assert!(app.post("/api/backups").await.status().is_server_error());
    let out = check(addr.clone()).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("degraded"));
    app.stop().await;
    let out = check(addr).await;
    assert_eq!(out.status.code(), Some(1), "nobody answers");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("unhealthy"));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = dbwarden(dir.path())
        .env("DBWARDEN__LOGGING__FORMAT", "json")
        .env("DBWARDEN__API__LISTEN", "127.0.0.1:0")
        .env("DBWARDEN__BACKUP__AT_STARTUP", "false")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        let started = line.contains("dbwarden started");
        seen.push(line);
        if started {
            break;
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(seen.len() > 2, "{seen:?}");
    for line in &seen {
        let object: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            object["timestamp"].is_string() && object["level"].is_string(),
            "{line}"
        );
        assert!(object["fields"]["message"].is_string(), "{line}");
    }
    let started: Value = serde_json::from_str(seen.last().expect("last")).expect("json");
    assert!(
        started["fields"]["addr"].is_string(),
        "event fields are kept: {started}"
    );
}

#[test]
fn systemd_hears_ready_once_the_api_answers() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut child = dbwarden(dir.path())
        .env("NOTIFY_SOCKET", &socket_path)
        .env("DBWARDEN__API__LISTEN", "127.0.0.1:0")
        .env("DBWARDEN__BACKUP__AT_STARTUP", "false")
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("READY=1 arrives");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(message.contains("READY=1"), "{message}");
    assert!(
        message.contains("STATUS=serving on 127.0.0.1:"),
        "{message}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let n = socket.recv(&mut buf).expect("STOPPING=1 arrives");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(child.wait().expect("exit").success());
}

#[actix_rt::test]
async fn apprise_gets_title_body_and_type() {
    let apprise = common::receiver(0, Duration::ZERO);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = common::settings_in(dir.path(), &[]);
    settings.notify.channels = vec![ChannelSettings::Apprise {
        url: format!("{}/notify/dbwarden", apprise.base),
        urls: Some("tgram://bot/chat".into()),
        tag: Some("ops".into()),
    }];
    let service = dbwarden::supervisor::Service::start(settings)
        .await
        .expect("start");
    let got = common::wait_for(&apprise.got, 1, Duration::from_secs(10)).await;
    let first = got.first().expect("a notification");
    assert_eq!(first.path, "/notify/dbwarden");
    let body: Value = serde_json::from_str(&first.body).expect("json");
    assert!(
        body["title"]
            .as_str()
            .is_some_and(|t| t.contains("service_started")),
        "{body}"
    );
    assert!(
        body["body"].as_str().is_some_and(|b| b.contains("started")),
        "{body}"
    );
    assert_eq!(body["type"], "info");
    assert_eq!(body["urls"], "tgram://bot/chat");
    assert_eq!(body["tag"], "ops");
    service.shutdown(true).await;
}

/// Every `dbwarden_*` family that `text` names exists in the exposition `metrics`.
fn unknown_metrics(text: &str, metrics: &str) -> Vec<String> {
    let exported: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut unknown = Vec::new();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if !word.starts_with("dbwarden_") {
            continue;
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| word.strip_suffix(s))
            .filter(|f| exported.contains(f))
            .unwrap_or(word);
        if !exported.contains(family) && !unknown.contains(&word.to_string()) {
            unknown.push(word.to_string());
        }
    }
    unknown
}

#[actix_rt::test]
async fn the_dashboard_and_alert_rules_use_only_exported_metrics() {
    let alerts = common::receiver(0, Duration::ZERO);
    let dir = tempfile::tempdir().expect("tempdir");
    // A replica, for the per-replica families.
    let replica = format!(
        "[[replicas]]\nname = \"nas\"\nurl = \"file://{}\"\nencryption = \"none\"\ncpu_priority = \"low\"\n",
        dir.path().join("nas").display()
    );
    let mut settings = common::settings_with_file(dir.path(), &replica, &[]);
    settings.notify.channels = vec![ChannelSettings::Webhook {
        url: format!("{}/alerts", alerts.base),
        secret: None,
    }];
    let mut app =
        common::TestApp::start(dir, dbwarden::supervisor::Service::builder(settings)).await;
    // Everything that is exported only once it happened: a backup, a checkpoint, a
    // check, a job run, an append, a refused write, a notification, a shipped copy.
    app.post_json("/api/events", &serde_json::json!({"aggregate_type": "corruption", "aggregate_id": "a", "event_type": "CorruptionDetected", "event_data": {}}))
        .await;
    // A write the database refuses (a trigger of the user's own).
    rusqlite::Connection::open(&app.db_path)
        .expect("open")
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.event_type = 'Refused'
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .expect("trigger");
    let writer = app.service.as_ref().expect("service").writer.clone();
    let refused = writer
        .append(vec![dbwarden::events::NewEvent::new(
            "corruption",
            "a",
            "Refused",
            Value::Null,
        )
        .expect("a valid event")])
        .await;
    assert!(refused.is_err());
    common::wait_for(&alerts.got, 1, Duration::from_secs(10)).await;
    assert_eq!(app.post("/api/backups").await.status(), 201);
    for job in ["checkpoint", "quick-check"] {
        app.run_job(job).await;
    }
    // The backup reaches the replica on the shipper's own thread.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = app.get_text("/metrics").await;
        if metrics.contains("dbwarden_replica_newest_copy_age_seconds{replica=\"nas\"}") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the copy never reached the replica:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drill = app.run_job("drill-nas").await;
    assert_eq!(drill["outcome"], "ok", "{drill}");
    let metrics = app.get_text("/metrics").await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    for file in ["grafana/dbwarden.json", "prometheus/dbwarden.rules.yml"] {
        let text = std::fs::read_to_string(root.join(file)).expect(file);
        assert_eq!(
            unknown_metrics(&text, &metrics),
            Vec::<String>::new(),
            "{file}"
        );
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/dbwarden.json")).expect("read"),
    )
    .expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() > 10));
    app.stop().await;
}

/// An HTTPS endpoint with a certificate from a CA of our own; answers 200 to every
/// request and hands over the request's first line. Returns (port, CA PEM, requests).
async fn https_receiver() -> (u16, String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "dbwarden test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("server cert");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
        )
        .expect("tls config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 16 * 1024];
                let n = tls.read(&mut buf).await.unwrap_or(0);
                let first = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let _ = tx.send(first);
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\\r\\ncontent-length: 0\\r\\nconnection: close\\r\\n\\r\\n")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, ca.pem(), rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_reach_an_https_server_behind_a_private_ca() {
    let (port, ca_pem, mut requests) = https_receiver().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).expect("ca file");
    std::fs::write(
        dir.path().join("config.toml"),
        format!("[[notify.channels]]\nkind = \"webhook\"\nurl = \"https://localhost:{port}/hook\"\n\n[notify]\nretries = 0\n"),
    )
    .expect("settings");
    let run = |trust: bool| {
        let mut cmd = tokio::process::Command::from(dbwarden(dir.path()));
        cmd.env("DBWARDEN__API__LISTEN", "127.0.0.1:0")
            .env("DBWARDEN__BACKUP__AT_STARTUP", "false")
            .env("DBWARDEN__INTEGRITY__QUICK_AT_STARTUP", "false")
            .env_remove("SSL_CERT_DIR")
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if trust {
            cmd.env("SSL_CERT_FILE", &ca_file);
        } else {
            cmd.env_remove("SSL_CERT_FILE");
        }
        cmd.spawn().expect("start")
    };
    // Without the CA, the handshake fails: the certificate is not trusted.
    let mut untrusted = run(false);
    let stderr = untrusted.stderr.take().expect("stderr");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let failed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("notification failed") {
                return line;
            }
        }
        String::new()
    })
    .await
    .expect("the delivery fails and says so");
    assert!(
        failed.contains("certificate") || failed.contains("error sending request"),
        "{failed}"
    );
    assert!(
        requests.try_recv().is_err(),
        "no request got through without trusting the CA"
    );
    let _ = untrusted.kill().await;
    // Trusting it (SSL_CERT_FILE, as in a container), the alert arrives.
    let mut trusted = run(true);
    let first = tokio::time::timeout(Duration::from_secs(15), requests.recv())
        .await
        .expect("the notification arrives")
        .expect("a request");
    assert!(first.starts_with("POST /hook "), "{first}");
    let _ = trusted.kill().await;
}
