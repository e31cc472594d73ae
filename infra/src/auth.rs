//! Actor tokens: JWTs with claims `sub`, `org`, `perms`, `exp` (required) and `iat`.
//! `org` is the tenant key's text (a UUID for the platform's tokens; see
//! `drfleet_protocol::tenant`), compared with a command's by canonical form.
//!
//! Verification accepts HS256 with `DR_AUTH_JWT_SECRET` and, when `DR_AUTH_JWT_PUBLIC_KEY` is
//! set, RS256 or ES256. `alg: none` and every other algorithm are refused. Errors carry a
//! static reason only: a token is never echoed.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use drfleet_protocol::OrganizationId;
use drfleet_protocol::auth::authorized;

use crate::config::{ConfigError, Secret};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub org: String,
    #[serde(default)]
    pub perms: Vec<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Who issued a command, as proven by its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub sub: String,
    pub org: OrganizationId,
    pub perms: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token {0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
}

/// Checks tokens. Cheap to clone.
#[derive(Clone)]
pub struct TokenVerifier {
    hmac: Option<DecodingKey>,
    public: Option<(DecodingKey, Algorithm)>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenVerifier(<keys redacted>)")
    }
}

/// Smallest HS256 secret accepted (RFC 7518 §3.2: at least the hash size).
pub const MIN_HMAC_SECRET: usize = 32;

impl TokenVerifier {
    /// From `DR_AUTH_JWT_SECRET` and/or `DR_AUTH_JWT_PUBLIC_KEY` (PEM, RSA or EC P-256).
    pub fn new(
        secret: Option<&Secret<String>>,
        public_pem: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let hmac = match secret {
            Some(s) if s.expose().len() < MIN_HMAC_SECRET => {
                return Err(ConfigError::new(
                    "DR_AUTH_JWT_SECRET",
                    "must be at least 32 bytes",
                ));
            }
            Some(s) => Some(DecodingKey::from_secret(s.expose().as_bytes())),
            None => None,
        };
        let public = match public_pem {
            None => None,
            Some(pem) => Some(
                DecodingKey::from_rsa_pem(pem.as_bytes())
                    .map(|k| (k, Algorithm::RS256))
                    .or_else(|_| {
                        DecodingKey::from_ec_pem(pem.as_bytes()).map(|k| (k, Algorithm::ES256))
                    })
                    .map_err(|_| {
                        ConfigError::new(
                            "DR_AUTH_JWT_PUBLIC_KEY",
                            "must be an RSA or EC P-256 public key in PEM",
                        )
                    })?,
            ),
        };
        if hmac.is_none() && public.is_none() {
            return Err(ConfigError::new(
                "DR_AUTH_JWT_SECRET",
                "is required (or DR_AUTH_JWT_PUBLIC_KEY)",
            ));
        }
        Ok(Self { hmac, public })
    }

    /// Verify signature, expiry and claim shapes.
    pub fn verify(&self, token: &str) -> Result<Actor, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Unauthenticated("missing"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Unauthenticated("malformed"))?;
        let (key, alg) = match (header.alg, &self.hmac, &self.public) {
            (Algorithm::HS256, Some(k), _) => (k, Algorithm::HS256),
            (alg, _, Some((k, a))) if alg == *a => (k, *a),
            _ => return Err(AuthError::Unauthenticated("algorithm not accepted")),
        };
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            AuthError::Unauthenticated(match e.kind() {
                K::ExpiredSignature => "expired",
                K::InvalidSignature => "signature invalid",
                K::MissingRequiredClaim(_) => "missing required claim",
                _ => "invalid",
            })
        })?;
        let c = data.claims;
        let org = drfleet_protocol::tenant::TenantKey::parse(&c.org)
            .map_err(|_| AuthError::Unauthenticated("org claim is not a tenant key"))?
            .organization_id();
        if c.sub.is_empty() || c.sub.len() > 256 {
            return Err(AuthError::Unauthenticated("sub claim invalid"));
        }
        Ok(Actor {
            sub: c.sub,
            org,
            perms: c.perms,
        })
    }
}

/// The actor may act in `org` with every `required` permission.
pub fn authorize(actor: &Actor, org: &OrganizationId, required: &[&str]) -> Result<(), AuthError> {
    if actor.org != *org {
        return Err(AuthError::Forbidden(
            "token organization does not match the command",
        ));
    }
    if !authorized(&actor.perms, required) {
        return Err(AuthError::Forbidden("missing permission"));
    }
    Ok(())
}

