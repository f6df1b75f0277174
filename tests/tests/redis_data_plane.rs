//! The data plane is real: the `redis.conf` and start script that redis-operator puts in the
//! ConfigMap run here with Debian's `redis-server`, exactly as the pod runs them, and the
//! password and settings take effect — while the password stays out of every argument list.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use redis_operator::standalone::{Names, START_SCRIPT_KEY, config_map, redis_conf};
use redis_operator::v1beta1::{Redis, RedisConfig};

const PASSWORD: &str = r#"s3cret "quoted" \ back\slash"#;

struct Server {
    process: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn redis_cli(port: u16, password: Option<&str>, args: &[&str]) -> Result<String> {
    let mut command = Command::new("redis-cli");
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    // Like the probes: the password goes in REDISCLI_AUTH, not in the arguments.
    match password {
        Some(password) => command.env("REDISCLI_AUTH", password),
        None => command.env_remove("REDISCLI_AUTH"),
    };
    let output = command
        .output()
        .context("failed to run redis-cli (run hack/install-deps.sh)")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Writes the ConfigMap's files to `directory` and starts its start script.
fn start(redis: &Redis, directory: &Path, password: Option<&str>) -> Result<Server> {
    let environment: Vec<(&str, &str)> = password
        .map(|password| ("REDIS_PASSWORD", password))
        .into_iter()
        .collect();
    start_with(redis, directory, &environment)
}

/// [`start`], with the pod's environment `environment`.
fn start_with(redis: &Redis, directory: &Path, environment: &[(&str, &str)]) -> Result<Server> {
    let config = config_map(&Names::of("data-plane"), &redis_conf(&redis.spec));
    let data = config.data.context("the ConfigMap has no data")?;
    let (config_dir, run_dir, data_dir) = (
        directory.join("config"),
        directory.join("run"),
        directory.join("data"),
    );
    for dir in [&config_dir, &run_dir, &data_dir] {
        std::fs::create_dir_all(dir)?;
    }
    for (key, value) in &data {
        std::fs::write(config_dir.join(key), value)?;
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut command = Command::new("sh");
    command
        .arg(config_dir.join(START_SCRIPT_KEY))
        .env("REDIS_CONFIG_DIR", &config_dir)
        .env("REDIS_RUN_DIR", &run_dir)
        .env("REDIS_DATA_DIR", &data_dir)
        .env("REDIS_PORT", port.to_string())
        // Loopback only on the test machine; in the pod it listens on the pod's address.
        .env("REDIS_BIND", "127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command.envs(environment.iter().copied());
    let mut server = Server {
        process: command.spawn().context("failed to start the script")?,
        port,
    };
    let started = Instant::now();
    // Without a password PING answers PONG; with one it answers NOAUTH — either way it is up.
    while redis_cli(port, None, &["ping"])?.is_empty() {
        if let Some(status) = server.process.try_wait()? {
            bail!("the start script exited with {status} before redis-server answered");
        }
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(server)
}

fn redis_with(config: &[&str]) -> Result<Redis> {
    let mut redis: Redis = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "data-plane" },
        "spec": { "kubernetesConfig": { "image": "redis:7.4" } },
    }))?;
    redis.spec.pod.redis_config = Some(RedisConfig {
        additional_config: config.iter().map(|line| line.to_string()).collect(),
    });
    Ok(redis)
}

#[test]
fn password_and_settings_take_effect_and_the_password_stays_out_of_arguments() -> Result<()> {
    let directory = tempdir()?;
    let redis = redis_with(&["maxmemory 64mb", "maxmemory-policy allkeys-lru"])?;
    let server = start(&redis, &directory, Some(PASSWORD))?;

    let anonymous = redis_cli(server.port, None, &["ping"])?;
    ensure!(
        anonymous.contains("NOAUTH"),
        "a client without the password got {anonymous:?}"
    );
    let wrong = redis_cli(server.port, Some("wrong"), &["ping"])?;
    ensure!(
        !wrong.contains("PONG"),
        "a wrong password was accepted: {wrong:?}"
    );
    ensure!(redis_cli(server.port, Some(PASSWORD), &["ping"])? == "PONG");
    ensure!(
        redis_cli(server.port, Some(PASSWORD), &["config", "get", "maxmemory"])?
            .ends_with("67108864")
    );
    let policy = redis_cli(
        server.port,
        Some(PASSWORD),
        &["config", "get", "maxmemory-policy"],
    )?;
    ensure!(
        policy.ends_with("allkeys-lru"),
        "maxmemory-policy is {policy:?}"
    );
    let appendonly = redis_cli(
        server.port,
        Some(PASSWORD),
        &["config", "get", "appendonly"],
    )?;
    ensure!(appendonly.ends_with("yes"), "appendonly is {appendonly:?}");
    let data_dir = redis_cli(server.port, Some(PASSWORD), &["config", "get", "dir"])?;
    ensure!(
        data_dir.ends_with(&*directory.join("data").to_string_lossy()),
        "dir is {data_dir:?}"
    );

    ensure!(redis_cli(server.port, Some(PASSWORD), &["set", "greeting", "hello"])? == "OK");
    ensure!(redis_cli(server.port, Some(PASSWORD), &["get", "greeting"])? == "hello");

    // No process of ours carries the password in its arguments.
    for entry in std::fs::read_dir("/proc")? {
        let Ok(arguments) = std::fs::read(entry?.path().join("cmdline")) else {
            continue;
        };
        let arguments = String::from_utf8_lossy(&arguments);
        ensure!(
            !arguments.contains("s3cret"),
            "the password shows in a command line: {arguments:?}"
        );
    }
    // The effective configuration with the password is private to its owner.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(directory.join("run/redis.conf"))?.permissions(),
    );
    ensure!(
        mode & 0o077 == 0,
        "the effective redis.conf is readable by others: {mode:o}"
    );
    drop(server);
    std::fs::remove_dir_all(&directory)?;
    Ok(())
}

