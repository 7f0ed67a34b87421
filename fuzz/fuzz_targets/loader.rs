//! The whole loader: a fleet repository decoded from the input (src/fuzz.rs `decode`),
//! loaded for every device its inventory names.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fleet_agent::fuzz::load_fleet(data);
});
