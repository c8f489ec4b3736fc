//! Password secrets in PostgreSQL's own formats (pg_authid.rolpassword): SCRAM-SHA-256 verifiers and md5 hashes, parsed, printed and derived.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use md5::Md5;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;

/// PostgreSQL's default `scram_iterations`.
pub const SCRAM_ITERATIONS: u32 = 4096;
/// The salt length PostgreSQL generates.
pub const SCRAM_SALT_LEN: usize = 16;
const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a SCRAM-SHA-256 verifier (SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>): {0}")]
pub struct BadVerifier(&'static str);

/// What a `[[users]] password` holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Secret {
    Plain(String),
    Scram(ScramVerifier),
    /// The 32 lowercase hex digits of md5(password || user), without the `md5` prefix.
    Md5(String),
}

impl Secret {
    /// Reads a password as PostgreSQL reads rolpassword: `SCRAM-SHA-256$...` is a verifier (here
    /// a malformed one is an error, not a plaintext password), `md5` + 32 lowercase hex digits
    /// an md5 hash, anything else plaintext.
    pub fn parse(text: &str) -> Result<Secret, BadVerifier> {
        if text.starts_with(SCRAM_PREFIX) {
            return text.parse().map(Secret::Scram);
        }
        match text.strip_prefix("md5") {
            Some(hex) if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
                Ok(Secret::Md5(hex.to_string()))
            }
            _ => Ok(Secret::Plain(text.to_string())),
        }
    }

    /// The hex md5(password || user) that md5 authentication salts, when this secret has it.
    pub fn md5_inner(&self, user: &str) -> Option<String> {
        match self {
            Secret::Plain(password) => Some(format!("{:x}", Md5::digest(format!("{password}{user}")))),
            Secret::Md5(hex) => Some(hex.clone()),
            Secret::Scram(_) => None,
        }
    }
}

/// `md5` + md5(password || user): what PostgreSQL stores for an md5 password.
pub fn md5_hash(user: &str, password: &str) -> String {
    format!("md5{}", Secret::Plain(password.to_string()).md5_inner(user).expect("plaintext has an md5 form"))
}

/// The answer to AuthenticationMD5Password with `salt`, from the user's hex md5(password ||
/// user) (a stored md5 hash is exactly that): md5 + md5(inner || salt), as PostgreSQL computes it.
pub fn md5_salted(md5_inner: &str, salt: [u8; 4]) -> String {
    let mut outer = Md5::new();
    outer.update(md5_inner.as_bytes());
    outer.update(salt);
    format!("md5{:x}", outer.finalize())
}

/// A SCRAM-SHA-256 verifier: what the server side of SCRAM needs, no plaintext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramVerifier {
    /// The verifier PostgreSQL would store for `password` with this salt and iteration count.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
        let salted = salted_password(password, salt, iterations);
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(hmac_sha256(&salted, b"Client Key")).into(),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// A new verifier with a random salt, as `CREATE ROLE ... PASSWORD` makes one.
    pub fn generate(password: &str) -> ScramVerifier {
        let mut salt = [0u8; SCRAM_SALT_LEN];
        rand::thread_rng().fill_bytes(&mut salt);
        ScramVerifier::from_password(password, &salt, SCRAM_ITERATIONS)
    }

    /// True when `client_key` is the ClientKey of this verifier's password (H(ClientKey) = StoredKey).
    pub fn matches_client_key(&self, client_key: &[u8; 32]) -> bool {
        constant_time_eq(&Sha256::digest(client_key), &self.stored_key)
    }
}

impl std::str::FromStr for ScramVerifier {
    type Err = BadVerifier;

    fn from_str(text: &str) -> Result<ScramVerifier, BadVerifier> {
        let rest = text.strip_prefix(SCRAM_PREFIX).ok_or(BadVerifier("does not start with SCRAM-SHA-256$"))?;
        let (params, keys) = rest.split_once('$').ok_or(BadVerifier("no `$` before the keys"))?;
        let (iterations, salt) = params.split_once(':').ok_or(BadVerifier("no `:` between iterations and salt"))?;
        let (stored_key, server_key) = keys.split_once(':').ok_or(BadVerifier("no `:` between the two keys"))?;
        let iterations = iterations.parse().ok().filter(|&i| i > 0).ok_or(BadVerifier("bad iteration count"))?;
        let salt = B64.decode(salt).ok().filter(|s| !s.is_empty()).ok_or(BadVerifier("salt is not base64"))?;
        let key = |text: &str, what| -> Result<[u8; 32], BadVerifier> {
            B64.decode(text).ok().and_then(|k| k.try_into().ok()).ok_or(BadVerifier(what))
        };
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key: key(stored_key, "StoredKey is not 32 bytes of base64")?,
            server_key: key(server_key, "ServerKey is not 32 bytes of base64")?,
        })
    }
}

impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCRAM_PREFIX}{}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// SCRAM's SaltedPassword: Hi(SASLprep(password), salt, i), Hi being PBKDF2-HMAC-SHA-256.
pub fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    // A password SASLprep refuses is used as given, as PostgreSQL and its clients do.
    let prepared = stringprep::saslprep(password).unwrap_or(std::borrow::Cow::Borrowed(password));
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(prepared.as_bytes(), salt, iterations, &mut out);
    out
}

pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// Compares without an early exit: the inputs may be attacker-controlled proofs.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Made by PostgreSQL 15.18: `SET password_encryption = 'scram-sha-256'; CREATE ROLE x
/// PASSWORD 'pw'; SELECT rolpassword FROM pg_authid WHERE rolname = 'x'`.
#[cfg(test)]
pub(crate) const PG15_VERIFIER_OF_PW: &str = "SCRAM-SHA-256$4096:UW1+5TDE7cXQUDngqwFH/A==$kPBFi4STV5Gh5wfA196mF+apeRIpMabkbnee5/NJivA=:rc8nIuNJ1j/CSgMFNHuQwzB4BfPCizmwQu9atFxquBs=";

#[cfg(test)]
mod tests {
    use super::*;

    /// The same server's md5 hash for role y, password 'pw'.
    const PG15_MD5_OF_PW_FOR_Y: &str = "md55cd54d0fec19d1894dba02b32ee85469";

    #[test]
    fn a_postgres_verifier_parses_prints_back_and_matches_its_password_only() {
        let Secret::Scram(v) = Secret::parse(PG15_VERIFIER_OF_PW).unwrap() else { panic!("not read as a verifier") };
        assert_eq!((v.iterations, v.salt.len()), (4096, 16));
        assert_eq!(v.to_string(), PG15_VERIFIER_OF_PW);
        assert_eq!(ScramVerifier::from_password("pw", &v.salt, v.iterations), v);
        assert_ne!(ScramVerifier::from_password("pW", &v.salt, v.iterations), v);
        assert_ne!(ScramVerifier::from_password("", &v.salt, v.iterations), v);
    }

    #[test]
    fn md5_hashes_match_postgres() {
        assert_eq!(md5_hash("y", "pw"), PG15_MD5_OF_PW_FOR_Y);
        assert_eq!(Secret::parse(PG15_MD5_OF_PW_FOR_Y).unwrap(), Secret::Md5(PG15_MD5_OF_PW_FOR_Y[3..].into()));
        assert_eq!(
            Secret::parse(PG15_MD5_OF_PW_FOR_Y).unwrap().md5_inner("y"),
            Secret::Plain("pw".into()).md5_inner("y")
        );
        // Upper-case hex or a wrong length is a plaintext password to PostgreSQL too.
        let upper = PG15_MD5_OF_PW_FOR_Y.to_uppercase().replacen("MD5", "md5", 1);
        assert_eq!(Secret::parse(&upper).unwrap(), Secret::Plain(upper.clone()));
        assert_eq!(Secret::parse("md5abc").unwrap(), Secret::Plain("md5abc".into()));
    }

    #[test]
    fn generated_verifiers_round_trip_and_differ_by_salt() {
        let (a, b) = (ScramVerifier::generate("secret"), ScramVerifier::generate("secret"));
        assert_ne!(a.salt, b.salt);
        assert_eq!(a.to_string().parse::<ScramVerifier>().unwrap(), a);
        assert_eq!(ScramVerifier::from_password("secret", &a.salt, SCRAM_ITERATIONS), a);
    }

    #[test]
    fn client_keys_are_checked_against_the_stored_key() {
        let v: ScramVerifier = PG15_VERIFIER_OF_PW.parse().unwrap();
        let client_key = hmac_sha256(&salted_password("pw", &v.salt, v.iterations), b"Client Key");
        assert!(v.matches_client_key(&client_key));
        assert!(!v.matches_client_key(&[0; 32]));
    }

    #[test]
    fn malformed_verifiers_say_what_is_wrong() {
        let key = B64.encode([7u8; 32]);
        let cases = [
            ("SCRAM-SHA-256$4096:c2FsdA==".to_string(), "no `$` before the keys"),
            (format!("SCRAM-SHA-256$4096c2FsdA==${key}:{key}"), "no `:` between iterations and salt"),
            (format!("SCRAM-SHA-256$0:c2FsdA==${key}:{key}"), "bad iteration count"),
            (format!("SCRAM-SHA-256$x:c2FsdA==${key}:{key}"), "bad iteration count"),
            (format!("SCRAM-SHA-256$4096:!!${key}:{key}"), "salt is not base64"),
            (format!("SCRAM-SHA-256$4096:c2FsdA==${key}"), "no `:` between the two keys"),
            (format!("SCRAM-SHA-256$4096:c2FsdA==$c2hvcnQ=:{key}"), "StoredKey is not 32 bytes of base64"),
            (format!("SCRAM-SHA-256$4096:c2FsdA==${key}:nope"), "ServerKey is not 32 bytes of base64"),
        ];
        for (text, reason) in cases {
            assert_eq!(Secret::parse(&text), Err(BadVerifier(reason)), "{text}");
        }
        assert!(Secret::parse(&format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{key}")).is_ok());
    }
}