#[test]
fn without_a_secret_the_server_needs_no_password() -> Result<()> {
    let directory = tempdir()?;
    let server = start(&redis_with(&[])?, &directory, None)?;
    ensure!(redis_cli(server.port, None, &["ping"])? == "PONG");
    drop(server);
    std::fs::remove_dir_all(&directory)?;
    Ok(())
}

#[test]
fn a_password_with_a_line_break_is_refused_at_start() -> Result<()> {
    let directory = tempdir()?;
    match start(&redis_with(&[])?, &directory, Some("two\nlines")) {
        Ok(server) => bail!(
            "redis-server started on port {} with a two-line password",
            server.port
        ),
        Err(error) => ensure!(
            error.to_string().contains("exited with exit status: 1"),
            "{error}"
        ),
    }
    std::fs::remove_dir_all(&directory)?;
    Ok(())
}

/// A standalone pod as the operator now builds it (both users), its password rotated live:
/// the new one added, then the old one removed, with no restart; the probes' user untouched.
#[tokio::test]
async fn a_rotation_moves_the_standalone_server_to_the_new_password_live() -> Result<()> {
    use redis_operator::access::DirectResolver;
    use redis_operator::passwords::{self, PodPasswords, Process, Step, Target};

    const OPERATOR_PASSWORD: &str = r#"operator's "own" pass\word"#;
    const NEW_PASSWORD: &str = r#"rotated "new" pass\word"#;
    let directory = tempdir()?;
    let server = start_with(
        &redis_with(&[])?,
        &directory,
        &[
            ("REDIS_PASSWORD", PASSWORD),
            ("OPERATOR_PASSWORD", OPERATOR_PASSWORD),
        ],
    )?;
    let operator_cli = |args: &[&str]| -> Result<String> {
        let output = Command::new("redis-cli")
            .args(["--user", "redis-operator", "-h", "127.0.0.1"])
            .args(["-p", &server.port.to_string()])
            .args(args)
            .env("REDISCLI_AUTH", OPERATOR_PASSWORD)
            .output()?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let run_id = || -> Result<String> {
        let info = operator_cli(&["INFO", "server"])?;
        info.lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(str::to_owned)
            .context("no run_id")
    };
    let before = run_id()?;
    ensure!(redis_cli(server.port, Some(PASSWORD), &["SET", "kept", "1"])? == "OK");
    let target = [Target {
        pod: "data-plane-0".to_owned(),
        host: "127.0.0.1".to_owned(),
        port: server.port,
        process: Process::Redis,
    }];
    let mut pods = PodPasswords {
        operator: OPERATOR_PASSWORD.to_owned(),
        current: PASSWORD.to_owned(),
        previous: None,
    };
    for expected in ["add", "remove"] {
        let step = passwords::step(&pods, NEW_PASSWORD, true);
        let converged = passwords::converge(&target, &DirectResolver, &pods, &step, "").await;
        ensure!(converged.complete(), "{converged:?}");
        ensure!(
            converged.changed == ["data-plane-0 redis: set the clients' passwords"],
            "{converged:?}"
        );
        match (expected, step) {
            ("add", Step::AddNew { next }) => {
                for password in [PASSWORD, NEW_PASSWORD] {
                    ensure!(redis_cli(server.port, Some(password), &["GET", "kept"])? == "1");
                }
                pods = next;
            }
            ("remove", Step::RemoveOld { next }) => {
                ensure!(redis_cli(server.port, Some(NEW_PASSWORD), &["GET", "kept"])? == "1");
                let old = redis_cli(server.port, Some(PASSWORD), &["GET", "kept"])?;
                ensure!(old != "1", "the old password still works: {old}");
                pods = next;
            }
            (expected, step) => bail!("expected to {expected}, the step was {step:?}"),
        }
    }
    ensure!(passwords::step(&pods, NEW_PASSWORD, true) == Step::Steady);
    // The probes' user never moved, and the server never restarted.
    ensure!(operator_cli(&["PING"])? == "PONG");
    ensure!(run_id()? == before, "the server restarted");
    drop(server);
    std::fs::remove_dir_all(&directory)?;
    Ok(())
}

fn tempdir() -> Result<std::path::PathBuf> {
    let unique = format!(
        "redis-data-plane-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let directory = std::env::temp_dir().join(unique);
    std::fs::create_dir_all(&directory)?;
    Ok(directory)
}
