//! `drctl token`, and minting for commands sent without `--token`.

use drfleet_infra::auth::{MIN_HMAC_SECRET, TokenMinter};
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

/// The minter of `args`: the private key if set, else the secret (required then).
pub fn minter(args: &SecretArgs) -> Result<TokenMinter, ConfigError> {
    match args.auth_jwt_private_key.as_deref() {
        Some(pem) if !pem.is_empty() => {
            TokenMinter::from_private_pem(pem, "DR_AUTH_JWT_PRIVATE_KEY")
        }
        _ => TokenMinter::from_secret(require_secret(args)?),
    }
}

/// Whether `args` can mint a token (a secret or a private key is set).
pub fn can_mint(args: &SecretArgs) -> bool {
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    set(&args.auth_jwt_secret) || set(&args.auth_jwt_private_key)
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
    let minter = minter(secret)?;
    check_sub(sub)?;
    perms.iter().try_for_each(|p| check_perm(p))?;
    minter
        .mint(sub, org.as_str(), perms, ttl_secs)
        .map_err(|e| {
            let setting = if secret.auth_jwt_private_key.is_some() {
                "DR_AUTH_JWT_PRIVATE_KEY"
            } else {
                "DR_AUTH_JWT_SECRET"
            };
            ConfigError::new(setting, e.to_string())
        })
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
            ..Default::default()
        };
        let e = require_secret(&short).unwrap_err();
        assert!(!e.to_string().contains("SHORTSECRET"));
        let ok = SecretArgs {
            auth_jwt_secret: Some("x".repeat(32)),
            ..Default::default()
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

    // A throwaway P-256 keypair for this test only.
    const ES_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgyZo1zg5F3b5NYrXS
NYHPJHM6OQIQizVckLYdMR3CkiWhRANCAASmCQxf2JKZuRM/LKzEgUh/9e39Ec52
rPuwfLZKeVV41Tepd5AARUFd9c5ez+DTtGJvoJ85EeLHxq39X+cC3ESZ
-----END PRIVATE KEY-----
";
    const ES_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEpgkMX9iSmbkTPyysxIFIf/Xt/RHO
dqz7sHy2SnlVeNU3qXeQAEVBXfXOXs/g07Rib6CfORHix8at/V/nAtxEmQ==
-----END PUBLIC KEY-----
";

    #[test]
    fn a_private_key_mints_es256_tokens_the_workers_verify_with_the_public_key() {
        let org = drfleet_protocol::OrganizationId::new();
        let key = TenantKey::from(org);
        let args = SecretArgs {
            auth_jwt_private_key: Some(ES_PRIVATE.into()),
            ..Default::default()
        };
        assert!(can_mint(&args) && !can_mint(&SecretArgs::default()));
        let t = mint(&args, "alice", &key, &["pf.backup.create".into()], 60).unwrap();
        let verifier = drfleet_infra::auth::TokenVerifier::new(None, Some(ES_PUBLIC)).unwrap();
        let actor = verifier.verify(&t).unwrap();
        assert_eq!((actor.sub.as_str(), actor.org), ("alice", org));
        let bad = SecretArgs {
            auth_jwt_private_key: Some("not a key".into()),
            ..Default::default()
        };
        let e = mint(&bad, "alice", &key, &[], 60).unwrap_err();
        assert_eq!(e.setting, "DR_AUTH_JWT_PRIVATE_KEY");
        assert!(!e.to_string().contains("not a key"));
    }
}
