//! The binary: `admin create-user` against the same data directory as `serve`, config errors,
//! graceful shutdown on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{Backend, TestApp};

const BIN: &str = env!("CARGO_BIN_EXE_wa-gateway");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_create_user_works_while_serving() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let output = Command::new(BIN)
        .args([
            "admin",
            "create-user",
            "--email",
            "root@example.com",
            "--password",
            "r00t-password",
            "--name",
            "Root",
            "--role",
            "ADMINISTRATOR",
            "--tier",
            "MAX",
        ])
        .env("DATA_DIR", app.data_dir.path())
        .env_remove("DATABASE_URL")
        .env("LOG_LEVEL", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let login = app.login("root@example.com", "r00t-password").await;
    let token = login.assert_ok(200)["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let users = app.get("/api/v1/admin/users", Some(&token)).await;
    assert_eq!(users.assert_ok(200)["items"][0]["role"], "ADMINISTRATOR");
    let user = app.register("Ann", "ann@example.com", "s3cret-pass").await;
    app.get("/api/v1/admin/users", Some(&user.access_token))
        .await
        .assert_error(403, "FORBIDDEN");
    app.stop().await;
}

#[test]
fn invalid_configuration_names_the_variable_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .arg("migrate")
        .env("DATA_DIR", dir.path())
        .env("PORT", "eighty")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PORT"), "{stderr}");
    let output = Command::new(BIN)
        .arg("migrate")
        .env("DATA_DIR", dir.path())
        .env("APP_ENV", "production")
        .env_remove("JWT_SECRET")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("JWT_SECRET"));
}

#[test]
fn serve_shuts_down_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut child = Command::new(BIN)
        .arg("serve")
        .env("DATA_DIR", dir.path())
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env("LOG_LEVEL", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gateway did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gateway did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit:?}");
}

#[test]
fn kafka_create_topics_creates_once_then_reports_them() {
    let prefix = format!("cli{}.", uuid::Uuid::new_v4().simple());
    let data_dir = tempfile::tempdir().unwrap();
    let run = |brokers: Option<&str>| {
        let mut command = Command::new(BIN);
        command
            .args(["kafka", "create-topics"])
            .env("DATA_DIR", data_dir.path())
            .env("KAFKA_TOPIC_PREFIX", &prefix)
            .env("LOG_LEVEL", "warn")
            .env_remove("KAFKA_BROKERS");
        if let Some(brokers) = brokers {
            command.env("KAFKA_BROKERS", brokers);
        }
        command.output().unwrap()
    };
    let brokers = crate::common::reachable_kafka_brokers();
    let first = run(Some(&brokers));
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "is a Kafka broker running at KAFKA_BROKERS={brokers}? {}",
        String::from_utf8_lossy(&first.stderr)
    );
    // One line per topic of the catalog.
    let topics = include_str!("../../kafka/topics.toml")
        .lines()
        .filter(|line| line.starts_with("name = "))
        .count();
    assert!(
        topics >= 4,
        "the catalog has the outbound, events and both DLQ topics"
    );
    assert_eq!(stdout.matches("created").count(), topics, "{stdout}");
    assert!(stdout.contains(&format!("{prefix}wa.outbound.v1 (12 partitions)")));
    let second = run(Some(&brokers));
    assert!(second.status.success());
    assert_eq!(
        String::from_utf8_lossy(&second.stdout)
            .matches("exists")
            .count(),
        topics
    );
    let without = run(None);
    assert!(!without.status.success());
    assert!(String::from_utf8_lossy(&without.stderr).contains("KAFKA_BROKERS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_create_user_reads_the_password_from_stdin() {
    use std::io::Write;
    let app = TestApp::spawn(Backend::Sqlite).await;
    let mut child = Command::new(BIN)
        .args([
            "admin",
            "create-user",
            "--email",
            "piped@example.com",
            "--password-stdin",
            "--name",
            "Piped",
        ])
        .env("DATA_DIR", app.data_dir.path())
        .env_remove("DATABASE_URL")
        .env("LOG_LEVEL", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped-pass-1\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    app.login("piped@example.com", "piped-pass-1")
        .await
        .assert_ok(200);
    // Neither or both is a usage error.
    let neither = Command::new(BIN)
        .args([
            "admin",
            "create-user",
            "--email",
            "x@example.com",
            "--name",
            "X",
        ])
        .env("DATA_DIR", app.data_dir.path())
        .output()
        .unwrap();
    assert!(!neither.status.success());
    app.stop().await;
}

#[test]
fn sim_worker_refuses_to_start_without_the_gateways_token() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args([
            "sim-worker",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "http://127.0.0.1:9",
            "--worker-id",
            "w-lonely",
        ])
        .current_dir(dir.path())
        .env("DATA_DIR", dir.path().join("data"))
        .env_remove("WORKER_AUTH_TOKEN")
        .env_remove("JWT_SECRET")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("WORKER_AUTH_TOKEN"), "{stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "sim-worker generated secrets of its own"
    );
}

#[test]
fn serve_help_lists_the_environment() {
    let output = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for variable in [
        "DATABASE_URL",
        "REDIS_URL",
        "KAFKA_BROKERS",
        "WORKER_AUTH_TOKEN",
        "HTTP_MAX_CONNECTIONS",
        "CORS_ORIGIN",
    ] {
        assert!(help.contains(variable), "{variable} missing from:\n{help}");
    }
}

#[test]
fn data_dir_files_are_private_to_the_gateways_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // As an older version (or a hand) left it: world-readable.
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let old = data_dir.join("notes.txt");
    std::fs::write(&old, "left here").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = Command::new(BIN)
        .arg("migrate")
        .current_dir(dir.path())
        .env("DATA_DIR", &data_dir)
        .env_remove("DATABASE_URL")
        .env_remove("JWT_SECRET")
        .env_remove("WORKER_AUTH_TOKEN")
        .env("LOG_LEVEL", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data_dir), 0o700);
    let mut files = 0;
    for entry in std::fs::read_dir(&data_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            files += 1;
            assert_eq!(
                mode(&path) & 0o077,
                0,
                "{} is {:o}",
                path.display(),
                mode(&path)
            );
        }
    }
    // The store, the generated secrets and the file that was there before, at least.
    assert!(files >= 3, "{files} files");
}
