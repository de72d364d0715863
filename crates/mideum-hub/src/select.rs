//! Which files of a repository a pull fetches.

use crate::client::Sibling;
use crate::error::{HubError, Result};

/// The files a safetensors checkpoint needs (top level only), plus the model card and licence.
const DEFAULT_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
    "*.safetensors",
];

/// Small documents always taken when present.
const DOCS: &[&str] = &["README.md", "LICENSE", "LICENSE.*", "LICENSE-*", "NOTICE"];

/// Shell-style glob: `*` any run of characters (including '/', as Python's fnmatch),
/// `?` one character, `[abc]`/`[a-z]`/`[!x]` a class.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with one backtrack point for the last '*'.
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class_match(&p, pi, n[ni]) {
                        if matched {
                            pi = next;
                            ni += 1;
                            continue;
                        }
                    } else if n[ni] == '[' {
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
                c if c == n[ni] => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the class starting at `p[i] == '['`; returns (matched, index after ']'),
/// or None when the class is not closed.
fn class_match(p: &[char], i: usize, c: char) -> Option<(bool, usize)> {
    let mut j = i + 1;
    let negate = matches!(p.get(j), Some('!') | Some('^'));
    if negate {
        j += 1;
    }
    let mut matched = false;
    let mut first = true;
    while j < p.len() {
        if p[j] == ']' && !first {
            return Some((matched != negate, j + 1));
        }
        first = false;
        if j + 2 < p.len() && p[j + 1] == '-' && p[j + 2] != ']' {
            if p[j] <= c && c <= p[j + 2] {
                matched = true;
            }
            j += 3;
        } else {
            if p[j] == c {
                matched = true;
            }
            j += 1;
        }
    }
    None
}

fn any_match(patterns: &[&str], name: &str) -> bool {
    patterns.iter().any(|p| glob_match(p, name))
}

fn is_top_level(name: &str) -> bool {
    !name.contains('/')
}

/// The siblings to download. Without `include`: the checkpoint files of a safetensors repo, or
/// the one `.gguf` of a GGUF repo (an error listing the candidates when there are several).
/// With `include`: the files matching any glob, plus the model card and licence.
pub fn select<'a>(
    repo: &str,
    siblings: &'a [Sibling],
    include: &[String],
) -> Result<Vec<&'a Sibling>> {
    let names: Vec<String> = siblings.iter().map(|s| s.rfilename.clone()).collect();
    let docs = |s: &&Sibling| is_top_level(&s.rfilename) && any_match(DOCS, &s.rfilename);
    if !include.is_empty() {
        let pats: Vec<&str> = include.iter().map(String::as_str).collect();
        let picked: Vec<&Sibling> = siblings
            .iter()
            .filter(|s| any_match(&pats, &s.rfilename))
            .collect();
        if picked.is_empty() {
            return Err(HubError::NothingMatched {
                repo: repo.to_string(),
                patterns: include.to_vec(),
                available: names,
            });
        }
        let mut out = picked;
        for s in siblings.iter().filter(docs) {
            if !out.iter().any(|o| o.rfilename == s.rfilename) {
                out.push(s);
            }
        }
        return Ok(out);
    }
    let has_safetensors = siblings
        .iter()
        .any(|s| is_top_level(&s.rfilename) && s.rfilename.ends_with(".safetensors"));
    if has_safetensors {
        return Ok(siblings
            .iter()
            .filter(|s| {
                is_top_level(&s.rfilename)
                    && (any_match(DEFAULT_FILES, &s.rfilename) || any_match(DOCS, &s.rfilename))
            })
            .collect());
    }
    let ggufs: Vec<&Sibling> = siblings
        .iter()
        .filter(|s| s.rfilename.ends_with(".gguf"))
        .collect();
    match ggufs.len() {
        0 => Err(HubError::NoWeights {
            repo: repo.to_string(),
            available: names,
        }),
        1 => {
            let mut out = ggufs;
            out.extend(siblings.iter().filter(docs));
            Ok(out)
        }
        _ => Err(HubError::AmbiguousGguf {
            repo: repo.to_string(),
            candidates: ggufs.iter().map(|s| s.rfilename.clone()).collect(),
        }),
    }
}

/// A file name from the hub is used as a path under the snapshot: refuse anything that could
/// leave it.
pub fn check_file_name(repo: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\\')
        && !name.contains('\0')
        && name
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
        && !name.contains(':');
    if ok {
        Ok(())
    } else {
        Err(HubError::UnsafeFileName {
            repo: repo.to_string(),
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sib(n: &str) -> Sibling {
        Sibling {
            rfilename: n.into(),
            size: Some(1),
            blob_id: None,
            lfs: None,
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match(
            "*.safetensors",
            "model-00001-of-00002.safetensors"
        ));
        assert!(glob_match("*Q4_K_M*", "Midm-2.0-Mini-Instruct-Q4_K_M.gguf"));
        assert!(!glob_match("*.json", "a.jsonl"));
        assert!(glob_match("model-0000[1-2]-*", "model-00002-of-3"));
        assert!(!glob_match("model-0000[!1]-*", "model-00001-of-3"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("", "x"));
        assert!(glob_match("[", "["));
    }

    #[test]
    fn picks_checkpoint_files() {
        let s: Vec<Sibling> = [
            ".gitattributes",
            "README.md",
            "config.json",
            "model.safetensors",
            "original/consolidated.safetensors",
            "pytorch_model.bin",
            "tokenizer.json",
            "LICENSE",
        ]
        .iter()
        .map(|n| sib(n))
        .collect();
        let got: Vec<&str> = select("r", &s, &[])
            .unwrap()
            .iter()
            .map(|s| s.rfilename.as_str())
            .collect();
        assert_eq!(
            got,
            [
                "README.md",
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "LICENSE"
            ]
        );
    }

    #[test]
    fn gguf_repos_need_a_choice() {
        let s: Vec<Sibling> = ["README.md", "m-Q4_K_M.gguf", "m-Q8_0.gguf"]
            .iter()
            .map(|n| sib(n))
            .collect();
        let e = select("r", &s, &[]).unwrap_err();
        assert!(e.to_string().contains("m-Q4_K_M.gguf, m-Q8_0.gguf"), "{e}");
        let got: Vec<&str> = select("r", &s, &["*Q8_0*".into()])
            .unwrap()
            .iter()
            .map(|s| s.rfilename.as_str())
            .collect();
        assert_eq!(got, ["m-Q8_0.gguf", "README.md"]);
        assert!(matches!(
            select("r", &s, &["*Q2*".into()]),
            Err(HubError::NothingMatched { .. })
        ));
        let only_bin: Vec<Sibling> = ["pytorch_model.bin"].iter().map(|n| sib(n)).collect();
        assert!(matches!(
            select("r", &only_bin, &[]),
            Err(HubError::NoWeights { .. })
        ));
    }

    #[test]
    fn unsafe_names() {
        for n in [
            "../x",
            "/etc/passwd",
            "a/../../b",
            "a\\b",
            "",
            "a//b",
            "C:x",
        ] {
            assert!(check_file_name("r", n).is_err(), "{n}");
        }
        check_file_name("r", "sub/model.safetensors").unwrap();
    }
}
