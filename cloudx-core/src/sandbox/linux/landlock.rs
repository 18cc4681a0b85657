//! Landlock as a second layer over the sandbox's file policy.
//!
//! The supervisor creates the ruleset (what is handled, and the scopes) with the landlock
//! crate; init adds the path rules once the sandbox's root exists (the tmpfs folders are made
//! there) and restricts itself, with raw system calls (see `namespaces.rs`). The rules mirror
//! the mounts: everything readable and executable, only the workspace, `/tmp` and `/dev/shm`
//! writable, and the device files and `/proc` readable and writable as files (`/proc/sys` is
//! read-only by mount).

use std::ffi::CString;
use std::os::fd::OwnedFd;

use landlock::{ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, Ruleset, RulesetAttr, Scope};

use crate::error::{Error, ErrorKind, Result};

/// The rules of one run.
pub(super) struct Rules {
    pub(super) abi: u8,
    handled: BitFlags<AccessFs>,
    scoped: BitFlags<Scope>,
    pub(super) child_rules: Vec<(CString, u64)>,
    pub(super) described: Vec<String>,
    pub(super) scopes: Vec<&'static str>,
}

fn abi_of(version: u8) -> ABI {
    match version {
        0 => ABI::Unsupported,
        1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        6 => ABI::V6,
        _ => ABI::V7,
    }
}

impl Rules {
    pub(super) fn new(kernel_abi: u8) -> Result<Rules> {
        let abi = abi_of(kernel_abi);
        let all = AccessFs::from_all(abi);
        let read = AccessFs::ReadFile | AccessFs::ReadDir | AccessFs::Execute;
        // Device files and /proc: read and write files (and truncate: `> /dev/null`), and the
        // ioctls of terminals; no creating, removing or renaming.
        let files =
            (AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::ReadDir | AccessFs::Truncate | AccessFs::IoctlDev)
                & all;
        let rules: [(&str, BitFlags<AccessFs>, &str); 6] = [
            ("/", read, "read, execute"),
            ("/workspace", all, "everything"),
            ("/tmp", all, "everything"),
            ("/dev/shm", all, "everything"),
            ("/dev", files, "read and write files"),
            ("/proc", files & !AccessFs::IoctlDev, "read and write files"),
        ];
        let mut child_rules = Vec::new();
        let mut described = Vec::new();
        for (path, access, words) in rules {
            child_rules.push((CString::new(path).expect("constant"), access.bits()));
            described.push(format!("{path}: {words}"));
        }
        let (scoped, scopes) = if kernel_abi >= 6 {
            (Scope::Signal | Scope::AbstractUnixSocket, vec!["signals", "abstract unix sockets"])
        } else {
            (BitFlags::empty(), Vec::new())
        };
        Ok(Rules { abi: kernel_abi.min(7), handled: all, scoped, child_rules, described, scopes })
    }

    /// A new ruleset descriptor for one run (the rules are added by init).
    pub(super) fn create_ruleset(&self) -> Result<OwnedFd> {
        let fail = |e: landlock::RulesetError| {
            Error::new(ErrorKind::Unavailable, format!("cannot create the landlock ruleset: {e}")).with_source(e)
        };
        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(self.handled)
            .map_err(fail)?;
        if !self.scoped.is_empty() {
            ruleset = ruleset.scope(self.scoped).map_err(fail)?;
        }
        let created = ruleset.create().map_err(fail)?;
        Option::<OwnedFd>::from(created)
            .ok_or_else(|| Error::new(ErrorKind::Unavailable, "landlock gave no ruleset on this kernel"))
    }
}
