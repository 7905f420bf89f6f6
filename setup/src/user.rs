//! `--user NAME`: handing the VFIO group and the hugepage mount to a
//! non-root user, and what that user still needs (a locked-memory limit
//! VFIO can pin its DMA memory under).

use std::fmt;
use std::str::FromStr;

use crate::error::SetupError;
use crate::host::{show_limit, Memlock};
use crate::system::System;

/// A user as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSpec {
    /// A user name.
    Name(String),
    /// A numeric uid.
    Uid(u32),
}

impl FromStr for UserSpec {
    type Err = SetupError;

    /// Accepts a user name or a numeric uid. Names are checked only for
    /// what can never be a login name (empty, white space, `:` or `/`, a
    /// leading `-`, control characters, more than 256 bytes), so
    /// directory users with dots, capitals or `@` still work.
    fn from_str(text: &str) -> Result<Self, SetupError> {
        let invalid = |reason| SetupError::InvalidUser {
            spec: text.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(invalid("the user name is empty"));
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse::<u32>()
                .map(UserSpec::Uid)
                .map_err(|_| invalid("the uid is out of range"));
        }
        if text.len() > 256 {
            return Err(invalid("the user name is longer than 256 bytes"));
        }
        if text.starts_with('-') {
            return Err(invalid("a user name cannot start with `-`"));
        }
        if text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '/')
        {
            return Err(invalid(
                "a user name cannot contain white space, control characters, `:` or `/`",
            ));
        }
        Ok(UserSpec::Name(text.to_owned()))
    }
}

impl fmt::Display for UserSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserSpec::Name(name) => f.write_str(name),
            UserSpec::Uid(uid) => write!(f, "{uid}"),
        }
    }
}

/// A user that exists on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The login name.
    pub name: String,
    /// The uid.
    pub uid: u32,
    /// The primary group's gid.
    pub gid: u32,
}

/// Looks `spec` up through `system`.
pub fn resolve(system: &dyn System, spec: &UserSpec) -> Result<User, SetupError> {
    match system.lookup_user(spec) {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(SetupError::NoSuchUser {
            spec: spec.to_string(),
        }),
        Err(detail) => Err(SetupError::UserLookup {
            spec: spec.to_string(),
            detail,
        }),
    }
}

/// What a user running isonvme needs to know about locked memory: VFIO
/// pins every byte of DMA memory and counts it against the process's
/// `RLIMIT_MEMLOCK` (root, with CAP_IPC_LOCK, is exempt). `pinned_kb` is
/// how much the user may pin (the hugepages reserved), `current` the
/// limit of this (root) process, shown for comparison.
pub fn memlock_advice(user: &User, pinned_kb: u64, current: Option<Memlock>) -> String {
    let name = &user.name;
    let here = current.map_or_else(String::new, |limit| {
        format!(
            " This shell's limit is {} soft, {} hard; {name}'s depends on how they log in.",
            show_limit(limit.soft),
            show_limit(limit.hard),
        )
    });
    let (limit, need) = if pinned_kb == 0 {
        (
            "unlimited".to_owned(),
            "No hugepages are reserved yet (`isonvme setup hugepages N`), so the simplest \
             limit is unlimited."
                .to_owned(),
        )
    } else {
        (
            pinned_kb.to_string(),
            format!(
                "The hugepages reserved are {pinned_kb} KiB, so the limit must be at least that \
                 (or unlimited)."
            ),
        )
    };
    format!(
        "memlock: VFIO pins all of isonvme's DMA memory and counts it against {name}'s \
         locked-memory limit (`ulimit -l`, in KiB).{here} {need} Allow it, then log in again \
         as {name}:\n\
         \x20 echo '{name} - memlock {limit}' | sudo tee /etc/security/limits.d/isonvme.conf\n\
         \x20 (a systemd service needs LimitMEMLOCK= instead: LimitMEMLOCK=infinity)\n\
         Check as {name}: `ulimit -l` must print {limit}{}",
        if limit == "unlimited" {
            ""
        } else {
            " or unlimited"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_specs_are_parsed() {
        assert_eq!(
            "alice".parse::<UserSpec>().unwrap(),
            UserSpec::Name("alice".into())
        );
        assert_eq!(
            "first.last@CORP".parse::<UserSpec>().unwrap(),
            UserSpec::Name("first.last@CORP".into())
        );
        assert_eq!("1000".parse::<UserSpec>().unwrap(), UserSpec::Uid(1000));
    }

    #[test]
    fn bad_user_specs_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("-alice", "start with `-`"),
            ("al ice", "white space"),
            ("alice:staff", "`:`"),
            ("../root", "`/`"),
            ("99999999999", "out of range"),
        ] {
            let error = bad.parse::<UserSpec>().unwrap_err();
            assert!(matches!(error, SetupError::InvalidUser { .. }), "{bad}");
            let text = error.to_string();
            assert!(text.contains(why), "{bad}: {text}");
            assert_eq!(error.exit_code(), crate::error::exit::USAGE);
        }
        let long = "a".repeat(300);
        assert!(long.parse::<UserSpec>().is_err());
    }

    #[test]
    fn memlock_advice_prints_the_limits_line() {
        let user = User {
            name: "alice".into(),
            uid: 1000,
            gid: 1000,
        };
        let text = memlock_advice(
            &user,
            512 * 2048,
            Some(Memlock {
                soft: Some(8 << 20),
                hard: Some(8 << 20),
            }),
        );
        assert!(text.contains("alice - memlock 1048576"), "{text}");
        assert!(
            text.contains("/etc/security/limits.d/isonvme.conf"),
            "{text}"
        );
        assert!(text.contains("ulimit -l"), "{text}");
        assert!(text.contains("8192 KiB soft"), "{text}");
        assert!(text.contains("at least that"), "{text}");
        let text = memlock_advice(&user, 0, None);
        assert!(text.contains("alice - memlock unlimited"), "{text}");
        assert!(text.contains("No hugepages are reserved yet"), "{text}");
    }
}
