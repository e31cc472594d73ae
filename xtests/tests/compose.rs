//! `docker-compose.yml` at the repository root: parsed (YAML merge keys resolved) and checked
//! against what the workers need, since CI has no Docker engine to run it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

// The roles this build has.
const COMMAND_ROLES: [&str; 4] = ["backup", "restore", "drill", "verify"];
const ALL_ROLES: [&str; 7] = [
    "backup",
    "restore",
    "drill",
    "verify",
    "policy",
    "retention",
    "audit",
];
const BUCKET: &str = "drfleet-artifacts";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn raw_compose() -> String {
    read("docker-compose.yml")
}

/// The compose file with `<<` merge keys applied.
fn compose() -> Value {
    let mut v: Value = serde_yaml_ng::from_str(&raw_compose()).expect("docker-compose.yml is YAML");
    v.apply_merge().expect("merge keys resolve");
    v
}

fn services(doc: &Value) -> &Mapping {
    doc.get("services")
        .and_then(Value::as_mapping)
        .expect("a services mapping")
}

fn service<'a>(doc: &'a Value, name: &str) -> &'a Value {
    services(doc)
        .get(name)
        .unwrap_or_else(|| panic!("service {name} is defined"))
}

fn worker(role: &str) -> String {
    format!("worker-{role}")
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// `environment` as a map, from either the mapping or the `KEY=value` list form.
fn env(svc: &Value) -> BTreeMap<String, String> {
    match svc.get("environment") {
        None => BTreeMap::new(),
        Some(Value::Mapping(m)) => m.iter().map(|(k, v)| (str_of(k), str_of(v))).collect(),
        Some(Value::Sequence(s)) => s
            .iter()
            .map(|e| {
                let e = str_of(e);
                let (k, v) = e.split_once('=').unwrap_or((&e, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        Some(other) => panic!("environment is neither a mapping nor a list: {other:?}"),
    }
}

/// A string or exec-form command as a list of words.
fn words(v: Option<&Value>) -> Vec<String> {
    match v {
        None => Vec::new(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        Some(Value::Sequence(s)) => s.iter().map(str_of).collect(),
        Some(other) => panic!("not a command: {other:?}"),
    }
}

/// `depends_on` as service → condition (the short list form means `service_started`).
fn depends_on(svc: &Value) -> BTreeMap<String, String> {
    match svc.get("depends_on") {
        None => BTreeMap::new(),
        Some(Value::Sequence(s)) => s
            .iter()
            .map(|d| (str_of(d), "service_started".to_string()))
            .collect(),
        Some(Value::Mapping(m)) => m
            .iter()
            .map(|(k, v)| {
                let cond = v
                    .get("condition")
                    .map(str_of)
                    .unwrap_or("service_started".into());
                (str_of(k), cond)
            })
            .collect(),
        Some(other) => panic!("depends_on: {other:?}"),
    }
}

/// Published ports' container sides.
fn container_ports(svc: &Value) -> BTreeSet<String> {
    let Some(Value::Sequence(ports)) = svc.get("ports") else {
        return BTreeSet::new();
    };
    ports
        .iter()
        .map(|p| match p {
            Value::Mapping(m) => str_of(m.get("target").expect("long-form port has target")),
            other => str_of(other).rsplit(':').next().unwrap().to_string(),
        })
        .collect()
}

/// Whether `value` is exactly `${NAME:?message}`: required, no default.
fn is_required_var(value: &str, name: &str) -> bool {
    let Some(rest) = value.strip_prefix(&format!("${{{name}:?")) else {
        return false;
    };
    let Some(message) = rest.strip_suffix('}') else {
        return false;
    };
    !message.trim().is_empty() && !message.contains(['$', '{', '}'])
}

#[test]
fn top_level_keys_are_compose_keys() {
    let doc = compose();
    let allowed = [
        "services", "volumes", "networks", "configs", "secrets", "name",
    ];
    for key in doc.as_mapping().expect("a mapping at the top").keys() {
        let key = str_of(key);
        assert!(
            allowed.contains(&key.as_str()) || key.starts_with("x-"),
            "top-level key {key:?} is not a compose key or an x- extension"
        );
    }
}

#[test]
fn the_worker_settings_are_shared_through_an_extension_field() {
    let raw: Value = serde_yaml_ng::from_str(&raw_compose()).unwrap();
    assert!(
        raw.get("x-worker").is_some(),
        "an x-worker extension holds the common worker keys"
    );
    let raw_text = raw_compose();
    for role in ALL_ROLES {
        let svc = &raw["services"][worker(role).as_str()];
        assert!(
            svc.get("<<").is_some(),
            "{}: merges the worker anchor",
            worker(role)
        );
    }
    assert!(raw_text.contains("&worker"), "x-worker is an anchor");
    // Nothing is left unresolved after merging.
    let merged = serde_yaml_ng::to_string(&compose()).unwrap();
    assert!(!merged.contains("<<"));
}

#[test]
fn expected_services_exist() {
    let doc = compose();
    let mut expected = vec![
        "rabbitmq",
        "postgres",
        "minio",
        "minio-init",
        "scheduler",
        "otel-collector",
        "jaeger",
    ]
    .into_iter()
    .map(String::from)
    .collect::<BTreeSet<_>>();
    expected.extend(ALL_ROLES.map(worker));
    let defined: BTreeSet<String> = services(&doc).keys().map(str_of).collect();
    let missing: Vec<_> = expected.difference(&defined).collect();
    assert!(missing.is_empty(), "missing services: {missing:?}");
}

#[test]
fn images_are_named() {
    let doc = compose();
    let image = |name: &str| {
        service(&doc, name)
            .get("image")
            .map(str_of)
            .unwrap_or_default()
    };
    assert_eq!(image("rabbitmq"), "rabbitmq:3.13-management");
    assert_eq!(image("postgres"), "postgres:16");
    assert!(
        image("minio").starts_with("minio/minio"),
        "{}",
        image("minio")
    );
    assert!(
        image("minio-init").starts_with("minio/mc"),
        "{}",
        image("minio-init")
    );
    // Pinned: a collector or viewer release that changes its config format must not break
    // `docker compose up` unannounced.
    for (name, repo) in [
        ("otel-collector", "otel/opentelemetry-collector:"),
        ("jaeger", "jaegertracing/jaeger:"),
    ] {
        let tag = image(name);
        assert!(
            tag.starts_with(repo) && !tag.ends_with(":latest"),
            "{name}: {tag}"
        );
    }
    for (name, svc) in services(&doc) {
        let name = str_of(name);
        let has_image = svc.get("image").map(str_of).is_some_and(|i| !i.is_empty());
        assert!(
            has_image || svc.get("build").is_some(),
            "{name}: needs an image or a build"
        );
    }
}

#[test]
fn workers_build_from_the_repository_dockerfile() {
    let doc = compose();
    for role in ALL_ROLES {
        let svc = service(&doc, &worker(role));
        let build = svc
            .get("build")
            .unwrap_or_else(|| panic!("{}: build", worker(role)));
        assert_eq!(build.get("context").map(str_of).as_deref(), Some("."));
        let dockerfile = build
            .get("dockerfile")
            .map(str_of)
            .unwrap_or("Dockerfile".into());
        let text = read(&dockerfile);
        assert!(
            text.contains("FROM rust:1-bookworm AS build"),
            "{dockerfile}: build stage"
        );
        assert!(
            text.contains("FROM debian:bookworm-slim"),
            "{dockerfile}: runtime stage"
        );
        assert!(
            text.contains("cargo build --release")
                && text.contains("-p drfleet-workers")
                && text.contains("-p drctl"),
            "{dockerfile}: builds drfleet-workers and drctl"
        );
        for bin in ["drfleet-worker", "drctl"] {
            assert!(
                text.contains(&format!("/out/{bin}")),
                "{dockerfile}: copies {bin}"
            );
        }
        let user = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("USER "))
            .next_back()
            .unwrap_or_else(|| panic!("{dockerfile}: sets a USER"));
        assert!(
            !user.starts_with("root") && !user.starts_with('0'),
            "{dockerfile}: runs as {user}"
        );
    }
}

#[test]
fn each_worker_runs_its_role() {
    let doc = compose();
    for role in ALL_ROLES {
        let cmd = words(service(&doc, &worker(role)).get("command"));
        assert_eq!(cmd, ["drfleet-worker", "--role", role], "{}", worker(role));
    }
}

#[test]
fn every_worker_reaches_the_broker_and_the_database() {
    let doc = compose();
    for role in ALL_ROLES {
        let env = env(service(&doc, &worker(role)));
        let w = worker(role);
        assert_eq!(
            env.get("DR_AMQP_URL").map(String::as_str),
            Some("amqp://guest:guest@rabbitmq:5672/%2f"),
            "{w}"
        );
        assert_eq!(
            env.get("DR_DATABASE_URL").map(String::as_str),
            Some("postgres://drfleet:drfleet@postgres:5432/drfleet"),
            "{w}"
        );
        assert_eq!(
            env.get("DR_HTTP_ADDR").map(String::as_str),
            Some("0.0.0.0:8080"),
            "{w}"
        );
        assert_eq!(
            env.get("DR_LOG_FORMAT").map(String::as_str),
            Some("json"),
            "{w}"
        );
        // drfleet's own settings, the object store's, and the standard OpenTelemetry ones.
        for key in env.keys() {
            assert!(
                key.starts_with("DR_") || key.starts_with("AWS_") || key.starts_with("OTEL_"),
                "{w}: unexpected setting {key}"
            );
        }
    }
}

#[test]
fn command_workers_require_their_secrets() {
    let doc = compose();
    for role in COMMAND_ROLES {
        let w = worker(role);
        let env = env(service(&doc, &w));
        for secret in ["DR_MASTER_KEY", "DR_AUTH_JWT_SECRET"] {
            let v = env
                .get(secret)
                .unwrap_or_else(|| panic!("{w}: {secret} is set"));
            assert!(
                is_required_var(v, secret),
                "{w}: {secret} must be `${{{secret}:?...}}` (required, no default), got {v:?}"
            );
        }
        assert_eq!(
            env["DR_MASTER_KEY_ID"], "${DR_MASTER_KEY_ID:-local-1}",
            "{w}"
        );
        assert_eq!(
            env["DR_OBJECT_STORE_URL"],
            format!("s3://{BUCKET}/artifacts"),
            "{w}"
        );
        assert_eq!(env["AWS_ENDPOINT_URL"], "http://minio:9000", "{w}");
        assert_eq!(env["AWS_REGION"], "us-east-1", "{w}");
        assert_eq!(env["AWS_ALLOW_HTTP"], "true", "{w}");
        assert!(!env["AWS_ACCESS_KEY_ID"].is_empty(), "{w}");
        assert!(!env["AWS_SECRET_ACCESS_KEY"].is_empty(), "{w}");
    }
}

#[test]
fn no_secret_has_a_default_anywhere() {
    let raw = raw_compose();
    for secret in ["DR_MASTER_KEY", "DR_AUTH_JWT_SECRET"] {
        for default_form in [
            format!("${{{secret}:-"),
            format!("${{{secret}-"),
            format!("${{{secret}}}"),
            format!("${secret}"),
        ] {
            assert!(
                !raw.contains(&default_form),
                "{secret} must not be interpolated as {default_form:?}"
            );
        }
    }
    for line in raw.lines().map(str::trim) {
        for secret in [
            "DR_MASTER_KEY:",
            "DR_AUTH_JWT_SECRET:",
            "DR_MASTER_KEY=",
            "DR_AUTH_JWT_SECRET=",
        ] {
            if let Some(value) = line
                .strip_prefix(secret)
                .or_else(|| line.strip_prefix(&format!("- {secret}")))
            {
                assert!(
                    value.trim().starts_with("${"),
                    "a literal value for {secret}: {line:?}"
                );
            }
        }
    }
}

#[test]
fn audit_worker_gets_only_broker_and_database() {
    let doc = compose();
    let env = env(service(&doc, "worker-audit"));
    for absent in [
        "DR_MASTER_KEY",
        "DR_MASTER_KEY_ID",
        "DR_AUTH_JWT_SECRET",
        "DR_OBJECT_STORE_URL",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
    ] {
        assert!(
            !env.contains_key(absent),
            "worker-audit should not get {absent}"
        );
    }
}

#[test]
fn policy_worker_gets_the_token_secret_but_no_artifact_settings() {
    let doc = compose();
    let env = env(service(&doc, "worker-policy"));
    assert!(is_required_var(
        &env["DR_AUTH_JWT_SECRET"],
        "DR_AUTH_JWT_SECRET"
    ));
    for absent in [
        "DR_MASTER_KEY",
        "DR_MASTER_KEY_ID",
        "DR_OBJECT_STORE_URL",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
    ] {
        assert!(
            !env.contains_key(absent),
            "worker-policy should not get {absent}"
        );
    }
}

#[test]
fn every_dependency_is_a_defined_service() {
    let doc = compose();
    let defined: BTreeSet<String> = services(&doc).keys().map(str_of).collect();
    let conditions = [
        "service_started",
        "service_healthy",
        "service_completed_successfully",
    ];
    for (name, svc) in services(&doc) {
        let name = str_of(name);
        for (dep, condition) in depends_on(svc) {
            assert!(
                defined.contains(&dep),
                "{name} depends on undefined service {dep}"
            );
            assert_ne!(dep, name, "{name} depends on itself");
            assert!(
                conditions.contains(&condition.as_str()),
                "{name} → {dep}: condition {condition}"
            );
            if condition == "service_healthy" {
                assert!(
                    service(&doc, &dep).get("healthcheck").is_some(),
                    "{name} waits for {dep} to be healthy, which has no healthcheck"
                );
            }
        }
    }
}

#[test]
fn workers_wait_for_their_dependencies() {
    let doc = compose();
    for role in ALL_ROLES {
        let w = worker(role);
        let deps = depends_on(service(&doc, &w));
        assert_eq!(
            deps.get("rabbitmq").map(String::as_str),
            Some("service_healthy"),
            "{w}"
        );
        assert_eq!(
            deps.get("postgres").map(String::as_str),
            Some("service_healthy"),
            "{w}"
        );
        if role != "audit" && role != "policy" {
            assert_eq!(
                deps.get("minio-init").map(String::as_str),
                Some("service_completed_successfully"),
                "{w}"
            );
        }
    }
    let init = depends_on(service(&doc, "minio-init"));
    assert_eq!(
        init.get("minio").map(String::as_str),
        Some("service_healthy")
    );
}

/// `key = value` lines of a rabbitmq.conf (sysctl format), comments dropped.
fn rabbitmq_settings(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not key = value: {l:?}"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

#[test]
fn rabbitmq_mounts_a_config_raising_the_consumer_timeout() {
    let doc = compose();
    let rmq = service(&doc, "rabbitmq");
    let Some(Value::Sequence(volumes)) = rmq.get("volumes") else {
        panic!("rabbitmq has volumes")
    };
    let config = volumes
        .iter()
        .filter_map(|v| match v {
            Value::String(s) => {
                let mut parts = s.split(':');
                Some((parts.next()?.to_string(), parts.next()?.to_string()))
            }
            Value::Mapping(_) => Some((str_of(&v["source"]), str_of(&v["target"]))),
            _ => None,
        })
        .find(|(source, target)| source.starts_with("./") && target.starts_with("/etc/rabbitmq/"))
        .expect("a config file bind-mounted under /etc/rabbitmq");
    let (source, target) = config;
    assert!(
        target == "/etc/rabbitmq/rabbitmq.conf"
            || (target.starts_with("/etc/rabbitmq/conf.d/") && target.ends_with(".conf")),
        "{target} is not a file RabbitMQ loads"
    );
    let settings = rabbitmq_settings(&read(&source));
    let timeout: u64 = settings
        .get("consumer_timeout")
        .unwrap_or_else(|| panic!("{source} sets consumer_timeout"))
        .parse()
        .expect("consumer_timeout is milliseconds");
    assert_eq!(timeout, 7_200_000, "2 h");

    let ports = container_ports(rmq);
    assert!(
        ports.contains("5672") && ports.contains("15672"),
        "{ports:?}"
    );
    let health = words(rmq["healthcheck"].get("test")).join(" ");
    assert!(health.contains("rabbitmq-diagnostics -q ping"), "{health}");
}

#[test]
fn postgres_matches_the_workers_database_url() {
    let doc = compose();
    let pg = service(&doc, "postgres");
    let env = env(pg);
    for key in ["POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"] {
        assert_eq!(env.get(key).map(String::as_str), Some("drfleet"), "{key}");
    }
    assert!(container_ports(pg).contains("5432"));
    let health = words(pg["healthcheck"].get("test")).join(" ");
    assert!(health.contains("pg_isready"), "{health}");
    let url = format!(
        "postgres://{}:{}@postgres:5432/{}",
        env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]
    );
    let workers = self::env(service(&doc, "worker-backup"));
    assert_eq!(workers["DR_DATABASE_URL"], url);
}

#[test]
fn minio_serves_the_artifact_bucket() {
    let doc = compose();
    let minio = service(&doc, "minio");
    assert_eq!(
        words(minio.get("command")),
        ["server", "/data", "--console-address", ":9001"]
    );
    let ports = container_ports(minio);
    assert!(
        ports.contains("9000") && ports.contains("9001"),
        "{ports:?}"
    );

    let init = service(&doc, "minio-init");
    let script = [words(init.get("entrypoint")), words(init.get("command"))]
        .concat()
        .join(" ");
    assert!(script.contains("mc mb"), "{script}");
    assert!(
        script.contains(&format!("/{BUCKET}")),
        "minio-init creates {BUCKET}: {script}"
    );

    // The workers' S3 credentials are MinIO's.
    let m = env(minio);
    let w = env(service(&doc, "worker-backup"));
    assert_eq!(w["AWS_ACCESS_KEY_ID"], m["MINIO_ROOT_USER"]);
    assert_eq!(w["AWS_SECRET_ACCESS_KEY"], m["MINIO_ROOT_PASSWORD"]);
    let bucket = w["DR_OBJECT_STORE_URL"]
        .strip_prefix("s3://")
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    assert_eq!(bucket, BUCKET);
}

#[test]
fn named_volumes_are_declared() {
    let doc = compose();
    let declared: BTreeSet<String> = doc
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|m| m.keys().map(str_of).collect())
        .unwrap_or_default();
    for (name, svc) in services(&doc) {
        let Some(Value::Sequence(volumes)) = svc.get("volumes") else {
            continue;
        };
        for v in volumes {
            let source = match v {
                Value::String(s) => s.split(':').next().unwrap().to_string(),
                other => str_of(&other["source"]),
            };
            if source.starts_with(['.', '/', '~']) {
                let path = repo_root().join(&source);
                assert!(
                    !source.starts_with("./") || path.exists(),
                    "{}: {source} does not exist",
                    str_of(name)
                );
            } else {
                assert!(
                    declared.contains(&source),
                    "{}: volume {source} is not declared",
                    str_of(name)
                );
            }
        }
    }
}

#[test]
fn required_var_parser() {
    assert!(is_required_var("${DR_MASTER_KEY:?set it}", "DR_MASTER_KEY"));
    assert!(!is_required_var(
        "${DR_MASTER_KEY:-default}",
        "DR_MASTER_KEY"
    ));
    assert!(!is_required_var("${DR_MASTER_KEY}", "DR_MASTER_KEY"));
    assert!(!is_required_var("${DR_MASTER_KEY:?}", "DR_MASTER_KEY"));
    assert!(!is_required_var("${DR_MASTER_KEY_ID:?x}", "DR_MASTER_KEY"));
    assert!(!is_required_var("literal", "DR_MASTER_KEY"));
}

/// Every drfleet process of the stack: the workers and the scheduler.
fn drfleet_services() -> Vec<String> {
    let mut names: Vec<String> = ALL_ROLES.map(worker).to_vec();
    names.push("scheduler".into());
    names
}

/// `host:port` of an `http://host:port[/path]` or `host:port` endpoint.
fn host_port(endpoint: &str) -> (String, u16) {
    let rest = endpoint
        .strip_prefix("http://")
        .unwrap_or(endpoint)
        .split('/')
        .next()
        .unwrap();
    let (host, port) = rest
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{endpoint}: host:port"));
    (host.to_string(), port.parse().expect("a port number"))
}

fn collector_config() -> Value {
    serde_yaml_ng::from_str(&read("deploy/otel-collector.yaml"))
        .expect("deploy/otel-collector.yaml is YAML")
}

#[test]
fn every_drfleet_process_sends_its_traces_to_the_collector_under_its_own_name() {
    let doc = compose();
    let mut names = BTreeSet::new();
    for name in drfleet_services() {
        let env = env(service(&doc, &name));
        let endpoint = env
            .get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .unwrap_or_else(|| panic!("{name}: OTEL_EXPORTER_OTLP_ENDPOINT"));
        // The base URL (the exporter adds /v1/traces), OTLP/HTTP: the only protocol built.
        assert!(endpoint.starts_with("http://"), "{name}: {endpoint}");
        let (host, port) = host_port(endpoint);
        assert_eq!((host.as_str(), port), ("otel-collector", 4318), "{name}");
        for var in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ] {
            if let Some(p) = env.get(var) {
                assert_eq!(p, "http/protobuf", "{name}: {var}");
            }
        }
        assert!(
            !env.contains_key("OTEL_SDK_DISABLED") && !env.contains_key("OTEL_TRACES_EXPORTER"),
            "{name}: traces are not switched off"
        );
        let service_name = env
            .get("OTEL_SERVICE_NAME")
            .unwrap_or_else(|| panic!("{name}: OTEL_SERVICE_NAME"));
        assert!(
            service_name.starts_with("drfleet-"),
            "{name}: {service_name}"
        );
        assert!(
            names.insert(service_name.clone()),
            "{service_name} is used twice"
        );
    }
}

#[test]
fn the_collector_receives_otlp_http_and_forwards_traces_to_jaeger() {
    let doc = compose();
    let collector = service(&doc, "otel-collector");
    // Its configuration is the repository's file, where the image reads it.
    let mounted = collector
        .get("volumes")
        .and_then(Value::as_sequence)
        .expect("otel-collector: volumes")
        .iter()
        .map(str_of)
        .find(|v| v.starts_with("./deploy/otel-collector.yaml:"))
        .expect("otel-collector mounts deploy/otel-collector.yaml");
    let target = mounted.split(':').nth(1).unwrap();
    let args = words(collector.get("command"));
    assert!(
        args.contains(&format!("--config={target}")),
        "otel-collector: --config={target} in {args:?}"
    );
    assert!(depends_on(collector).contains_key("jaeger"));
    assert!(
        container_ports(collector).contains("4318"),
        "OTLP/HTTP published"
    );

    let cfg = collector_config();
    let http = &cfg["receivers"]["otlp"]["protocols"]["http"]["endpoint"];
    assert_eq!(host_port(&str_of(http)).1, 4318, "OTLP/HTTP receiver port");

    // The traces pipeline: every component it names is defined; it ends at Jaeger.
    let pipeline = &cfg["service"]["pipelines"]["traces"];
    let names = |key: &str| -> Vec<String> {
        pipeline[key]
            .as_sequence()
            .unwrap_or_else(|| panic!("traces pipeline: {key}"))
            .iter()
            .map(str_of)
            .collect()
    };
    for (key, section) in [
        ("receivers", "receivers"),
        ("processors", "processors"),
        ("exporters", "exporters"),
    ] {
        for n in names(key) {
            assert!(
                cfg[section].get(n.as_str()).is_some(),
                "traces pipeline: {n} is not defined under {section}"
            );
        }
    }
    assert!(names("receivers").contains(&"otlp".to_string()));
    let to_jaeger = names("exporters")
        .into_iter()
        .map(|n| str_of(&cfg["exporters"][n.as_str()]["endpoint"]))
        .any(|e| host_port(&e) == ("jaeger".to_string(), 4317));
    assert!(to_jaeger, "the traces pipeline exports to jaeger:4317");
}

#[test]
fn jaeger_serves_its_ui() {
    let doc = compose();
    assert!(container_ports(service(&doc, "jaeger")).contains("16686"));
}

#[test]
fn the_scheduler_runs_from_the_worker_image_with_its_settings() {
    let doc = compose();
    let svc = service(&doc, "scheduler");
    assert_eq!(words(svc.get("command")), ["drfleet-scheduler"]);
    assert_eq!(
        svc.get("image").map(str_of),
        service(&doc, &worker("backup")).get("image").map(str_of)
    );
    let env = env(svc);
    assert!(is_required_var(
        &env["DR_AUTH_JWT_SECRET"],
        "DR_AUTH_JWT_SECRET"
    ));
    for absent in ["DR_MASTER_KEY", "AWS_SECRET_ACCESS_KEY"] {
        assert!(
            !env.contains_key(absent),
            "scheduler should not get {absent}"
        );
    }
    let deps = depends_on(svc);
    for dep in ["rabbitmq", "postgres"] {
        assert_eq!(
            deps.get(dep).map(String::as_str),
            Some("service_healthy"),
            "{dep}"
        );
    }
}
