//! A copy's manifest on a replica: written after the copy is complete, so a copy
//! without one never counts.
//!
//! Its public part lets a service without the identity check that a copy is whole
//! (size, SHA-256 of the stored bytes) and apply retention; what the database holds is
//! in [`Facts`], sealed to the replica's age recipients (plain when the replica is
//! unencrypted). Sealing gives secrecy, not authenticity (anyone may encrypt to a
//! public key); a drill or restore checks the facts against the decrypted database
//! itself, which is what proves a copy.

use std::io::{Read, Write};

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ReplicaError;
use crate::config::Encryption;

pub const FORMAT: u32 = 1;

/// What the database in a copy holds, from its local, verified backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// Size and SHA-256 of the SQLite file itself.
    pub size_bytes: u64,
    pub sha256: String,
    pub last_event_id: i64,
    pub event_count: i64,
    pub schema_version: String,
    pub verified_at: DateTime<Utc>,
}

/// The facts: age-encrypted and base64, or plain on an unencrypted replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SealedFacts {
    Age(String),
    Plain(Facts),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteManifest {
    pub format: u32,
    /// The local backup's name; the copy's object name is derived from it.
    pub name: String,
    pub encryption: Encryption,
    pub compression: String,
    /// Size and SHA-256 of the stored (compressed, encrypted) object.
    pub object_bytes: u64,
    pub object_sha256: String,
    /// When the local backup was taken, and when its copy was complete here.
    pub created_at: DateTime<Utc>,
    pub uploaded_at: DateTime<Utc>,
    /// The host that shipped it.
    pub host: String,
    pub facts: SealedFacts,
}

impl RemoteManifest {
    /// The facts, decrypted with `identities` when they are sealed.
    pub fn open_facts(&self, identities: &[age::x25519::Identity]) -> Result<Facts, ReplicaError> {
        match &self.facts {
            SealedFacts::Plain(facts) => Ok(facts.clone()),
            SealedFacts::Age(text) => {
                let json = open_sealed(text, identities).map_err(|e| {
                    ReplicaError::Decrypt(format!("manifest of {}: {e}", self.name))
                })?;
                serde_json::from_slice(&json)
                    .map_err(|e| ReplicaError::Decrypt(format!("manifest of {}: {e}", self.name)))
            }
        }
    }
}

/// Seals `facts` for a manifest.
pub fn seal(
    facts: &Facts,
    encryption: Encryption,
    recipients: &[age::x25519::Recipient],
) -> Result<SealedFacts, ReplicaError> {
    match encryption {
        Encryption::None => Ok(SealedFacts::Plain(facts.clone())),
        Encryption::Age => {
            let json =
                serde_json::to_vec(facts).map_err(|e| ReplicaError::Encrypt(e.to_string()))?;
            Ok(SealedFacts::Age(seal_bytes(&json, recipients)?))
        }
    }
}

/// `plain` encrypted to `recipients` with age, as base64 (for a JSON field).
pub fn seal_bytes(
    plain: &[u8],
    recipients: &[age::x25519::Recipient],
) -> Result<String, ReplicaError> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| ReplicaError::Encrypt(e.to_string()))?;
    let mut sealed = Vec::new();
    let mut writer = encryptor
        .wrap_output(&mut sealed)
        .map_err(|e| ReplicaError::Encrypt(e.to_string()))?;
    writer
        .write_all(plain)
        .and_then(|()| writer.finish().map(|_| ()))
        .map_err(|e| ReplicaError::Encrypt(e.to_string()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
}

/// The bytes [`seal_bytes`] sealed, decrypted with `identities`.
pub fn open_sealed(text: &str, identities: &[age::x25519::Identity]) -> Result<Vec<u8>, String> {
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| e.to_string())?;
    let decryptor = age::Decryptor::new(&sealed[..]).map_err(|e| e.to_string())?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| e.to_string())?;
    let mut plain = Vec::new();
    reader.read_to_end(&mut plain).map_err(|e| e.to_string())?;
    Ok(plain)
}
