//! The Notifier against HTTP receivers started in the test: the format of each
//! channel, the HMAC signature, cooldown and resolved notices, retries, a dead channel
//! that never blocks the others, and the heartbeat after a verified backup.

mod common;

use common::{receiver, wait_for};

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dbwarden::config::{ChannelSettings, NotifySettings};
use dbwarden::notifier::channels::{signature, SIGNATURE_HEADER};
use dbwarden::notifier::{Notifier, Severity};
use serde_json::{json, Value};

fn settings(
    channels: Vec<ChannelSettings>,
    cooldown_secs: u64,
    timeout_secs: u64,
) -> NotifySettings {
    NotifySettings {
        cooldown_secs,
        timeout_secs,
        retries: 3,
        queue_capacity: 16,
        shutdown_flush_secs: 5,
        channels,
    }
}

#[actix_rt::test]
async fn each_channel_gets_its_own_format() {
    let r = receiver(0, Duration::ZERO);
    let url = |p: &str| format!("{}{p}", r.base);
    let notifier = Notifier::start(&settings(
        vec![
            ChannelSettings::Webhook {
                url: url("/hook"),
                secret: Some("s3cret".into()),
            },
            ChannelSettings::Ntfy {
                url: url("/ntfy-topic"),
                token: Some("tk".into()),
            },
            ChannelSettings::Discord {
                url: url("/discord"),
            },
            ChannelSettings::Slack { url: url("/slack") },
            ChannelSettings::Gotify {
                url: url("/gotify/"),
                token: "app-token".into(),
            },
        ],
        3600,
        5,
    ));
    notifier.alert(
        "backup_failed",
        Severity::Critical,
        "disk on fire",
        json!({"error": "ENOSPC"}),
    );
    let got = wait_for(&r.got, 5, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 5, "{got:#?}");
    let by_path = |p: &str| {
        got.iter()
            .find(|g| g.path == p)
            .unwrap_or_else(|| panic!("no request to {p}: {got:#?}"))
            .clone()
    };

    let hook = by_path("/hook");
    let doc: Value = serde_json::from_str(&hook.body).expect("json");
    assert_eq!(doc["key"], "backup_failed");
    assert_eq!(doc["severity"], "critical");
    assert_eq!(doc["message"], "disk on fire");
    assert_eq!(doc["details"]["error"], "ENOSPC");
    assert_eq!(doc["resolved"], false);
    assert_eq!(
        hook.header(SIGNATURE_HEADER),
        Some(signature("s3cret", hook.body.as_bytes()).as_str()),
        "HMAC over the exact body"
    );

    let ntfy = by_path("/ntfy-topic");
    assert_eq!(ntfy.body, "disk on fire");
    assert_eq!(ntfy.header("priority"), Some("5"));
    assert!(ntfy.header("title").unwrap_or("").contains("backup_failed"));
    assert_eq!(ntfy.header("authorization"), Some("Bearer tk"));

    let discord: Value = serde_json::from_str(&by_path("/discord").body).expect("json");
    assert!(discord["content"]
        .as_str()
        .unwrap_or("")
        .contains("CRITICAL"));
    let slack: Value = serde_json::from_str(&by_path("/slack").body).expect("json");
    assert!(slack["text"]
        .as_str()
        .unwrap_or("")
        .contains("disk on fire"));
    let gotify = by_path("/gotify/message");
    assert_eq!(gotify.header("x-gotify-key"), Some("app-token"));
    let g: Value = serde_json::from_str(&gotify.body).expect("json");
    assert_eq!(g["priority"], 8);
    r.handle.stop(false).await;
}

#[actix_rt::test]
async fn cooldown_holds_repeats_and_resolution_is_announced() {
    let r = receiver(0, Duration::ZERO);
    let notifier = Notifier::start(&settings(
        vec![ChannelSettings::Webhook {
            url: format!("{}/hook", r.base),
            secret: None,
        }],
        3600,
        5,
    ));
    notifier.alert(
        "integrity_quick_check",
        Severity::Critical,
        "bad page",
        Value::Null,
    );
    notifier.alert(
        "integrity_quick_check",
        Severity::Critical,
        "bad page again",
        Value::Null,
    );
    notifier.resolve("never_alerted", "nothing to resolve");
    notifier.resolve("integrity_quick_check", "quick_check passes again");
    notifier.alert(
        "integrity_quick_check",
        Severity::Critical,
        "bad again after resolution",
        Value::Null,
    );
    let got = wait_for(&r.got, 3, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_all = r.got.lock().expect("lock").clone();
    assert_eq!(got_all.len(), 3, "{got:#?}");
    let docs: Vec<Value> = got_all
        .iter()
        .map(|g| serde_json::from_str(&g.body).expect("json"))
        .collect();
    assert_eq!(docs[0]["message"], "bad page");
    assert_eq!(docs[1]["resolved"], true);
    assert_eq!(docs[1]["message"], "quick_check passes again");
    assert_eq!(
        docs[2]["message"], "bad again after resolution",
        "resolution resets the cooldown"
    );
    r.handle.stop(false).await;
}

#[actix_rt::test]
async fn failed_deliveries_are_retried() {
    let r = receiver(2, Duration::ZERO);
    let notifier = Notifier::start(&settings(
        vec![ChannelSettings::Slack {
            url: format!("{}/slack", r.base),
        }],
        3600,
        5,
    ));
    notifier.alert("wal_over_threshold", Severity::Warning, "wal", Value::Null);
    let got = wait_for(&r.got, 3, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 3, "two failures, then success");
    let stats = notifier.stats();
    let deadline = Instant::now() + Duration::from_secs(2);
    while stats[0].1.sent.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats[0].1.sent.load(Ordering::Relaxed), 1);
    assert_eq!(stats[0].1.failed.load(Ordering::Relaxed), 0);
    r.handle.stop(false).await;
}

