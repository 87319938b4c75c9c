//! Any bytes given to the trace-file reader: every outcome is items, a clean end, or one
//! damage report; never a panic, a hang or an out-of-bounds read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockd_trace::tracefile::Reader;

fuzz_target!(|data: &[u8]| {
    let Ok(mut r) = Reader::from_bytes(data.to_vec()) else {
        return;
    };
    // Each call consumes at least one record header, so this ends.
    while let Ok(Some(_)) = r.read() {}
});
