//! Repository ids (`org/name`), revisions, and the short aliases, parsed and validated once.

use crate::error::{HubError, Result};
use std::fmt;

/// Short names for the models Mideum is made for. The one table of aliases.
pub const ALIASES: &[(&str, &str)] = &[
    ("midm-mini", "K-intelligence/Midm-2.0-Mini-Instruct"),
    ("midm-base", "K-intelligence/Midm-2.0-Base-Instruct"),
];

/// The repository an alias stands for.
pub fn alias(name: &str) -> Option<&'static str> {
    ALIASES
        .iter()
        .find(|(a, _)| a.eq_ignore_ascii_case(name))
        .map(|(_, r)| *r)
}

/// A validated Hugging Face model repository id, `org/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoId {
    org: String,
    name: String,
}

fn bad(reference: &str, reason: impl Into<String>) -> HubError {
    HubError::InvalidReference {
        reference: reference.to_string(),
        reason: reason.into(),
    }
}

fn check_part(reference: &str, part: &str, what: &str) -> Result<()> {
    if part.is_empty() {
        return Err(bad(
            reference,
            format!("the {what} is empty (expected ORG/NAME)"),
        ));
    }
    if part.len() > 96 {
        return Err(bad(
            reference,
            format!("the {what} is longer than 96 characters"),
        ));
    }
    if let Some(c) = part
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(bad(
            reference,
            format!("{c:?} is not allowed in the {what} (letters, digits, '-', '_' and '.' are)"),
        ));
    }
    if part.contains("--") || part.contains("..") {
        return Err(bad(
            reference,
            format!("'--' and '..' are not allowed in the {what}"),
        ));
    }
    if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
        return Err(bad(
            reference,
            format!("the {what} cannot start or end with '-' or '.'"),
        ));
    }
    Ok(())
}

impl RepoId {
    pub fn parse(s: &str) -> Result<RepoId> {
        let mut parts = s.split('/');
        let (org, name) = match (parts.next(), parts.next(), parts.next()) {
            (Some(o), Some(n), None) => (o, n),
            (_, None, _) => {
                return Err(bad(
                    s,
                    "expected ORG/NAME, e.g. K-intelligence/Midm-2.0-Mini-Instruct",
                ))
            }
            _ => return Err(bad(s, "too many '/' (expected ORG/NAME)")),
        };
        check_part(s, org, "organization")?;
        check_part(s, name, "model name")?;
        if name.ends_with(".git") {
            return Err(bad(s, "the model name cannot end with .git"));
        }
        Ok(RepoId {
            org: org.to_string(),
            name: name.to_string(),
        })
    }

    pub fn org(&self) -> &str {
        &self.org
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store folder name, as huggingface_hub names it: `models--org--name`.
    pub fn folder_name(&self) -> String {
        format!("models--{}--{}", self.org, self.name)
    }

    /// Inverse of [`RepoId::folder_name`].
    pub fn from_folder_name(folder: &str) -> Option<RepoId> {
        let rest = folder.strip_prefix("models--")?;
        let (org, name) = rest.split_once("--")?;
        RepoId::parse(&format!("{org}/{name}")).ok()
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.org, self.name)
    }
}

/// Checks a revision (branch, tag, commit hash, or `refs/pr/N`).
pub fn check_revision(reference: &str, rev: &str) -> Result<()> {
    if rev.is_empty() {
        return Err(bad(reference, "the revision after '@' is empty"));
    }
    if rev.len() > 256 {
        return Err(bad(reference, "the revision is too long"));
    }
    if let Some(c) = rev
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
    {
        return Err(bad(
            reference,
            format!("{c:?} is not allowed in a revision"),
        ));
    }
    if rev.starts_with('/')
        || rev.ends_with('/')
        || rev
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(bad(
            reference,
            "the revision has an empty, '.' or '..' path part",
        ));
    }
    Ok(())
}

/// True for a full 40-hex-digit commit hash.
pub fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `org/name[@rev]` (or an alias, optionally with `@rev`), parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelRef {
    pub repo: RepoId,
    pub revision: Option<String>,
}

impl ModelRef {
    pub fn parse(s: &str) -> Result<ModelRef> {
        let (base, rev) = match s.split_once('@') {
            Some((b, r)) => (b, Some(r)),
            None => (s, None),
        };
        let repo = match alias(base) {
            Some(r) => RepoId::parse(r)?,
            None => RepoId::parse(base).map_err(|e| match e {
                HubError::InvalidReference { reason, .. } => bad(s, reason),
                e => e,
            })?,
        };
        if let Some(r) = rev {
            check_revision(s, r)?;
        }
        Ok(ModelRef {
            repo,
            revision: rev.map(str::to_string),
        })
    }

    pub fn revision_or_main(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.revision {
            Some(r) => write!(f, "{}@{r}", self.repo),
            None => write!(f, "{}", self.repo),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_revisions_and_aliases() {
        let r = ModelRef::parse("K-intelligence/Midm-2.0-Mini-Instruct@main").unwrap();
        assert_eq!(r.repo.to_string(), "K-intelligence/Midm-2.0-Mini-Instruct");
        assert_eq!(r.revision.as_deref(), Some("main"));
        assert_eq!(
            r.repo.folder_name(),
            "models--K-intelligence--Midm-2.0-Mini-Instruct"
        );
        assert_eq!(
            RepoId::from_folder_name("models--K-intelligence--Midm-2.0-Mini-Instruct"),
            Some(r.repo.clone())
        );
        let a = ModelRef::parse("midm-base").unwrap();
        assert_eq!(a.repo.to_string(), "K-intelligence/Midm-2.0-Base-Instruct");
        assert_eq!(a.revision, None);
        let p = ModelRef::parse("org/name@refs/pr/1").unwrap();
        assert_eq!(p.revision.as_deref(), Some("refs/pr/1"));
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "name",
            "org/",
            "/name",
            "a/b/c",
            "org/na me",
            "org/na--me",
            "org/..x",
            "-org/name",
            "org/name.",
            "org/name@",
            "org/name@../x",
            "org/name@a b",
            "org/ná",
            "org/x.git",
        ] {
            let e = ModelRef::parse(bad).unwrap_err();
            assert!(matches!(e, HubError::InvalidReference { .. }), "{bad}: {e}");
        }
    }
}