#[actix_rt::test]
async fn a_dead_channel_never_delays_the_others() {
    let dead = receiver(0, Duration::from_secs(30));
    let alive = receiver(0, Duration::ZERO);
    let notifier = Notifier::start(&settings(
        vec![
            ChannelSettings::Webhook {
                url: format!("{}/stuck", dead.base),
                secret: None,
            },
            ChannelSettings::Webhook {
                url: format!("{}/ok", alive.base),
                secret: None,
            },
        ],
        0,
        20,
    ));
    for i in 0..5 {
        notifier.alert(&format!("key{i}"), Severity::Warning, "x", Value::Null);
    }
    // The dead channel really was sent to: it holds the request and will not answer
    // for 30 s. Everything reaches the live one long before that.
    let stuck = wait_for(&dead.got, 1, Duration::from_secs(5)).await;
    assert_eq!(
        stuck.len(),
        1,
        "the dead channel got its first alert and hangs on it"
    );
    assert_eq!(stuck[0].path, "/stuck");
    let got = wait_for(&alive.got, 5, Duration::from_secs(10)).await;
    assert_eq!(
        got.len(),
        5,
        "the live channel got everything while the other hangs"
    );
    assert_eq!(
        dead.got.lock().expect("lock").len(),
        1,
        "still stuck on the first: the channels do not share a queue"
    );
    dead.handle.stop(false).await;
    alive.handle.stop(false).await;
}

#[actix_rt::test]
async fn the_heartbeat_is_pinged_after_a_verified_backup() {
    let r = receiver(0, Duration::ZERO);
    let hb = format!("{}/ping/abc", r.base);
    let dir = tempfile::tempdir().expect("tempdir");
    // The channel comes from a TOML file, as a user would write it.
    let file = dir.path().join("dbwarden.toml");
    std::fs::write(
        &file,
        format!(
            "[database]\npath = \"{db}\"\n[api]\nlisten = \"127.0.0.1:0\"\n[backup]\ndir = \"{b}\"\nat_startup = false\n[notify]\nchannels = [{{ kind = \"heartbeat\", url = \"{hb}\" }}]\n",
            db = dir.path().join("events.db").display(),
            b = dir.path().join("backups").display(),
        ),
    )
    .expect("write");
    let settings = dbwarden::config::Settings::load_with_env(
        &dbwarden::config::ConfigSource::Explicit(file),
        Vec::<(String, String)>::new(),
    )
    .expect("settings with a heartbeat channel");
    let service = dbwarden::supervisor::Service::start(settings)
        .await
        .expect("start");
    let client = reqwest::Client::new();
    let res = client
        .post(format!("http://{}/api/backups", service.addr))
        .send()
        .await
        .expect("backup");
    assert_eq!(res.status(), 201);
    let got = wait_for(&r.got, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        (got[0].method.as_str(), got[0].path.as_str()),
        ("GET", "/ping/abc")
    );
    service.shutdown(true).await;
    r.handle.stop(false).await;
}

#[actix_rt::test]
async fn a_full_queue_drops_and_counts_instead_of_waiting() {
    let dead = receiver(0, Duration::from_secs(30));
    let notifier = Notifier::start(&NotifySettings {
        cooldown_secs: 0,
        timeout_secs: 20,
        retries: 0,
        queue_capacity: 2,
        shutdown_flush_secs: 0,
        channels: vec![ChannelSettings::Webhook {
            url: format!("{}/stuck", dead.base),
            secret: None,
        }],
    });
    for i in 0..10 {
        notifier.alert(&format!("k{i}"), Severity::Warning, "x", Value::Null);
    }
    // Raising returned with the channel stuck on its first request (for 30 s).
    let stuck = wait_for(&dead.got, 1, Duration::from_secs(5)).await;
    assert_eq!(stuck.len(), 1, "one alert in flight at the stuck channel");
    let stats = notifier.stats();
    let dropped = stats[0].1.dropped.load(Ordering::Relaxed);
    // One in flight, two queued: the rest were dropped and counted.
    assert!((7..=8).contains(&dropped), "dropped {dropped}");
    dead.handle.stop(false).await;
}
