//! Client authentication to the proxy: the server side of SCRAM-SHA-256 (RFC 5802/7677) over a verifier, and the mock verifier unknown users are challenged with.
//!
//! Written over RustCrypto primitives because pgwire's SASL handler owns the socket and its
//! framing, while the proxy frames raw bytes itself.

use crate::secret::{constant_time_eq, hmac_sha256, ScramVerifier, SCRAM_ITERATIONS, SCRAM_SALT_LEN};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding: {0}")]
    ChannelBinding(&'static str),
    #[error("wrong password")]
    WrongProof,
}

/// The GS2 header of client-first (RFC 5802 section 7), kept whole: client-final's `c=` echoes it.
struct Gs2Header {
    /// Up to and including the comma before the client-first-bare.
    raw: String,
    flag: CbindFlag,
}

enum CbindFlag {
    /// `n`: the client does not bind.
    No,
    /// `y`: the client could bind but thinks the server cannot.
    ClientOnly,
    /// `p=<type>`: the client binds with this type.
    Type(String),
}

fn parse_gs2_header(text: &str) -> Result<(Gs2Header, &str), ScramError> {
    let malformed = ScramError::Malformed("gs2 header");
    let (flag, rest) = text.split_once(',').ok_or(malformed.clone())?;
    let flag = match flag {
        "n" => CbindFlag::No,
        "y" => CbindFlag::ClientOnly,
        _ => CbindFlag::Type(flag.strip_prefix("p=").filter(|t| !t.is_empty()).ok_or(malformed.clone())?.to_string()),
    };
    let (_authzid, bare) = rest.split_once(',').ok_or(malformed)?;
    let raw_len = text.len() - bare.len();
    Ok((Gs2Header { raw: text[..raw_len].to_string(), flag }, bare))
}

/// The `c=` value client-final must carry: base64(gs2 header || channel-binding data).
/// `tls_server_end_point` is the RFC 5929 hash of the server certificate when the connection is
/// TLS and SCRAM-SHA-256-PLUS was offered; None on plain TCP, where only `n` and `y` can succeed.
fn expected_binding(gs2: &Gs2Header, tls_server_end_point: Option<&[u8]>) -> Result<String, ScramError> {
    match (&gs2.flag, tls_server_end_point) {
        (CbindFlag::No, _) | (CbindFlag::ClientOnly, None) => Ok(B64.encode(gs2.raw.as_bytes())),
        // The server offered -PLUS, yet the client believes it cannot bind: a downgrade.
        (CbindFlag::ClientOnly, Some(_)) => Err(ScramError::ChannelBinding("client says the server cannot bind")),
        (CbindFlag::Type(_), None) => Err(ScramError::ChannelBinding("not supported without TLS")),
        (CbindFlag::Type(t), Some(data)) if t == "tls-server-end-point" => {
            Ok(B64.encode([gs2.raw.as_bytes(), data].concat()))
        }
        (CbindFlag::Type(_), Some(_)) => Err(ScramError::ChannelBinding("only tls-server-end-point is supported")),
    }
}

/// One SCRAM exchange in progress, between server-first and client-final.
pub struct ScramExchange {
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// What client-final's `c=` must say.
    binding: String,
}

/// A client's proof that verified.
#[derive(Debug)]
pub struct ScramSuccess {
    /// server-final ("v=...") to send.
    pub server_final: String,
    /// ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage): what the client proved it
    /// holds, and what SCRAM passthrough answers the servers with.
    pub client_key: [u8; 32],
}

