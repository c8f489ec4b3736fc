//! What pgcausal logs in to the servers with as a configured user: a plaintext password, an md5
//! hash, or (SCRAM passthrough) the ClientKey a client's login revealed.

use crate::config::UserConfig;
use crate::secret::{ScramVerifier, Secret};
use std::sync::Arc;

#[derive(Clone, PartialEq, Eq)]
pub enum ServerSecret {
    /// `server_password`, or a plaintext `password`: answers any server method.
    Password(String),
    /// An md5 `password` and no `server_password`: answers md5 only (md5(hash || salt)).
    Md5Hash(String),
    /// A SCRAM verifier `password` and no `server_password`: answers SCRAM only, and only where
    /// the server's verifier has the same salt and iterations, with a ClientKey learnt from a
    /// client's login (None until one logs in).
    ScramPassthrough { verifier: Arc<ScramVerifier>, client_key: Option<[u8; 32]> },
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret itself: logins are logged.
        f.write_str(match self {
            ServerSecret::Password(_) => "Password(********)",
            ServerSecret::Md5Hash(_) => "Md5Hash(********)",
            ServerSecret::ScramPassthrough { client_key: Some(_), .. } => "ScramPassthrough(client key)",
            ServerSecret::ScramPassthrough { client_key: None, .. } => "ScramPassthrough(no client key yet)",
        })
    }
}

impl ServerSecret {
    /// What the config alone gives for `user` (passthrough without a key yet).
    pub fn configured(user: &UserConfig) -> ServerSecret {
        if let Some(password) = &user.server_password {
            return ServerSecret::Password(password.clone());
        }
        match user.secret() {
            Secret::Plain(password) => ServerSecret::Password(password),
            Secret::Md5(hex) => ServerSecret::Md5Hash(hex),
            Secret::Scram(verifier) => {
                ServerSecret::ScramPassthrough { verifier: Arc::new(verifier), client_key: None }
            }
        }
    }

    /// This secret once a client proved `client_key` against the same verifier.
    pub fn with_client_key(self, client_key: [u8; 32]) -> ServerSecret {
        match self {
            ServerSecret::ScramPassthrough { verifier, .. } if verifier.matches_client_key(&client_key) => {
                ServerSecret::ScramPassthrough { verifier, client_key: Some(client_key) }
            }
            other => other,
        }
    }

    /// A pool's secret takes the ClientKey of a session's login, when both are passthrough for
    /// the same verifier (a session from before a RELOAD must not bring back an old secret).
    pub fn learn(&mut self, session: &ServerSecret) {
        if let (
            ServerSecret::ScramPassthrough { verifier: kept, client_key },
            ServerSecret::ScramPassthrough { verifier, client_key: Some(key) },
        ) = (&mut *self, session)
        {
            if kept == verifier {
                *client_key = Some(*key);
            }
        }
    }

    /// What a pool holding `self` keeps when RELOAD configures `newer`: that, with the learnt
    /// ClientKey when the verifier did not change.
    pub fn updated(&self, newer: ServerSecret) -> ServerSecret {
        match (self, newer) {
            (
                ServerSecret::ScramPassthrough { verifier: kept, client_key: Some(key) },
                ServerSecret::ScramPassthrough { verifier, client_key: None },
            ) if *kept == verifier => ServerSecret::ScramPassthrough { verifier, client_key: Some(*key) },
            (_, newer) => newer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthMethod;
    use crate::secret::{hmac_sha256, salted_password, PG15_VERIFIER_OF_PW};

    fn user(password: &str, server_password: Option<&str>) -> UserConfig {
        UserConfig {
            name: "x".into(),
            password: password.into(),
            server_password: server_password.map(Into::into),
            auth: AuthMethod::ScramSha256,
            max_client_connections: None,
        }
    }

    #[test]
    fn server_password_wins_then_the_password_decides() {
        assert_eq!(
            ServerSecret::configured(&user(PG15_VERIFIER_OF_PW, Some("pw"))),
            ServerSecret::Password("pw".into())
        );
        assert_eq!(ServerSecret::configured(&user("pw", None)), ServerSecret::Password("pw".into()));
        let md5 = crate::secret::md5_hash("x", "pw");
        assert_eq!(ServerSecret::configured(&user(&md5, None)), ServerSecret::Md5Hash(md5[3..].into()));
        assert!(matches!(
            ServerSecret::configured(&user(PG15_VERIFIER_OF_PW, None)),
            ServerSecret::ScramPassthrough { client_key: None, .. }
        ));
    }

    #[test]
    fn a_learnt_client_key_survives_a_reload_of_the_same_verifier_only() {
        let verifier: ScramVerifier = PG15_VERIFIER_OF_PW.parse().unwrap();
        let key = hmac_sha256(&salted_password("pw", &verifier.salt, verifier.iterations), b"Client Key");
        let configured = ServerSecret::configured(&user(PG15_VERIFIER_OF_PW, None));
        assert_eq!(configured.clone().with_client_key([9; 32]), configured, "a key of another password is not kept");
        let learnt = configured.clone().with_client_key(key);
        assert!(matches!(learnt, ServerSecret::ScramPassthrough { client_key: Some(k), .. } if k == key));
        assert_eq!(learnt.updated(configured.clone()), learnt);
        let mut pool = configured.clone();
        pool.learn(&learnt);
        assert_eq!(pool, learnt);
        let other = ServerSecret::configured(&user(&ScramVerifier::generate("pw").to_string(), None));
        assert_eq!(learnt.updated(other.clone()), other);
        let mut pool = other.clone();
        pool.learn(&learnt);
        assert_eq!(pool, other, "a session's key for an older verifier is not learnt");
        assert_eq!(learnt.updated(ServerSecret::Password("pw".into())), ServerSecret::Password("pw".into()));
    }
}
