//! `drctl token` and configuration errors, through the real binary (no services needed).

mod common;

use common::{JWT_SECRET, drctl};
use drfleet_infra::auth::Claims;
use drfleet_protocol::OrganizationId;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

fn stderr_lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn token_verifies_with_the_secret_and_carries_the_claims() {
    let org = OrganizationId::new();
    let out = drctl()
        .args([
            "token",
            "--org",
            &org.to_string(),
            "--perm",
            "pf.backup.create",
            "--perm",
            "pf.dr-drill.run",
            "--sub",
            "alice",
            "--ttl",
            "120",
        ])
        .env("DR_AUTH_JWT_SECRET", JWT_SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
    let token = stdout.trim();

    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &validation,
    )
    .unwrap();
    let c = data.claims;
    assert_eq!(c.org, org.to_string());
    assert_eq!(c.sub, "alice");
    assert_eq!(c.perms, ["pf.backup.create", "pf.dr-drill.run"]);
    let now = chrono::Utc::now().timestamp() as u64;
    assert!(
        c.exp > now + 100 && c.exp <= now + 121,
        "exp {} vs now {now}",
        c.exp
    );

    // Another secret does not verify it.
    let other = DecodingKey::from_secret(b"another-secret-another-secret-another");
    assert!(jsonwebtoken::decode::<Claims>(token, &other, &validation).is_err());
}

#[test]
fn default_sub_and_ttl() {
    let org = OrganizationId::new();
    let out = drctl()
        .args(["token", "--org", &org.to_string(), "--perm", "pf.backup.*"])
        .env("DR_AUTH_JWT_SECRET", JWT_SECRET)
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let data = jsonwebtoken::decode::<Claims>(
        token.trim(),
        &DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &Validation::new(Algorithm::HS256),
    )
    .unwrap();
    assert_eq!(data.claims.sub, "drctl");
    let now = chrono::Utc::now().timestamp() as u64;
    assert!(data.claims.exp > now + 3500 && data.claims.exp <= now + 3601);
}

#[test]
fn missing_secret_is_one_line_and_exit_2() {
    let out = drctl()
        .args([
            "token",
            "--org",
            &OrganizationId::new().to_string(),
            "--perm",
            "pf.backup.create",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("DR_AUTH_JWT_SECRET"), "{lines:?}");
}

#[test]
fn short_secret_is_refused_without_echo() {
    let out = drctl()
        .args([
            "token",
            "--org",
            &OrganizationId::new().to_string(),
            "--perm",
            "pf.backup.create",
        ])
        .env("DR_AUTH_JWT_SECRET", "SHORT-SECRET-MARKER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("DR_AUTH_JWT_SECRET") && lines[0].contains("32 bytes"),
        "{lines:?}"
    );
    assert!(!lines[0].contains("SHORT-SECRET-MARKER"));
}

#[test]
fn invalid_org_is_exit_2() {
    let long = "x".repeat(257);
    for args in [
        // Any tenant key's text is an --org (uuid, integer or text: the worker checks the
        // type); control characters, the nil UUID and more than 256 bytes are not.
        vec!["token", "--org", "a\tb", "--perm", "pf.backup.create"],
        vec![
            "backup",
            "--org",
            "00000000-0000-0000-0000-000000000000",
            "--no-wait",
        ],
        vec![
            "verify",
            "--org",
            &long,
            "--backup",
            "0b0f7f6e-0000-0000-0000-000000000000",
        ],
    ] {
        let out = drctl()
            .args(&args)
            .env("DR_AUTH_JWT_SECRET", JWT_SECRET)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let lines = stderr_lines(&out);
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(lines[0].contains("--org"), "{lines:?}");
    }
}

#[test]
fn commands_without_token_or_secret_are_exit_2() {
    let out = drctl()
        .args([
            "backup",
            "--org",
            &OrganizationId::new().to_string(),
            "--no-wait",
        ])
        .env("DR_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("DR_ACTOR_TOKEN"), "{lines:?}");
}

#[test]
fn invalid_command_fields_are_exit_2_before_connecting() {
    // A tier the contract refuses; the broker URL points nowhere, so reaching it would fail
    // with another code.
    let out = drctl()
        .args([
            "backup",
            "--org",
            &OrganizationId::new().to_string(),
            "--tier",
            "Not A Tier",
            "--no-wait",
        ])
        .env("DR_AUTH_JWT_SECRET", JWT_SECRET)
        .env("DR_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("backup.tier"), "{lines:?}");
}

#[test]
fn unreachable_broker_is_exit_4() {
    let out = drctl()
        .args([
            "backup",
            "--org",
            &OrganizationId::new().to_string(),
            "--no-wait",
        ])
        .env("DR_AUTH_JWT_SECRET", JWT_SECRET)
        .env("DR_AMQP_URL", "amqp://guest:SECRETPW@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("SECRETPW"), "{err}");
    assert!(!err.contains(JWT_SECRET), "{err}");
}
