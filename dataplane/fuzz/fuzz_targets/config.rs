//! The config loader on arbitrary text: every input is a `Config` or a
//! `ConfigError`, never a panic (the same loader reads `--config` files,
//! `sluice check` input and API bodies' YAML).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sluice_control::config::load_str(text, "fuzz");
    }
});