/// Signs actor tokens: drctl, the scheduler (`sub` = `drfleet-scheduler`) and the tests.
/// The key never appears in Debug or errors.
#[derive(Clone)]
pub struct TokenMinter {
    key: EncodingKey,
    alg: Algorithm,
}

impl std::fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenMinter({:?}, <key redacted>)", self.alg)
    }
}

/// The token could not be signed. Carries no claim or key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("token could not be signed")]
pub struct MintError;

impl TokenMinter {
    /// HS256 with `DR_AUTH_JWT_SECRET` (at least [`MIN_HMAC_SECRET`] bytes).
    pub fn from_secret(secret: &str) -> Result<Self, ConfigError> {
        if secret.len() < MIN_HMAC_SECRET {
            return Err(ConfigError::new(
                "DR_AUTH_JWT_SECRET",
                "must be at least 32 bytes",
            ));
        }
        Ok(Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            alg: Algorithm::HS256,
        })
    }

    /// RS256 (RSA) or ES256 (EC P-256) with a private key in PEM; the workers verify with the
    /// matching `DR_AUTH_JWT_PUBLIC_KEY`. `setting` names where the key came from in errors.
    pub fn from_private_pem(pem: &str, setting: &'static str) -> Result<Self, ConfigError> {
        EncodingKey::from_rsa_pem(pem.as_bytes())
            .map(|key| Self {
                key,
                alg: Algorithm::RS256,
            })
            .or_else(|_| {
                EncodingKey::from_ec_pem(pem.as_bytes()).map(|key| Self {
                    key,
                    alg: Algorithm::ES256,
                })
            })
            .map_err(|_| ConfigError::new(setting, "must be an RSA or EC P-256 private key in PEM"))
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// A token for `sub` acting on `org` (its `org` claim: the organization as on the wire)
    /// with `perms`, valid for `ttl_secs` from now.
    pub fn mint(
        &self,
        sub: &str,
        org: impl std::fmt::Display,
        perms: &[String],
        ttl_secs: u64,
    ) -> Result<String, MintError> {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let claims = Claims {
            sub: sub.into(),
            org: org.to_string(),
            perms: perms.to_vec(),
            exp: now + ttl_secs,
            iat: Some(now),
        };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, &self.key).map_err(|_| MintError)
    }
}

/// Mint an HS256 token (tests; `secret` must be at least [`MIN_HMAC_SECRET`] bytes).
pub fn mint_hs256(
    secret: &str,
    sub: &str,
    org: &OrganizationId,
    perms: &[String],
    ttl_secs: u64,
) -> String {
    mint_hs256_for_key(secret, sub, &org.to_string(), perms, ttl_secs)
}

