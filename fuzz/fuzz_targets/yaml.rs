//! The YAML layer: the input as a YAML file of the fleet repository, parsed and typed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fleet_agent::fuzz::parse_yaml(data);
});
