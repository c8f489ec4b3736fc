//! The client side of SCRAM-SHA-256 without the password (passthrough, as PgBouncer does it):
//! answers a server's challenge with the ClientKey a client's proof revealed and checks the
//! server with the verifier's ServerKey.

use crate::secret::{constant_time_eq, hmac_sha256, ScramVerifier};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PassthroughError {
    #[error("malformed SCRAM message from the server: {0}")]
    Malformed(&'static str),
    #[error(
        "the server's SCRAM verifier for this role has another salt or iteration count than [[users]] password \
         (server: {server_iterations} iterations, salt {server_salt}): copy the role's pg_authid.rolpassword \
         into the config, or set server_password"
    )]
    OtherVerifier { server_iterations: u32, server_salt: String },
    #[error("the server's SCRAM signature is wrong")]
    ServerSignature,
}

/// One passthrough exchange, from client-first to server-final.
pub struct ScramPassthrough<'a> {
    verifier: &'a ScramVerifier,
    client_key: [u8; 32],
    client_first_bare: String,
    state: State,
}

enum State {
    /// client-first sent.
    Started { nonce: String },
    /// client-final sent; the server's signature must be this.
    Proved { server_signature: [u8; 32] },
}

impl<'a> ScramPassthrough<'a> {
    /// Starts the exchange for a ClientKey of `verifier`; `message` is then client-first.
    pub fn new(verifier: &'a ScramVerifier, client_key: [u8; 32]) -> ScramPassthrough<'a> {
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        let nonce = B64.encode(raw);
        // The user name goes in the startup packet; PostgreSQL ignores SCRAM's n=.
        let client_first_bare = format!("n=,r={nonce}");
        ScramPassthrough { verifier, client_key, client_first_bare, state: State::Started { nonce } }
    }

    /// client-first: a GS2 header without channel binding, then client-first-bare.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Takes server-first; returns client-final.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<String, PassthroughError> {
        let State::Started { nonce } = &self.state else {
            return Err(PassthroughError::Malformed("unexpected server-first"));
        };
        let text = std::str::from_utf8(server_first).map_err(|_| PassthroughError::Malformed("not UTF-8"))?;
        let attr = |name: &str| text.split(',').find_map(|a| a.strip_prefix(name));
        let server_nonce = attr("r=").ok_or(PassthroughError::Malformed("missing nonce"))?;
        if !server_nonce.starts_with(nonce.as_str()) || server_nonce.len() == nonce.len() {
            return Err(PassthroughError::Malformed("server nonce does not extend ours"));
        }
        let salt = attr("s=").ok_or(PassthroughError::Malformed("missing salt"))?;
        let iterations =
            attr("i=").and_then(|i| i.parse().ok()).ok_or(PassthroughError::Malformed("bad iterations"))?;
        let salt_bytes = B64.decode(salt).map_err(|_| PassthroughError::Malformed("salt is not base64"))?;
        // The ClientKey is only good for the SaltedPassword it came from.
        if salt_bytes != self.verifier.salt || iterations != self.verifier.iterations {
            return Err(PassthroughError::OtherVerifier {
                server_iterations: iterations,
                server_salt: salt.to_string(),
            });
        }
        let without_proof = format!("c=biws,r={server_nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let signature = hmac_sha256(&Sha256::digest(self.client_key), auth_message.as_bytes());
        let proof: [u8; 32] = std::array::from_fn(|i| self.client_key[i] ^ signature[i]);
        self.state =
            State::Proved { server_signature: hmac_sha256(&self.verifier.server_key, auth_message.as_bytes()) };
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks server-final's signature.
    pub fn finish(self, server_final: &[u8]) -> Result<(), PassthroughError> {
        let State::Proved { server_signature } = self.state else {
            return Err(PassthroughError::Malformed("server-final before server-first"));
        };
        let text = std::str::from_utf8(server_final).map_err(|_| PassthroughError::Malformed("not UTF-8"))?;
        let signature = text
            .split(',')
            .find_map(|a| a.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok())
            .ok_or(PassthroughError::Malformed("missing server signature"))?;
        if !constant_time_eq(&signature, &server_signature) {
            return Err(PassthroughError::ServerSignature);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::auth::ScramExchange;
    use crate::secret::{salted_password, PG15_VERIFIER_OF_PW};

    fn client_key(password: &str, verifier: &ScramVerifier) -> [u8; 32] {
        hmac_sha256(&salted_password(password, &verifier.salt, verifier.iterations), b"Client Key")
    }

    /// Runs a passthrough client against pgcausal's own SCRAM server side holding `server`.
    fn against(server: &ScramVerifier, ours: &ScramVerifier, key: [u8; 32]) -> Result<(), String> {
        let mut client = ScramPassthrough::new(ours, key);
        let (exchange, server_first) =
            ScramExchange::start(server, client.client_first().as_bytes(), None, false).map_err(|e| e.to_string())?;
        let client_final = client.client_final(server_first.as_bytes()).map_err(|e| e.to_string())?;
        let success = exchange.finish(server, client_final.as_bytes()).map_err(|e| e.to_string())?;
        client.finish(success.server_final.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_client_key_logs_in_where_the_verifier_is_the_same() {
        let verifier: ScramVerifier = PG15_VERIFIER_OF_PW.parse().unwrap();
        assert_eq!(against(&verifier, &verifier, client_key("pw", &verifier)), Ok(()));
        assert_eq!(against(&verifier, &verifier, client_key("nope", &verifier)), Err("wrong password".into()));
    }

    #[test]
    fn another_salt_on_the_server_is_named_with_the_fix() {
        let ours: ScramVerifier = PG15_VERIFIER_OF_PW.parse().unwrap();
        let theirs = ScramVerifier::generate("pw");
        let err = against(&theirs, &ours, client_key("pw", &ours)).unwrap_err();
        assert!(err.contains("another salt") && err.contains("pg_authid") && err.contains("server_password"), "{err}");
    }

    #[test]
    fn a_wrong_server_signature_is_refused() {
        let verifier: ScramVerifier = PG15_VERIFIER_OF_PW.parse().unwrap();
        let mut client = ScramPassthrough::new(&verifier, client_key("pw", &verifier));
        let (_, server_first) = ScramExchange::start(&verifier, client.client_first().as_bytes(), None, false).unwrap();
        client.client_final(server_first.as_bytes()).unwrap();
        assert_eq!(
            client.finish(format!("v={}", B64.encode([0u8; 32])).as_bytes()),
            Err(PassthroughError::ServerSignature)
        );
    }
}
