//! `mideum.toml`: backends, public models with their fallback chains, and data-sovereignty
//! policies. Parsed into typed structs and validated once at start; every error names the
//! line and the key at fault. API keys are never in the file, only the names of the
//! environment variables that hold them.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use toml::Spanned;

/// A configuration error, with the position it was found at.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}:{line}: `{key}`: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
}

/// Where a backend's data ends up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    Domestic,
    Overseas,
}

/// The three tracks a request can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Track {
    Local,
    Domestic,
    Overseas,
}

impl Track {
    pub fn as_str(self) -> &'static str {
        match self {
            Track::Local => "local",
            Track::Domestic => "domestic",
            Track::Overseas => "overseas",
        }
    }
}

/// What a policy does with a kind of personal data bound for a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Mask,
    Pseudonymize,
    RouteLocal,
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Mask => "mask",
            Action::Pseudonymize => "pseudonymize",
            Action::RouteLocal => "route_local",
            Action::Block => "block",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Strictly in the order listed.
    #[default]
    Fallback,
    /// First choice drawn by backend weight, the rest in order.
    Weighted,
    /// First choice the backend with the fewest requests in flight, the rest in order.
    LeastOutstanding,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointCfg {
    pub url: Spanned<String>,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendType {
    /// An engine in this process: a model given with `--model` (`served`) or loaded from `path`.
    Local,
    /// Any OpenAI-compatible server (OpenAI, vLLM, SGLang, TGI, Ollama, llama-server).
    Openai,
    /// Azure OpenAI: `{endpoint}/openai/deployments/{deployment}/...?api-version=`.
    AzureOpenai,
}

/// One backend. Which keys are needed depends on `type`; `validate` checks them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendCfg {
    #[serde(rename = "type")]
    pub kind: Spanned<BackendType>,
    /// local: the name of a model given with `--model`.
    pub served: Option<String>,
    /// local: a model directory or GGUF file to load.
    pub path: Option<Spanned<String>>,
    /// local: threads for the forward pass (0 = all cores).
    #[serde(default)]
    pub threads: usize,
    /// local with `path`: quantize the weights on load (q8_0, q4_0, q4_k, q5_k, q6_k).
    pub quant: Option<Spanned<String>>,
    /// openai / azure_openai: where the data goes.
    pub region: Option<Spanned<Region>>,
    /// openai: base URL including `/v1`; or `endpoints` for a pool.
    pub base_url: Option<Spanned<String>>,
    #[serde(default)]
    pub endpoints: Vec<EndpointCfg>,
    /// Name of the environment variable holding the key (openai: none = no Authorization).
    pub api_key_env: Option<Spanned<String>>,
    /// openai: model name sent upstream (default: the public model name).
    pub model: Option<String>,
    /// azure_openai: `https://NAME.openai.azure.com`.
    pub endpoint: Option<Spanned<String>>,
    pub deployment: Option<String>,
    pub api_version: Option<String>,
    #[serde(default = "d_connect")]
    pub connect_timeout_ms: u64,
    /// Longest wait for the answer's headers, and between two streamed chunks.
    #[serde(default = "d_timeout")]
    pub timeout_ms: u64,
    /// Extra attempts on connect errors, 5xx and 429.
    #[serde(default = "d_retries")]
    pub retries: u32,
    #[serde(default = "d_backoff")]
    pub backoff_ms: u64,
    /// Longest `Retry-After` honoured; longer ones move on to the next backend.
    #[serde(default = "d_max_retry_after")]
    pub max_retry_after_ms: u64,
    /// Seconds between active health checks (`GET {base}/models`); 0 = off.
    #[serde(default)]
    pub health_check_s: u64,
    /// Consecutive failures that open the circuit breaker.
    #[serde(default = "d_breaker")]
    pub breaker_failures: u32,
    #[serde(default = "d_cooldown")]
    pub breaker_cooldown_ms: u64,
    /// Relative price, for the `auto` model (lower is preferred).
    #[serde(default)]
    pub cost: f64,
    /// Largest prompt in tokens this backend accepts (0 = any), for the `auto` model.
    #[serde(default)]
    pub context: u64,
    /// Weight for the `weighted` model strategy.
    #[serde(default = "one")]
    pub weight: u32,
}

