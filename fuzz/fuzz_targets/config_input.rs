//! Bytes the config center reads from the network or the store: content validated by type,
//! publish and listen bodies, export files, stored items and keys, Nacos long-poll probes,
//! and ciphertexts. Each decodes to a value or an error, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_configcenter::cipher::Cipher;
use strata_configcenter::model::{ConfigItem, Gray, HistoryEntry, StoreKey};
use strata_configcenter::transfer::ExportFile;
use strata_configcenter::validate::{validate, ConfigType};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for kind in ConfigType::ALL {
            if let Err(e) = validate(kind, text) {
                assert!(e.line >= 1 && e.column >= 1, "positions are 1-based");
            }
        }
        let _ = strata_nacos::parse_probe(text);
        let cipher = Cipher::from_key("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
            .expect("valid key");
        let _ = cipher.decrypt(text, "public/DEFAULT_GROUP/cipher-x");
    }
    let _ = serde_json::from_slice::<strata_configcenter::Publish>(data);
    let _ = serde_json::from_slice::<strata_configcenter::http::ListenRequest>(data);
    let _ = serde_json::from_slice::<ExportFile>(data);
    let _ = serde_json::from_slice::<ConfigItem>(data);
    let _ = serde_json::from_slice::<HistoryEntry>(data);
    let _ = serde_json::from_slice::<Gray>(data);
    let _ = StoreKey::parse(data);
});
