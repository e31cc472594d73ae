//! `drctl token`, and minting for commands sent without `--token`.

use drfleet_infra::auth::{MIN_HMAC_SECRET, mint_hs256_for_key};
use drfleet_infra::config::ConfigError;
use drfleet_protocol::tenant::TenantKey;

use crate::cli::{SecretArgs, TokenArgs};

/// `DR_AUTH_JWT_SECRET`, required and at least 32 bytes. Errors never include the value.
pub fn require_secret(args: &SecretArgs) -> Result<&str, ConfigError> {
    match args.auth_jwt_secret.as_deref() {
        None | Some("") => Err(ConfigError::new("DR_AUTH_JWT_SECRET", "is required")),
        Some(s) if s.len() < MIN_HMAC_SECRET => Err(ConfigError::new(
            "DR_AUTH_JWT_SECRET",
            "must be at least 32 bytes",
        )),
        Some(s) => Ok(s),
    }
}

/// The token subject: 1 to 256 printable characters (what workers accept).
pub fn check_sub(sub: &str) -> Result<(), ConfigError> {
    if sub.is_empty() || sub.len() > 256 || sub.chars().any(char::is_control) {
        return Err(ConfigError::new(
            "DR_ACTOR_SUB",
            "must be 1 to 256 printable characters",
        ));
    }
    Ok(())
}

/// A permission key or family: printable ASCII, no spaces.
fn check_perm(p: &str) -> Result<(), ConfigError> {
    if p.is_empty() || p.len() > 128 || !p.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            "--perm",
            "must be a permission key such as pf.backup.create or pf.backup.*",
        ));
    }
    Ok(())
}

/// Mint a token for `org` with `perms`.
pub fn mint(
    secret: &SecretArgs,
    sub: &str,
    org: &TenantKey,
    perms: &[String],
    ttl_secs: u64,
) -> Result<String, ConfigError> {
    let secret = require_secret(secret)?;
    check_sub(sub)?;
    perms.iter().try_for_each(|p| check_perm(p))?;
    Ok(mint_hs256_for_key(
        secret,
        sub,
        org.as_str(),
        perms,
        ttl_secs,
    ))
}

/// `drctl token`: the token, for stdout.
pub fn token(args: &TokenArgs) -> Result<String, ConfigError> {
    mint(&args.secret, &args.sub, &args.org, &args.perms, args.ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_rules_never_echo() {
        let missing = require_secret(&SecretArgs::default()).unwrap_err();
        assert_eq!(missing.setting, "DR_AUTH_JWT_SECRET");
        let short = SecretArgs {
            auth_jwt_secret: Some("SHORTSECRET".into()),
        };
        let e = require_secret(&short).unwrap_err();
        assert!(!e.to_string().contains("SHORTSECRET"));
        let ok = SecretArgs {
            auth_jwt_secret: Some("x".repeat(32)),
        };
        assert!(
            mint(
                &ok,
                "alice",
                &TenantKey::from(drfleet_protocol::OrganizationId::new()),
                &["pf.backup.*".into()],
                60
            )
            .is_ok()
        );
        assert!(
            mint(
                &ok,
                "",
                &TenantKey::from(drfleet_protocol::OrganizationId::new()),
                &[],
                60
            )
            .is_err()
        );
        assert!(
            mint(
                &ok,
                "a",
                &TenantKey::from(drfleet_protocol::OrganizationId::new()),
                &["has space".into()],
                60
            )
            .is_err()
        );
    }
}
