//! NLM protocol numbers (include/linux/lockd/xdr.h, the Open Group's XNFS): the eBPF programs
//! write them into records and the agent reads them back, so both take them from here.

/// Procedures (NLMPROC_*), as in an NlmEvent's `cmd`.
pub mod proc_num {
    pub const NULL: u32 = 0;
    pub const TEST: u32 = 1;
    pub const LOCK: u32 = 2;
    pub const CANCEL: u32 = 3;
    pub const UNLOCK: u32 = 4;
    pub const GRANTED: u32 = 5;
}

/// Statuses (nlm_stats; 5-9 are NLMv4), as in an NlmEvent's `nlm_status`.
pub mod status {
    pub const GRANTED: u32 = 0;
    pub const DENIED: u32 = 1;
    pub const DENIED_NOLOCKS: u32 = 2;
    pub const BLOCKED: u32 = 3;
    pub const DENIED_GRACE_PERIOD: u32 = 4;
    pub const DEADLCK: u32 = 5;
    pub const ROFS: u32 = 6;
    pub const STALE_FH: u32 = 7;
    pub const FBIG: u32 = 8;
    pub const FAILED: u32 = 9;
}
