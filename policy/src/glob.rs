//! `glob.match` with OPA's semantics, and the compiled-pattern cache that
//! `glob.match` and the `regex.*` builtins share.
//!
//! Both engines call into this module: the Wasm host for modules that import
//! these builtins, and regorus, whose own `glob.match` is replaced (its
//! matcher is cloned from a global cache on every call, which rebuilds the
//! regex's lazy DFA and took a third of a SPIFFE allow-list's time).
//!
//! Patterns follow OPA (gobwas/glob): `*` matches within a segment, `**`
//! across segments, `?` one character that is not a delimiter, `[abc]`,
//! `[a-z]` and `[!abc]` one character of (or not of) a class, `{a,b}` one of
//! the alternatives, `\` escapes. Delimiters are single characters; an empty
//! list means `["."]`, and `null` means none (`*` then matches anything).

use std::cell::RefCell;
use std::collections::HashMap;

use foldhash::fast::FixedState;
use regex::Regex;

/// Compiled patterns kept per thread: a thread-owned `Regex` matches on its
/// pool's owner fast path, and no lock is shared between evaluating threads.
/// Past this many patterns the cache is emptied (a policy that builds
/// patterns from its input cannot grow it without bound).
const CACHE_CAPACITY: usize = 256;

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

#[derive(Default)]
struct Cache {
    compiled: HashMap<Box<str>, Regex, FixedState>,
    key: String,
}

/// Runs `f` with the compiled regex for `key` (which must name the pattern
/// and how it is translated), building it with `source` on a miss. Errors are
/// not cached.
fn with_compiled<R>(
    key: impl FnOnce(&mut String),
    source: impl FnOnce() -> Result<String, String>,
    f: impl FnOnce(&Regex) -> R,
) -> Result<R, String> {
    CACHE.with(|cell| {
        let mut cache = cell.borrow_mut();
        let cache = &mut *cache;
        cache.key.clear();
        key(&mut cache.key);
        if let Some(re) = cache.compiled.get(cache.key.as_str()) {
            return Ok(f(re));
        }
        let re = Regex::new(&source()?).map_err(|e| e.to_string())?;
        let out = f(&re);
        if cache.compiled.len() >= CACHE_CAPACITY {
            cache.compiled.clear();
        }
        cache.compiled.insert(cache.key.as_str().into(), re);
        Ok(out)
    })
}

/// Runs `f` with `pattern` compiled as a regular expression (cached).
pub(crate) fn with_regex<R>(pattern: &str, f: impl FnOnce(&Regex) -> R) -> Result<R, String> {
    with_compiled(
        |k| {
            k.push('r');
            k.push_str(pattern);
        },
        || Ok(pattern.to_string()),
        f,
    )
    .map_err(|e| format!("invalid regex {pattern:?}: {e}"))
}

/// Delimiters of `glob.match`: `None` for OPA's `null` (no delimiters).
pub(crate) fn glob_match(
    pattern: &str,
    delimiters: Option<&[char]>,
    subject: &str,
) -> Result<bool, String> {
    let delimiters = match delimiters {
        Some([]) => Some(&['.'][..]),
        d => d,
    };
    with_compiled(
        |k| {
            match delimiters {
                None => k.push('n'),
                Some(ds) => {
                    k.push('g');
                    k.extend(ds);
                    // Delimiters are single characters; a NUL ends them.
                    k.push('\0');
                }
            }
            k.push_str(pattern);
        },
        || glob_to_regex(pattern, delimiters.unwrap_or_default()),
        |re| re.is_match(subject),
    )
}

/// The regular expression equivalent to an OPA glob.
fn glob_to_regex(pattern: &str, delimiters: &[char]) -> Result<String, String> {
    let escape = |c: char| regex::escape(c.encode_utf8(&mut [0; 4]));
    let segment_char = if delimiters.is_empty() {
        ".".to_string()
    } else {
        let class: String = delimiters.iter().map(|&c| escape(c)).collect();
        format!("[^{class}]")
    };
    let mut re = String::from("(?s)^");
    let mut chars = pattern.chars().peekable();
    let mut alternatives = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                re.push_str(".*");
            }
            '*' => {
                re.push_str(&segment_char);
                re.push('*');
            }
            '?' => re.push_str(&segment_char),
            '[' => {
                re.push('[');
                if chars.peek() == Some(&'!') {
                    chars.next();
                    re.push('^');
                }
                let mut closed = false;
                let mut empty = true;
                for c in chars.by_ref() {
                    if c == ']' && !empty {
                        closed = true;
                        break;
                    }
                    empty = false;
                    if c == '-' {
                        re.push('-');
                    } else {
                        re.push_str(&escape(c));
                    }
                }
                if !closed {
                    return Err(format!(
                        "invalid glob {pattern:?}: unclosed character class"
                    ));
                }
                re.push(']');
            }
            '{' => {
                alternatives += 1;
                re.push_str("(?:");
            }
            '}' if alternatives > 0 => {
                alternatives -= 1;
                re.push(')');
            }
            ',' if alternatives > 0 => re.push('|'),
            '\\' => match chars.next() {
                Some(n) => re.push_str(&escape(n)),
                None => return Err(format!("invalid glob {pattern:?}: trailing escape")),
            },
            c => re.push_str(&escape(c)),
        }
    }
    if alternatives > 0 {
        return Err(format!("invalid glob {pattern:?}: unclosed alternatives"));
    }
    re.push('$');
    Ok(re)
}

