//! Client authentication to the proxy: SCRAM-SHA-256 (server side of RFC 5802/7677), md5, trust.
//!
//! Written over RustCrypto primitives because pgwire's SASL handler owns the socket and its
//! framing, while the proxy frames raw bytes itself.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use md5::Md5;
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

const ITERATIONS: u32 = 4096;

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA256 with one output block, as SCRAM's Hi() defines it.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(password).expect("HMAC takes any key length");
    m.update(salt);
    m.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = m.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        out.iter_mut().zip(u.iter()).for_each(|(o, x)| *o ^= x);
    }
    out
}

/// The server's stored SCRAM secrets for one user (computed once at start).
#[derive(Clone)]
pub struct ScramSecret {
    salt: [u8; 16],
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl ScramSecret {
    pub fn new(password: &str) -> ScramSecret {
        let mut salt = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        // SASLprep is skipped: passwords are used as given, as PostgreSQL does for non-UTF-8 ones.
        let salted = hi(password.as_bytes(), &salt, ITERATIONS);
        let client_key = hmac(&salted, b"Client Key");
        ScramSecret { salt, stored_key: Sha256::digest(client_key).into(), server_key: hmac(&salted, b"Server Key") }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported without TLS")]
    ChannelBinding,
    #[error("wrong password")]
    WrongProof,
}

/// One SCRAM exchange in progress, between server-first and client-final.
pub struct ScramExchange {
    client_first_bare: String,
    server_first: String,
    nonce: String,
    gs2_header: String,
}

impl ScramExchange {
    /// Handles client-first; returns the exchange and the server-first message to send.
    pub fn start(secret: &ScramSecret, client_first: &[u8]) -> Result<(ScramExchange, String), ScramError> {
        let text = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (gs2_header, bare) = match text.get(..2) {
            Some("n,") | Some("y,") => {
                let end = text[2..].find(',').ok_or(ScramError::Malformed("gs2 header"))? + 3;
                (&text[..end], &text[end..])
            }
            Some("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("gs2 header")),
        };
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(ScramError::Malformed("missing nonce"))?;
        let mut server_nonce = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut server_nonce);
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!("r={nonce},s={},i={ITERATIONS}", B64.encode(secret.salt));
        let exchange = ScramExchange {
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
            gs2_header: gs2_header.to_string(),
        };
        Ok((exchange, server_first))
    }

    /// Verifies client-final; returns server-final ("v=...") on success.
    pub fn finish(self, secret: &ScramSecret, client_final: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(ScramError::Malformed("missing proof"))?;
        let mut binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                binding = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        if binding != Some(B64.encode(self.gs2_header.as_bytes()).as_str()) {
            return Err(ScramError::ChannelBinding);
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Malformed("nonce mismatch"));
        }
        let proof = B64.decode(proof).map_err(|_| ScramError::Malformed("proof is not base64"))?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed("proof length"));
        }
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let signature = hmac(&secret.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(signature.iter()).map(|(p, s)| p ^ s).collect();
        let stored: [u8; 32] = Sha256::digest(&client_key).into();
        // Constant-time compare: the proof is attacker-controlled.
        let diff = stored.iter().zip(secret.stored_key.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac(&secret.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// The answer a client must send to AuthenticationMD5Password with `salt`.
pub fn md5_expected(user: &str, password: &str, salt: [u8; 4]) -> String {
    let inner = format!("{:x}", Md5::digest(format!("{password}{user}")));
    let mut outer = Md5::new();
    outer.update(inner.as_bytes());
    outer.update(salt);
    format!("md5{:x}", outer.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn exchange(server_password: &str, client_password: &str) -> Result<(), ScramError> {
        let secret = ScramSecret::new(server_password);
        let mut client = ScramSha256::new(client_password.as_bytes(), ChannelBinding::unsupported());
        let (ex, server_first) = ScramExchange::start(&secret, client.message())?;
        client.update(server_first.as_bytes()).unwrap();
        let server_final = ex.finish(&secret, client.message())?;
        client.finish(server_final.as_bytes()).expect("client accepts the server signature");
        Ok(())
    }

    #[test]
    fn scram_with_the_postgres_client_implementation() {
        assert_eq!(exchange("secret", "secret"), Ok(()));
        assert_eq!(exchange("secret", "wrong"), Err(ScramError::WrongProof));
    }

    #[test]
    fn scram_rejects_garbage() {
        let secret = ScramSecret::new("x");
        assert!(ScramExchange::start(&secret, b"garbage").is_err());
        assert!(ScramExchange::start(&secret, b"n,,n=,r=").is_err());
        assert_eq!(
            ScramExchange::start(&secret, b"p=tls-server-end-point,,n=,r=abc").err(),
            Some(ScramError::ChannelBinding)
        );
    }

    #[test]
    fn md5_matches_postgres_protocol() {
        let salt = [1, 2, 3, 4];
        assert_eq!(
            md5_expected("app", "secret", salt),
            postgres_protocol::authentication::md5_hash(b"app", b"secret", salt)
        );
    }
}