/// [`mint_hs256`] for a tenant key of any type (`org` claim = the key's text).
pub fn mint_hs256_for_key(
    secret: &str,
    sub: &str,
    key: &str,
    perms: &[String],
    ttl_secs: u64,
) -> String {
    // A short secret is still signed (tests use one to prove workers refuse it).
    let minter = TokenMinter {
        key: EncodingKey::from_secret(secret.as_bytes()),
        alg: Algorithm::HS256,
    };
    minter
        .mint(sub, key, perms, ttl_secs)
        .expect("HS256 encoding of plain claims cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier() -> TokenVerifier {
        TokenVerifier::new(Some(&Secret::new(SECRET.to_string())), None).unwrap()
    }

    #[test]
    fn valid_token_yields_actor() {
        let org = OrganizationId::new();
        let t = mint_hs256(SECRET, "alice", &org, &["pf.backup.*".into()], 60);
        let a = verifier().verify(&t).unwrap();
        assert_eq!(a.sub, "alice");
        assert_eq!(a.org, org);
        assert!(authorize(&a, &org, &["pf.backup.create"]).is_ok());
        assert_eq!(
            authorize(&a, &org, &["pf.dr-drill.run"]),
            Err(AuthError::Forbidden("missing permission"))
        );
        assert!(matches!(
            authorize(&a, &OrganizationId::new(), &["pf.backup.create"]),
            Err(AuthError::Forbidden(_))
        ));
    }

    #[test]
    fn bad_tokens_are_unauthenticated() {
        let org = OrganizationId::new();
        let v = verifier();
        assert_eq!(v.verify(""), Err(AuthError::Unauthenticated("missing")));
        assert_eq!(
            v.verify("garbage"),
            Err(AuthError::Unauthenticated("malformed"))
        );
        let wrong = mint_hs256("another-secret-another-secret-xx", "a", &org, &[], 60);
        assert_eq!(
            v.verify(&wrong),
            Err(AuthError::Unauthenticated("signature invalid"))
        );
        // Expired well past the leeway.
        let now = chrono::Utc::now().timestamp() as u64;
        let claims = Claims {
            sub: "a".into(),
            org: org.to_string(),
            perms: vec![],
            exp: now - 600,
            iat: None,
        };
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            v.verify(&expired),
            Err(AuthError::Unauthenticated("expired"))
        );
        // alg: none, hand-made.
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(
                r#"{{"sub":"a","org":"{org}","perms":["*"],"exp":{}}}"#,
                now + 600
            ))
        );
        assert!(matches!(
            v.verify(&none),
            Err(AuthError::Unauthenticated(_))
        ));
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
    fn es256_tokens_verify_with_the_public_key_only() {
        let org = OrganizationId::new();
        let now = chrono::Utc::now().timestamp() as u64;
        let claims = Claims {
            sub: "svc".into(),
            org: org.to_string(),
            perms: vec!["pf.backup.create".into()],
            exp: now + 60,
            iat: Some(now),
        };
        let key = EncodingKey::from_ec_pem(ES_PRIVATE.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap();
        let v = TokenVerifier::new(None, Some(ES_PUBLIC)).unwrap();
        assert_eq!(v.verify(&token).unwrap().sub, "svc");
        // HS256 is refused when only a public key is configured.
        assert_eq!(
            v.verify(&mint_hs256(SECRET, "a", &org, &[], 60)),
            Err(AuthError::Unauthenticated("algorithm not accepted"))
        );
        // Both configured: both accepted.
        let both =
            TokenVerifier::new(Some(&Secret::new(SECRET.to_string())), Some(ES_PUBLIC)).unwrap();
        assert!(
            both.verify(&token).is_ok()
                && both.verify(&mint_hs256(SECRET, "a", &org, &[], 60)).is_ok()
        );
        assert!(TokenVerifier::new(None, Some("not a pem")).is_err());
    }

    #[test]
    fn minter_signs_what_the_verifier_accepts() {
        let org = OrganizationId::new();
        let es = TokenMinter::from_private_pem(ES_PRIVATE, "DR_AUTH_JWT_PRIVATE_KEY").unwrap();
        assert_eq!(es.algorithm(), Algorithm::ES256);
        let t = es
            .mint("drfleet-scheduler", org, &["pf.backup.create".into()], 120)
            .unwrap();
        let a = TokenVerifier::new(None, Some(ES_PUBLIC))
            .unwrap()
            .verify(&t)
            .unwrap();
        assert_eq!(
            (a.sub.as_str(), a.org, a.perms.as_slice()),
            (
                "drfleet-scheduler",
                org,
                &["pf.backup.create".to_string()][..]
            )
        );
        let hs = TokenMinter::from_secret(SECRET).unwrap();
        let t = hs.mint("alice", org, &[], 60).unwrap();
        assert_eq!(verifier().verify(&t).unwrap().sub, "alice");
        assert!(!format!("{hs:?}").contains(SECRET));

        let e = TokenMinter::from_secret("short").unwrap_err();
        assert_eq!(e.setting, "DR_AUTH_JWT_SECRET");
        let e = TokenMinter::from_private_pem(ES_PUBLIC, "DR_AUTH_JWT_PRIVATE_KEY").unwrap_err();
        assert_eq!(e.setting, "DR_AUTH_JWT_PRIVATE_KEY");
        assert!(!e.to_string().contains("BEGIN"));
    }

    #[test]
    fn short_secret_is_refused() {
        let e = TokenVerifier::new(Some(&Secret::new("short".into())), None).unwrap_err();
        assert_eq!(e.setting, "DR_AUTH_JWT_SECRET");
        assert!(TokenVerifier::new(None, None).is_err());
    }
}
