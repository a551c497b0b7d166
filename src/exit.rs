//! Exit codes, one meaning each (in the style of sysexits(3)), so a supervisor can
//! act on them: systemd stops restarting on a configuration error
//! (`RestartPreventExitStatus=64 78`), Docker reads 0 and 1 from `healthcheck`.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done, or healthy |
//! | 1 | the command ran and what it looked at is not ok: a check found problems, a job run failed, the service is not healthy, a backup or restore could not be done |
//! | 64 | usage: unknown command, argument or job name |
//! | 69 | unavailable: the service does not answer, or cannot listen |
//! | 70 | the service stopped after a panic (it stopped in order first) |
//! | 75 | the database is held by another dbwarden process: try again later |
//! | 78 | bad configuration: settings, a job file, PUID/PGID |

pub const OK: u8 = 0;
pub const NOT_OK: u8 = 1;
pub const USAGE: u8 = 64;
pub const UNAVAILABLE: u8 = 69;
pub const SOFTWARE: u8 = 70;
pub const TEMPFAIL: u8 = 75;
pub const CONFIG: u8 = 78;