/// `glob.match` for regorus, registered as an extension (extensions take
/// precedence over regorus' own builtins).
pub(crate) fn regorus_glob_match(args: Vec<regorus::Value>) -> anyhow::Result<regorus::Value> {
    let [pattern, delimiters, subject] = args.as_slice() else {
        anyhow::bail!("glob.match: expected 3 arguments");
    };
    let pattern = pattern
        .as_string()
        .map_err(|_| anyhow::anyhow!("glob.match: operand 1 must be string"))?;
    let subject = subject
        .as_string()
        .map_err(|_| anyhow::anyhow!("glob.match: operand 3 must be string"))?;
    let delimiters = match delimiters {
        regorus::Value::Null => None,
        regorus::Value::Array(items) => Some(
            items
                .iter()
                .map(|d| single_char(d.as_string().ok().map(|s| s.as_ref())))
                .collect::<Result<Vec<char>, String>>()
                .map_err(anyhow::Error::msg)?,
        ),
        _ => anyhow::bail!("glob.match: operand 2 must be array or null"),
    };
    let matched =
        glob_match(pattern, delimiters.as_deref(), subject).map_err(anyhow::Error::msg)?;
    Ok(regorus::Value::Bool(matched))
}

/// A delimiter: a string of exactly one character.
pub(crate) fn single_char(s: Option<&str>) -> Result<char, String> {
    let mut chars = s.ok_or("glob.match: delimiters must be strings")?.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Ok(c),
        _ => Err("glob.match: each delimiter must be a single character".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(pattern: &str, delimiters: Option<&[char]>, subject: &str) -> bool {
        glob_match(pattern, delimiters, subject).unwrap()
    }

    #[test]
    fn opa_documented_examples() {
        // The examples of OPA's glob.match reference.
        let dot: Option<&[char]> = Some(&[]);
        assert!(g("*.github.com", dot, "api.github.com"));
        assert!(!g("*.github.com", dot, "api.cdn.github.com"));
        assert!(g("*hub.com", None, "api.cdn.github.com"));
        assert!(g("*:github:com", Some(&[':']), "api:github:com"));
        assert!(g("api.**.com", dot, "api.github.com"));
        assert!(g("api.**.com", dot, "api.cdn.github.com"));
        assert!(g("?at", dot, "cat"));
        assert!(!g("?at", dot, "at"));
        assert!(g("[abc]at", dot, "bat"));
        assert!(!g("[abc]at", dot, "fat"));
        assert!(g("[!abc]at", dot, "fat"));
        assert!(!g("[!abc]at", dot, "cat"));
        assert!(g("[a-c]at", dot, "cat"));
        assert!(!g("[a-c]at", dot, "lat"));
        assert!(g("{cat,bat,[fr]at}", dot, "rat"));
        assert!(!g("{cat,bat,[fr]at}", dot, "mat"));
    }

    #[test]
    fn spiffe_paths_and_escapes() {
        let slash: Option<&[char]> = Some(&['/']);
        assert!(g("/ns/web/**", slash, "/ns/web/sa/frontend"));
        assert!(!g("/ns/web/**", slash, "/ns/webx/sa/frontend"));
        assert!(g("/billing/*", slash, "/billing/api"));
        assert!(!g("/billing/*", slash, "/billing/api/v2"));
        assert!(g(r"a\*b", slash, "a*b"));
        assert!(!g(r"a\*b", slash, "axb"));
        // Regex metacharacters in a glob are literal.
        assert!(g("a.b+c", None, "a.b+c"));
        assert!(!g("a.b+c", None, "axbbc"));
        // Subjects with newlines are matched whole.
        assert!(g("*", None, "a\nb"));
        assert!(!g("a", None, "a\n"));
    }

    #[test]
    fn bad_patterns_are_errors() {
        for bad in ["[abc", "{a,b", "a\\"] {
            assert!(glob_match(bad, None, "x").is_err(), "{bad}");
        }
        assert!(single_char(Some("ab")).is_err());
        assert!(single_char(Some("")).is_err());
        assert_eq!(single_char(Some("é")), Ok('é'));
    }

    #[test]
    fn cache_keys_tell_delimiters_and_kinds_apart() {
        // The same pattern under different delimiters must not share a
        // compiled form, nor a glob with a regex of the same text.
        assert!(!g("a*", Some(&['/']), "ab/c"));
        assert!(g("a*", None, "ab/c"));
        assert!(g("a*", Some(&['.']), "ab/c"));
        assert!(with_regex("a*", |re| re.is_match("b")).unwrap());
        assert!(!g("a*", None, "b"));
        // The cache is bounded.
        for i in 0..(CACHE_CAPACITY * 2) {
            assert!(g(&format!("p{i}*"), None, &format!("p{i}x")));
        }
        CACHE.with(|c| assert!(c.borrow().compiled.len() <= CACHE_CAPACITY));
    }
}
