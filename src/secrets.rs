//! Which client settings are secrets, and what is printed instead of them.
//! Its own room so that both the pipeline files (`config`, which redacts
//! them in `check` and `Debug`) and the errors (`error`, which redact a
//! refused value) can use it without importing each other.

/// What is printed instead of a secret value.
pub const REDACTED: &str = "***";

/// True for librdkafka keys whose values are secrets: passwords,
/// passphrases, client secrets, private keys (inline PEM), JAAS and
/// OAUTHBEARER configs.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "passphrase", "private", "jaas"]
        .iter()
        .any(|w| k.contains(w))
        || k == "ssl.key.pem"
        || k == "sasl.oauthbearer.config"
}