impl BackendCfg {
    /// The track this backend serves.
    pub fn track(&self) -> Track {
        match (
            self.kind.get_ref(),
            self.region.as_ref().map(|r| *r.get_ref()),
        ) {
            (BackendType::Local, _) => Track::Local,
            (_, Some(Region::Domestic)) => Track::Domestic,
            // A remote backend without a region is treated as overseas (the stricter one).
            (_, _) => Track::Overseas,
        }
    }
}

fn d_connect() -> u64 {
    2_000
}
fn d_timeout() -> u64 {
    60_000
}
fn d_retries() -> u32 {
    2
}
fn d_backoff() -> u64 {
    100
}
fn d_max_retry_after() -> u64 {
    5_000
}
fn d_breaker() -> u32 {
    5
}
fn d_cooldown() -> u64 {
    10_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCfg {
    pub backends: Vec<Spanned<String>>,
    #[serde(default)]
    pub strategy: Strategy,
}

/// One rule: action per destination; a destination left out keeps the default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleCfg {
    pub local: Option<Spanned<Action>>,
    pub domestic: Option<Spanned<Action>>,
    pub overseas: Option<Spanned<Action>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCfg {
    /// Cross-border transfer (PIPA Art. 28-8) needs a legal basis: off unless set.
    #[serde(default)]
    pub allow_overseas: bool,
    /// Local backend used for `route_local` when the model's chain has none.
    pub local_backend: Option<Spanned<String>>,
    /// Keys: an entity type (`KR_PHONE`) or a group (`unique_id`, `contact`, `financial`,
    /// `person`, `other`). A type's rule wins over its group's.
    #[serde(default)]
    pub rules: BTreeMap<Spanned<String>, RuleCfg>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerCfg {
    /// Environment variable with comma-separated static API keys (none: no authentication).
    pub api_keys_env: Option<Spanned<String>>,
    /// Visible AI-generated notice appended to every answer (AI Basic Act Art. 31).
    pub notice: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerCfg,
    #[serde(default)]
    pub backends: BTreeMap<String, Spanned<BackendCfg>>,
    #[serde(default)]
    pub models: BTreeMap<String, Spanned<ModelCfg>>,
    /// `default` applies unless a tenant names another.
    #[serde(default)]
    pub policies: BTreeMap<String, PolicyCfg>,
}

/// Guard entity type names grouped as policies name them.
pub fn group_of(entity: &str) -> &'static str {
    match entity {
        "KR_RRN" | "KR_FRN" | "KR_PASSPORT" | "KR_DRIVER_LICENSE" => "unique_id",
        "KR_PHONE" | "EMAIL" | "KR_ADDRESS" => "contact",
        "CREDIT_CARD" | "KR_BANK_ACCOUNT" => "financial",
        "KR_PERSON" => "person",
        _ => "other",
    }
}

pub const GROUPS: [&str; 5] = ["unique_id", "contact", "financial", "person", "other"];

fn line_of(src: &str, span: &Range<usize>) -> usize {
    src.as_bytes()[..span.start.min(src.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&src, &path.display().to_string())
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn parse(src: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(src).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate(src, file)?;
        Ok(cfg)
    }

    fn validate(&self, src: &str, file: &str) -> Result<(), ConfigError> {
        let err = |span: &Range<usize>, key: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            line: line_of(src, span),
            key: key.to_string(),
            message,
        };
        for (name, b) in &self.backends {
            let key = format!("backends.{name}");
            let bc = b.get_ref();
            let need = |v: bool, what: &str| -> Result<(), ConfigError> {
                if v {
                    Ok(())
                } else {
                    Err(err(
                        &b.span(),
                        &key,
                        format!(
                            "a backend of type {:?} needs {what}",
                            type_name(*bc.kind.get_ref())
                        ),
                    ))
                }
            };
            let remote_only = bc.region.is_some()
                || bc.base_url.is_some()
                || !bc.endpoints.is_empty()
                || bc.endpoint.is_some()
                || bc.api_key_env.is_some();
            match bc.kind.get_ref() {
                BackendType::Local => {
                    need(
                        bc.served.is_some() != bc.path.is_some(),
                        "exactly one of `served` (a --model name) or `path`",
                    )?;
                    if remote_only {
                        return Err(err(
                            &b.span(),
                            &key,
                            "a local backend takes no region, URL or key".into(),
                        ));
                    }
                    if let Some(q) = &bc.quant {
                        if bc.path.is_none() {
                            return Err(err(
                                &q.span(),
                                &format!("{key}.quant"),
                                "`quant` applies to a model loaded from `path`".into(),
                            ));
                        }
                        if mideum_model::QuantType::parse(q.get_ref()).is_none() {
                            return Err(err(
                                &q.span(),
                                &format!("{key}.quant"),
                                format!(
                                    "{:?} is not one of q8_0, q4_0, q4_k, q5_k, q6_k",
                                    q.get_ref()
                                ),
                            ));
                        }
                    }
                }
                BackendType::Openai => {
                    need(bc.region.is_some(), "`region` (domestic or overseas)")?;
                    need(
                        bc.base_url.is_some() == bc.endpoints.is_empty(),
                        "exactly one of `base_url` or `endpoints`",
                    )?;
                    if !bc.endpoints.is_empty() && bc.endpoints.iter().all(|e| e.weight == 0) {
                        return Err(err(
                            &b.span(),
                            &format!("{key}.endpoints"),
                            "at least one endpoint needs a weight above 0".into(),
                        ));
                    }
                }
                BackendType::AzureOpenai => {
                    need(bc.region.is_some(), "`region` (domestic or overseas)")?;
                    need(bc.endpoint.is_some(), "`endpoint`")?;
                    need(
                        bc.deployment.as_deref().is_some_and(|d| !d.is_empty()),
                        "`deployment`",
                    )?;
                    need(
                        bc.api_version.as_deref().is_some_and(|d| !d.is_empty()),
                        "`api_version`",
                    )?;
                    need(
                        bc.api_key_env.is_some(),
                        "`api_key_env` (the variable holding the api-key)",
                    )?;
                }
            }
            let urls = bc
                .endpoints
                .iter()
                .map(|e| &e.url)
                .chain(bc.base_url.iter())
                .chain(bc.endpoint.iter());
            for u in urls {
                check_url(u.get_ref()).map_err(|m| err(&u.span(), &format!("{key}.url"), m))?;
            }
            if let Some(k) = &bc.api_key_env {
                check_env_name(k.get_ref())
                    .map_err(|m| err(&k.span(), &format!("{key}.api_key_env"), m))?;
            }
            check_common(bc).map_err(|m| err(&b.span(), &key, m))?;
        }
        for (name, m) in &self.models {
            let key = format!("models.{name}");
            if m.get_ref().backends.is_empty() {
                return Err(err(&m.span(), &key, "needs at least one backend".into()));
            }
            for b in &m.get_ref().backends {
                if !self.backends.contains_key(b.get_ref()) {
                    return Err(err(
                        &b.span(),
                        &format!("{key}.backends"),
                        format!(
                            "no backend is named {:?} (defined: {})",
                            b.get_ref(),
                            self.backends.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
        }
        for (pname, p) in &self.policies {
            if let Some(lb) = &p.local_backend {
                if self
                    .backends
                    .get(lb.get_ref())
                    .map(|b| *b.get_ref().kind.get_ref())
                    != Some(BackendType::Local)
                {
                    return Err(err(
                        &lb.span(),
                        &format!("policies.{pname}.local_backend"),
                        format!("{:?} is not a local backend", lb.get_ref()),
                    ));
                }
            }
            for (k, r) in &p.rules {
                let kname = k.get_ref().as_str();
                let key = format!("policies.{pname}.rules.{kname}");
                let known =
                    GROUPS.contains(&kname) || mideum_guard::EntityType::from_name(kname).is_some();
                if !known {
                    return Err(err(
                        &k.span(),
                        &key,
                        format!(
                            "not an entity type or group; use one of {} or a type such as KR_PHONE",
                            GROUPS.join(", ")
                        ),
                    ));
                }
                let unique = kname == "unique_id" || group_of(kname) == "unique_id";
                for (dest, a) in [("domestic", &r.domestic), ("overseas", &r.overseas)] {
                    if let Some(a) = a {
                        if unique && *a.get_ref() == Action::Allow {
                            return Err(err(&a.span(), &format!("{key}.{dest}"), "unique identifiers (RRN, FRN, passport, licence) may not leave the premises in clear (PIPA Art. 24); use mask, pseudonymize, route_local or block".into()));
                        }
                    }
                }
                if let Some(a) = &r.local {
                    if *a.get_ref() == Action::RouteLocal {
                        return Err(err(
                            &a.span(),
                            &format!("{key}.local"),
                            "route_local makes no sense for the local destination".into(),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_url(u: &str) -> Result<(), String> {
    let ok = (u.starts_with("http://") || u.starts_with("https://"))
        && u.parse::<hyper::Uri>()
            .map(|x| x.host().is_some())
            .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(format!("{u:?} is not an http:// or https:// URL"))
    }
}

fn check_env_name(n: &str) -> Result<(), String> {
    if !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err(format!(
            "{n:?} is not an environment variable name (the key itself never goes in this file)"
        ))
    }
}

fn type_name(t: BackendType) -> &'static str {
    match t {
        BackendType::Local => "local",
        BackendType::Openai => "openai",
        BackendType::AzureOpenai => "azure_openai",
    }
}

fn check_common(c: &BackendCfg) -> Result<(), String> {
    if c.timeout_ms == 0 || c.connect_timeout_ms == 0 {
        return Err("timeouts must be above 0 ms".into());
    }
    if c.breaker_failures == 0 {
        return Err("`breaker_failures` must be at least 1".into());
    }
    if c.cost.is_nan() || c.cost < 0.0 {
        return Err("`cost` must be 0 or more".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(src: &str) -> String {
        Config::parse(src, "m.toml").unwrap_err().to_string()
    }

    #[test]
    fn the_example_parses() {
        let src = include_str!("../../../mideum.example.toml");
        let c = Config::parse(src, "mideum.example.toml").unwrap();
        assert!(c.models.contains_key("auto"));
        assert!(c.policies.contains_key("default"));
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = bad("[backends.a]\ntype = \"openai\"\nregion = \"domestic\"\nbase_url = \"http://x/v1\"\n\n[models.m]\nbackends = [\"a\",\n \"b\"]\n");
        assert!(
            e.contains("m.toml:8") && e.contains("models.m.backends") && e.contains("\"b\""),
            "{e}"
        );
        let e =
            bad("[backends.a]\ntype = \"openai\"\nregion = \"mars\"\nbase_url = \"http://x/v1\"\n");
        assert!(e.contains("line 3") && e.contains("mars"), "{e}");
        let e =
            bad("[backends.a]\ntype = \"openai\"\nregion = \"domestic\"\nbase_url = \"ftp://x\"\n");
        assert!(
            e.contains("m.toml:4") && e.contains("backends.a.url"),
            "{e}"
        );
        let e = bad("[backends.a]\ntype = \"openai\"\nregion = \"domestic\"\nbase_url = \"http://x/v1\"\napi_key_env = \"sk-live-123\"\n");
        assert!(e.contains("m.toml:5") && e.contains("api_key_env"), "{e}");
        let e = bad("[policies.default.rules]\nunique_id = { overseas = \"allow\" }\n");
        assert!(e.contains("m.toml:2") && e.contains("PIPA"), "{e}");
        let e = bad("[policies.default.rules]\nKR_FOO = { overseas = \"mask\" }\n");
        assert!(e.contains("m.toml:2") && e.contains("KR_FOO"), "{e}");
        let e = bad("[policies.default.rules]\nKR_PHONE = { overseas = \"maybe\" }\n");
        assert!(e.contains("line 2"), "{e}");
        let e = bad("[backends.a]\ntype = \"local\"\npath = \"m\"\nquant = \"q3\"\n");
        assert!(
            e.contains("m.toml:4") && e.contains("backends.a.quant"),
            "{e}"
        );
        let e = bad("[backends.a]\ntype = \"local\"\n");
        assert!(e.contains("m.toml:1") && e.contains("served"), "{e}");
        let e = bad("[server]\nport = 1\n");
        assert!(e.contains("port"), "{e}");
    }
}
