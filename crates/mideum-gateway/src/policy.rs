//! Data-sovereignty policy: given the kinds of personal data found in a request and the
//! track a backend serves (local, domestic, overseas), decide whether the request may go
//! there and in what form. Secure defaults: unique identifiers never leave the premises,
//! overseas destinations are off until a policy enables them.

use crate::config::{group_of, Action, Config, PolicyCfg, Track};
use std::collections::{BTreeMap, HashMap};

/// A policy ready for lookups.
#[derive(Debug, Clone)]
pub struct Policy {
    pub allow_overseas: bool,
    pub local_backend: Option<String>,
    /// Entity type or group name -> action per track (local, domestic, overseas).
    rules: HashMap<String, [Option<Action>; 3]>,
}

/// What the policy says about one destination.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Send it, applying `actions` (only `Mask` / `Pseudonymize` entries) per entity type.
    Send,
    /// Not to this destination; serve it from a local backend.
    RouteLocal,
    /// Not to this destination (e.g. overseas disabled); try the next backend.
    Skip,
    /// Refuse the request (403).
    Block,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    /// Per entity type name, the transformation to apply (mask or pseudonymize).
    pub actions: BTreeMap<String, Action>,
    /// Short ASCII explanation, sent in `x-mideum-policy` and kept in the audit record.
    pub reason: String,
}

impl Decision {
    /// The policy decision name for metrics and audit: the strongest action taken.
    pub fn name(&self) -> &'static str {
        match self.verdict {
            Verdict::Block => "block",
            Verdict::RouteLocal => "route_local",
            Verdict::Skip => "skip",
            Verdict::Send => self
                .actions
                .values()
                .max()
                .copied()
                .unwrap_or(Action::Allow)
                .as_str(),
        }
    }
}

fn idx(t: Track) -> usize {
    match t {
        Track::Local => 0,
        Track::Domestic => 1,
        Track::Overseas => 2,
    }
}

/// The built-in action when no rule names the type or its group.
pub fn default_action(group: &str, track: Track) -> Action {
    match (track, group) {
        (Track::Local, _) => Action::Allow,
        (_, "unique_id") => Action::RouteLocal,
        _ => Action::Pseudonymize,
    }
}

impl Policy {
    pub fn from_cfg(p: &PolicyCfg) -> Policy {
        let rules = p
            .rules
            .iter()
            .map(|(k, r)| {
                let a =
                    [&r.local, &r.domestic, &r.overseas].map(|x| x.as_ref().map(|s| *s.get_ref()));
                (k.get_ref().clone(), a)
            })
            .collect();
        Policy {
            allow_overseas: p.allow_overseas,
            local_backend: p.local_backend.as_ref().map(|s| s.get_ref().clone()),
            rules,
        }
    }

    /// The secure default policy.
    pub fn secure_default() -> Policy {
        Policy::from_cfg(&PolicyCfg::default())
    }

    /// The action for one entity type bound for `track`.
    pub fn action(&self, entity: &str, track: Track) -> Action {
        let i = idx(track);
        let group = group_of(entity);
        self.rules
            .get(entity)
            .and_then(|r| r[i])
            .or_else(|| self.rules.get(group).and_then(|r| r[i]))
            .unwrap_or_else(|| default_action(group, track))
    }

    /// Decides for one destination. `findings` are entity type names found in the request.
    pub fn decide<'a>(
        &self,
        findings: impl IntoIterator<Item = &'a str>,
        track: Track,
        confidential: bool,
    ) -> Decision {
        let mk = |verdict, reason: String| Decision {
            verdict,
            actions: BTreeMap::new(),
            reason,
        };
        if confidential && track != Track::Local {
            return mk(
                Verdict::RouteLocal,
                "data class confidential: local only".into(),
            );
        }
        if track == Track::Overseas && !self.allow_overseas {
            return mk(
                Verdict::Skip,
                "overseas destinations are disabled by policy".into(),
            );
        }
        let mut actions = BTreeMap::new();
        let mut strongest: Option<(Action, &str)> = None;
        for f in findings {
            let a = self.action(f, track);
            if strongest.is_none_or(|(s, _)| a > s) {
                strongest = Some((a, f));
            }
            if matches!(a, Action::Mask | Action::Pseudonymize) {
                actions.insert(f.to_string(), a);
            }
        }
        match strongest {
            None => mk(Verdict::Send, "no personal data found".into()),
            Some((Action::Block, f)) => mk(
                Verdict::Block,
                format!("{f} may not be sent to {} destinations", track.as_str()),
            ),
            Some((Action::RouteLocal, f)) => {
                mk(Verdict::RouteLocal, format!("{f} stays on the premises"))
            }
            Some((Action::Allow, _)) => Decision {
                verdict: Verdict::Send,
                actions,
                reason: format!("personal data allowed to {}", track.as_str()),
            },
            Some((a, _)) => {
                let kinds: Vec<&str> = actions.keys().map(String::as_str).collect();
                let reason = format!("{} {} for {}", a.as_str(), kinds.join(","), track.as_str());
                Decision {
                    verdict: Verdict::Send,
                    actions,
                    reason,
                }
            }
        }
    }
}

/// Every policy in the configuration, `default` always present.
#[derive(Debug, Clone)]
pub struct Policies {
    map: HashMap<String, Policy>,
}

impl Policies {
    pub fn from_config(c: &Config) -> Policies {
        let mut map: HashMap<String, Policy> = c
            .policies
            .iter()
            .map(|(n, p)| (n.clone(), Policy::from_cfg(p)))
            .collect();
        map.entry("default".into())
            .or_insert_with(Policy::secure_default);
        Policies { map }
    }

    /// The named policy, or `None` when no such policy exists.
    pub fn get(&self, name: Option<&str>) -> Option<&Policy> {
        self.map.get(name.unwrap_or("default"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_defaults() {
        let p = Policy::secure_default();
        let d = p.decide(["KR_RRN"], Track::Domestic, false);
        assert_eq!(d.verdict, Verdict::RouteLocal);
        let d = p.decide(["KR_PHONE"], Track::Overseas, false);
        assert_eq!(d.verdict, Verdict::Skip, "overseas is off by default");
        let d = p.decide(["KR_PHONE", "EMAIL"], Track::Domestic, false);
        assert_eq!(d.verdict, Verdict::Send);
        assert_eq!(d.actions.len(), 2);
        assert_eq!(d.name(), "pseudonymize");
        let d = p.decide(["KR_RRN"], Track::Local, false);
        assert_eq!((d.verdict.clone(), d.name()), (Verdict::Send, "allow"));
        let d = p.decide([], Track::Domestic, true);
        assert_eq!(d.verdict, Verdict::RouteLocal);
    }

    #[test]
    fn type_rules_win_over_groups() {
        let c = Config::parse(
            "[policies.default]\nallow_overseas = true\n[policies.default.rules]\ncontact = { overseas = \"block\" }\nEMAIL = { overseas = \"mask\" }\n",
            "t",
        )
        .unwrap();
        let ps = Policies::from_config(&c);
        let p = ps.get(None).unwrap();
        assert_eq!(p.action("EMAIL", Track::Overseas), Action::Mask);
        assert_eq!(p.action("KR_PHONE", Track::Overseas), Action::Block);
        assert_eq!(p.action("KR_PHONE", Track::Domestic), Action::Pseudonymize);
        let d = p.decide(["EMAIL", "KR_PHONE"], Track::Overseas, false);
        assert_eq!(d.verdict, Verdict::Block);
        assert!(d.reason.contains("KR_PHONE"));
        assert!(ps.get(Some("nope")).is_none());
    }
}
