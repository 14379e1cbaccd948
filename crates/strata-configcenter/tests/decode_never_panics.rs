//! Stable counterpart of the `config_input` fuzz target: arbitrary and mutated bytes never
//! panic the config center's parsers.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use strata_configcenter::cipher::Cipher;
use strata_configcenter::model::{ConfigItem, HistoryEntry, StoreKey};
use strata_configcenter::transfer::ExportFile;
use strata_configcenter::validate::{validate, ConfigType};

const VALID: &[&str] = &[
    r#"{"format":"strata-settings-export/1","namespace":"public","exported_at":1,"configs":[{"group":"G","data_id":"a","type":"json","content":"{}","md5":"99914b932bd37a50b983c5e7c90ae93b"}]}"#,
    r#"{"namespace":"public","group":"G","data_id":"a","content":"x","type":"text","md5":"9dd4e461268c8034f5c8564e155c67a6","version":3,"modified_at":1}"#,
    "a:\n  - 1\n  - [2, 3]\nb: {c: d}\n",
    "<root a=\"1\"><c>text</c></root>",
    "key = \"v\"\n[table]\nx = [1, 2]\n",
    "a=1\\\n  continued\nb:2\n",
];

fn parse_all(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        for kind in ConfigType::ALL {
            if let Err(e) = validate(kind, text) {
                assert!(e.line >= 1 && e.column >= 1);
            }
        }
        let cipher = Cipher::from_key("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap();
        let _ = cipher.decrypt(text, "public/G/cipher-a");
    }
    let _ = serde_json::from_slice::<ExportFile>(data);
    let _ = serde_json::from_slice::<ConfigItem>(data);
    let _ = serde_json::from_slice::<HistoryEntry>(data);
    let _ = serde_json::from_slice::<strata_configcenter::Publish>(data);
    let _ = StoreKey::parse(data);
}

proptest! {
    #[test]
    fn arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse_all(&data);
    }

    #[test]
    fn mutated_valid_inputs(which in 0..VALID.len(), at in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
        let mut data = VALID[which].as_bytes().to_vec();
        let i = at % data.len();
        data[i] = byte;
        parse_all(&data);
        data.truncate(cut % (data.len() + 1));
        parse_all(&data);
    }
}