impl ScramExchange {
    /// Handles client-first; returns the exchange and the server-first message to send.
    /// `channel` is the TLS connection's `tls-server-end-point` data when SCRAM-SHA-256-PLUS was
    /// offered (None on plain TCP); `plus` says whether the client chose -PLUS.
    pub fn start(
        verifier: &ScramVerifier,
        client_first: &[u8],
        channel: Option<&[u8]>,
        plus: bool,
    ) -> Result<(ScramExchange, String), ScramError> {
        let text = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (gs2, bare) = parse_gs2_header(text)?;
        match (&gs2.flag, plus) {
            (CbindFlag::Type(_), false) => return Err(ScramError::ChannelBinding("requested with SCRAM-SHA-256")),
            (CbindFlag::No | CbindFlag::ClientOnly, true) => {
                return Err(ScramError::ChannelBinding("SCRAM-SHA-256-PLUS chosen without binding"))
            }
            _ => {}
        }
        let binding = expected_binding(&gs2, channel)?;
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(ScramError::Malformed("missing nonce"))?;
        let mut server_nonce = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut server_nonce);
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&verifier.salt), verifier.iterations);
        let exchange =
            ScramExchange { client_first_bare: bare.to_string(), server_first: server_first.clone(), nonce, binding };
        Ok((exchange, server_first))
    }

    /// Verifies client-final against the verifier.
    pub fn finish(self, verifier: &ScramVerifier, client_final: &[u8]) -> Result<ScramSuccess, ScramError> {
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
        if binding != Some(self.binding.as_str()) {
            return Err(ScramError::ChannelBinding("client-final does not echo the gs2 header"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Malformed("nonce mismatch"));
        }
        let proof = B64.decode(proof).map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let proof: [u8; 32] = proof.try_into().map_err(|_| ScramError::Malformed("proof length"))?;
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let signature = hmac_sha256(&verifier.stored_key, auth_message.as_bytes());
        let client_key: [u8; 32] = std::array::from_fn(|i| proof[i] ^ signature[i]);
        if !constant_time_eq(&Sha256::digest(client_key), &verifier.stored_key) {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac_sha256(&verifier.server_key, auth_message.as_bytes());
        Ok(ScramSuccess { server_final: format!("v={}", B64.encode(server_signature)), client_key })
    }
}

/// A verifier no password matches, for a user pgcausal does not know: the client goes through
/// the same exchange and gets the same error as with a wrong password, and (as in PostgreSQL)
/// sees the same salt for that name every time, so the salt does not give the name away.
pub fn mock_verifier(user: &str) -> ScramVerifier {
    static NONCE: OnceLock<[u8; 32]> = OnceLock::new();
    let nonce = NONCE.get_or_init(|| {
        let mut n = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut n);
        n
    });
    let salt = hmac_sha256(nonce, user.as_bytes())[..SCRAM_SALT_LEN].to_vec();
    let mut stored_key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut stored_key);
    ScramVerifier { iterations: SCRAM_ITERATIONS, salt, stored_key, server_key: [0; 32] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{md5_salted, salted_password, Secret, PG15_VERIFIER_OF_PW};
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn exchange(verifier: &ScramVerifier, client_password: &str) -> Result<ScramSuccess, ScramError> {
        let mut client = ScramSha256::new(client_password.as_bytes(), ChannelBinding::unsupported());
        let (ex, server_first) = ScramExchange::start(verifier, client.message(), None, false)?;
        client.update(server_first.as_bytes()).unwrap();
        let success = ex.finish(verifier, client.message())?;
        client.finish(success.server_final.as_bytes()).expect("client accepts the server signature");
        Ok(success)
    }

    #[test]
    fn scram_with_the_postgres_client_implementation() {
        let verifier = ScramVerifier::generate("secret");
        assert!(exchange(&verifier, "secret").is_ok());
        assert_eq!(exchange(&verifier, "wrong").err(), Some(ScramError::WrongProof));
    }

    #[test]
    fn a_postgres_made_verifier_logs_in_the_right_password_only() {
        let verifier: ScramVerifier = PG15_VERIFIER_OF_PW.parse().unwrap();
        let success = exchange(&verifier, "pw").expect("pw verifies");
        let salted = salted_password("pw", &verifier.salt, verifier.iterations);
        assert_eq!(success.client_key, hmac_sha256(&salted, b"Client Key"), "the ClientKey is recovered");
        for wrong in ["", "PW", "pw ", "secret"] {
            assert_eq!(exchange(&verifier, wrong).err(), Some(ScramError::WrongProof), "{wrong:?}");
        }
    }

    #[test]
    fn unknown_users_fail_like_a_wrong_password_with_a_stable_salt() {
        let mock = mock_verifier("nobody");
        assert_eq!(exchange(&mock, "").err(), Some(ScramError::WrongProof));
        assert_eq!(mock_verifier("nobody").salt, mock.salt);
        assert_ne!(mock_verifier("somebody").salt, mock.salt);
    }

    #[test]
    fn scram_rejects_garbage() {
        let verifier = ScramVerifier::generate("x");
        assert!(ScramExchange::start(&verifier, b"garbage", None, false).is_err());
        assert!(ScramExchange::start(&verifier, b"n,,n=,r=", None, false).is_err());
        assert!(ScramExchange::start(&verifier, b"p=,,n=,r=abc", None, true).is_err());
        assert_eq!(
            ScramExchange::start(&verifier, b"p=tls-server-end-point,,n=,r=abc", None, true).err(),
            Some(ScramError::ChannelBinding("not supported without TLS"))
        );
        assert_eq!(
            ScramExchange::start(&verifier, b"p=tls-server-end-point,,n=,r=abc", Some(b"h"), false).err(),
            Some(ScramError::ChannelBinding("requested with SCRAM-SHA-256"))
        );
        assert_eq!(
            ScramExchange::start(&verifier, b"n,,n=,r=abc", Some(b"h"), true).err(),
            Some(ScramError::ChannelBinding("SCRAM-SHA-256-PLUS chosen without binding"))
        );
    }

    #[test]
    fn scram_plus_binds_to_the_certificate_hash() {
        let verifier = ScramVerifier::generate("secret");
        let run = |client_sees: &[u8], server_has: &[u8]| {
            let binding = ChannelBinding::tls_server_end_point(client_sees.to_vec());
            let mut client = ScramSha256::new(b"secret", binding);
            let (ex, server_first) = ScramExchange::start(&verifier, client.message(), Some(server_has), true)?;
            client.update(server_first.as_bytes()).unwrap();
            ex.finish(&verifier, client.message()).map(|_| ())
        };
        assert_eq!(run(b"the certificate's hash", b"the certificate's hash"), Ok(()));
        // A man in the middle terminates TLS with another certificate: the binding differs.
        assert_eq!(
            run(b"the attacker's certificate hash", b"the certificate's hash").err(),
            Some(ScramError::ChannelBinding("client-final does not echo the gs2 header"))
        );
    }

    #[test]
    fn the_binding_attribute_carries_the_gs2_header_and_any_binding_data() {
        let header = |text: &'static str| parse_gs2_header(text).unwrap().0;
        assert_eq!(expected_binding(&header("n,,n=,r=a"), None).unwrap(), "biws");
        assert_eq!(expected_binding(&header("y,,n=,r=a"), None).unwrap(), "eSws");
        assert!(expected_binding(&header("y,,n=,r=a"), Some(b"hash")).is_err());
        let plus = header("p=tls-server-end-point,,n=,r=a");
        assert_eq!(expected_binding(&plus, Some(b"hash")).unwrap(), B64.encode(b"p=tls-server-end-point,,hash"));
        assert!(expected_binding(&header("p=tls-unique,,n=,r=a"), Some(b"hash")).is_err());
    }

    #[test]
    fn md5_matches_postgres_protocol_from_a_password_or_its_hash() {
        let salt = [1, 2, 3, 4];
        let expected = postgres_protocol::authentication::md5_hash(b"app", b"secret", salt);
        let from_password = Secret::Plain("secret".into()).md5_inner("app").unwrap();
        assert_eq!(md5_salted(&from_password, salt), expected);
        let stored = Secret::parse(&crate::secret::md5_hash("app", "secret")).unwrap();
        assert_eq!(md5_salted(&stored.md5_inner("app").unwrap(), salt), expected);
    }
}
