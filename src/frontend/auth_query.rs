//! Auth passthrough: the secret of a user not in `[[users]]`, read from the leader with
//! `[auth] query` and cached for `[auth] cache_ttl` (answers "no such user" included, so unknown
//! names cannot make the proxy hammer the leader).

use crate::config::{AuthMethod, Config, UserConfig};
use crate::error::ProxyError;
use crate::secret::Secret;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Entries kept at most; beyond it the expired go first, then everything (a flood of names).
const MAX_ENTRIES: usize = 10_000;

/// When the leader was asked, and what it said (None: no usable secret).
type Answer = (Instant, Option<Arc<UserConfig>>);

#[derive(Default)]
pub struct AuthCache {
    entries: Mutex<HashMap<String, Answer>>,
}

impl AuthCache {
    /// The user as the leader knows it: a `UserConfig` whose password is the stored secret (a
    /// SCRAM verifier, or an md5 hash: then the client logs in with md5). None: no such user,
    /// or no usable secret. An error: the leader could not be asked.
    pub async fn lookup(
        &self,
        config: &Arc<Config>,
        leader: Option<usize>,
        user: &str,
    ) -> Result<Option<Arc<UserConfig>>, ProxyError> {
        let now = Instant::now();
        if let Some((at, found)) = self.entries.lock().expect("auth cache poisoned").get(user) {
            if now.duration_since(*at) < config.auth.cache_ttl {
                return Ok(found.clone());
            }
        }
        let leader = leader.ok_or_else(|| ProxyError::AuthQuery("no leader is known to run [auth] query on".into()))?;
        let found = fetch(config.clone(), leader, user.to_string()).await?.and_then(|secret| as_user(user, &secret));
        let found = found.map(Arc::new);
        let mut entries = self.entries.lock().expect("auth cache poisoned");
        if entries.len() >= MAX_ENTRIES {
            let ttl = config.auth.cache_ttl;
            entries.retain(|_, (at, _)| now.duration_since(*at) < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(user.to_string(), (now, found.clone()));
        Ok(found)
    }

    /// RELOAD: answers read under the old query or login may not hold.
    pub fn clear(&self) {
        self.entries.lock().expect("auth cache poisoned").clear();
    }
}

/// The secret the query returns for `user` (its second column), on the control thread: the
/// connection's timeouts need a timer, which sessions' runtime lacks.
async fn fetch(config: Arc<Config>, leader: usize, user: String) -> Result<Option<String>, ProxyError> {
    let ask = crate::control::spawn(async move {
        let node = &config.nodes[leader];
        let login = config.auth_query_login();
        let mut pool_config = (*config).clone();
        if let Some(database) = &config.auth.database {
            pool_config.monitor.database = database.clone();
        }
        let pool =
            crate::topology::monitor::login_pool(&pool_config, node, login, "pgcausal-auth", config.monitor.timeout);
        let query = config.auth.query.clone().unwrap_or_default();
        let run = async {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            let rows = client.query(query.as_str(), &[&user]).await.map_err(|e| e.to_string())?;
            let secret = rows.first().and_then(|row| row.try_get::<_, Option<String>>(1).ok().flatten());
            Ok::<_, String>(secret)
        };
        match tokio::time::timeout(config.monitor.timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?} (monitor.timeout)", config.monitor.timeout)),
        }
    });
    let answer = ask.await.map_err(|e| ProxyError::AuthQuery(e.to_string()))?;
    answer.map_err(|e| {
        tracing::warn!(error = %e, "[auth] query failed");
        ProxyError::AuthQuery(e)
    })
}

/// A stored secret as a user: SCRAM verifiers log in with SCRAM (and passthrough to the
/// servers), md5 hashes with md5; anything else (a NULL, a plaintext) is not used.
fn as_user(user: &str, secret: &str) -> Option<UserConfig> {
    let auth = match Secret::parse(secret).ok()? {
        Secret::Scram(_) => AuthMethod::ScramSha256,
        Secret::Md5(_) => AuthMethod::Md5,
        Secret::Plain(_) => return None,
    };
    Some(UserConfig {
        name: user.to_string(),
        password: secret.to_string(),
        server_password: None,
        auth,
        max_client_connections: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_secrets_become_users_with_their_method() {
        let verifier = crate::secret::ScramVerifier::generate("pw").to_string();
        assert_eq!(as_user("a", &verifier).map(|u| u.auth), Some(AuthMethod::ScramSha256));
        let md5 = crate::secret::md5_hash("a", "pw");
        assert_eq!(as_user("a", &md5).map(|u| u.auth), Some(AuthMethod::Md5));
        assert!(as_user("a", "plaintext").is_none(), "a plaintext secret is not taken");
    }
}
