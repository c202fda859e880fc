//! `regex.globs_match(glob1, glob2)`: whether some non-empty string matches
//! both patterns. As in OPA, the patterns are a small regex subset: `.` (any
//! character), `[...]` classes with ranges, `\` escapes, each optionally
//! followed by `*` or `+`; every other character is itself.
//!
//! Each pattern is a sequence of character classes that may repeat; the
//! answer is whether the product of the two automata reaches both ends
//! having read at least one character.

use std::collections::HashSet;

use serde_json::Value;

use crate::builtins::str_arg;

/// A set of characters: any, or a union of inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Class {
    Any,
    Ranges(Vec<(char, char)>),
}

impl Class {
    fn meets(&self, other: &Class) -> bool {
        match (self, other) {
            (Class::Any, Class::Any) => true,
            (Class::Any, Class::Ranges(r)) | (Class::Ranges(r), Class::Any) => !r.is_empty(),
            (Class::Ranges(a), Class::Ranges(b)) => a
                .iter()
                .any(|(lo, hi)| b.iter().any(|(l, h)| lo <= h && l <= hi)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    Once,
    /// `*`: zero or more.
    Any,
}

#[derive(Debug, Clone)]
struct Token {
    class: Class,
    repeat: Repeat,
}

fn parse(glob: &str) -> Result<Vec<Token>, String> {
    let mut tokens: Vec<Token> = Vec::new();
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        let class = match c {
            '.' => Class::Any,
            '\\' => {
                let e = chars
                    .next()
                    .ok_or_else(|| format!("glob {glob:?}: trailing backslash"))?;
                Class::Ranges(vec![(e, e)])
            }
            '[' => {
                let mut ranges = Vec::new();
                loop {
                    let c = chars
                        .next()
                        .ok_or_else(|| format!("glob {glob:?}: unclosed ["))?;
                    let lo = match c {
                        ']' => break,
                        '\\' => chars
                            .next()
                            .ok_or_else(|| format!("glob {glob:?}: trailing backslash"))?,
                        c => c,
                    };
                    if chars.peek() == Some(&'-') {
                        chars.next();
                        let hi = match chars.next() {
                            Some('\\') => chars
                                .next()
                                .ok_or_else(|| format!("glob {glob:?}: trailing backslash"))?,
                            Some(']') | None => {
                                return Err(format!("glob {glob:?}: unfinished range"));
                            }
                            Some(hi) => hi,
                        };
                        if hi < lo {
                            return Err(format!("glob {glob:?}: range {lo}-{hi} is reversed"));
                        }
                        ranges.push((lo, hi));
                    } else {
                        ranges.push((lo, lo));
                    }
                }
                if ranges.is_empty() {
                    return Err(format!("glob {glob:?}: empty character class"));
                }
                Class::Ranges(ranges)
            }
            '*' | '+' => {
                return Err(format!("glob {glob:?}: {c} repeats nothing"));
            }
            ']' => return Err(format!("glob {glob:?}: unopened ]")),
            c => Class::Ranges(vec![(c, c)]),
        };
        match chars.peek() {
            Some('*') => {
                chars.next();
                tokens.push(Token {
                    class,
                    repeat: Repeat::Any,
                });
            }
            // `c+` is `c c*`.
            Some('+') => {
                chars.next();
                tokens.push(Token {
                    class: class.clone(),
                    repeat: Repeat::Once,
                });
                tokens.push(Token {
                    class,
                    repeat: Repeat::Any,
                });
            }
            _ => tokens.push(Token {
                class,
                repeat: Repeat::Once,
            }),
        }
    }
    Ok(tokens)
}

/// The positions reachable from `i` without reading: past `*` tokens.
fn closure(tokens: &[Token], i: usize) -> impl Iterator<Item = usize> + '_ {
    let skippable = tokens[i..]
        .iter()
        .take_while(|t| t.repeat == Repeat::Any)
        .count();
    i..=i + skippable
}

/// Positions after reading one character of `class`-compatible text at `i`.
fn steps(tokens: &[Token], i: usize) -> Option<(&Class, usize)> {
    let t = tokens.get(i)?;
    Some((
        &t.class,
        match t.repeat {
            Repeat::Once => i + 1,
            Repeat::Any => i,
        },
    ))
}

fn intersects(a: &[Token], b: &[Token]) -> bool {
    // States: (position in a, position in b, read anything yet).
    let mut seen: HashSet<(usize, usize, bool)> = HashSet::new();
    let mut todo = vec![(0usize, 0usize, false)];
    while let Some((i, j, read)) = todo.pop() {
        for i in closure(a, i) {
            for j in closure(b, j) {
                if !seen.insert((i, j, read)) {
                    continue;
                }
                if read && i == a.len() && j == b.len() {
                    return true;
                }
                if let (Some((ca, ni)), Some((cb, nj))) = (steps(a, i), steps(b, j))
                    && ca.meets(cb)
                {
                    todo.push((ni, nj, true));
                }
            }
        }
    }
    false
}

/// `regex.globs_match(glob1, glob2)`.
pub(crate) fn globs_match(args: &[Value]) -> Result<Value, String> {
    let a = parse(str_arg(args, 0)?)?;
    let b = parse(str_arg(args, 1)?)?;
    Ok(Value::Bool(intersects(&a, &b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(a: &str, b: &str) -> Result<Value, String> {
        globs_match(&[json!(a), json!(b)])
    }

    #[test]
    fn intersections_as_opa_documents_them() {
        assert_eq!(m("a.a.[0-9]+z", ".b.b2359825792*z"), Ok(json!(true)));
        assert_eq!(m("a.a.[0-9]+z", ".b.b2359825792*"), Ok(json!(false)));
        assert_eq!(m("[a-z]+", "[0-9]*"), Ok(json!(false)));
        assert_eq!(m("abc", "abc"), Ok(json!(true)));
        assert_eq!(m("abc", "abd"), Ok(json!(false)));
        assert_eq!(m("a*", "b*"), Ok(json!(false)), "only the empty string");
        assert_eq!(m("a*b", "a+b"), Ok(json!(true)));
        assert_eq!(m("a+", "b*a"), Ok(json!(true)));
        assert_eq!(m(".*", "x"), Ok(json!(true)));
        assert_eq!(m("[abc]", "[c-e]"), Ok(json!(true)));
        assert_eq!(m("[ab]", "[c-e]"), Ok(json!(false)));
        assert_eq!(m(r"a\.b", "a.b"), Ok(json!(true)));
        assert_eq!(m(r"a\.b", "axb"), Ok(json!(false)));
        assert_eq!(m(r"a\*", "a."), Ok(json!(true)));
        assert_eq!(m(r"a\*", "a*"), Ok(json!(false)), "a* is a, aa, ...");
        assert_eq!(m(r"a\*", "aa"), Ok(json!(false)));
    }

    #[test]
    fn bad_globs_are_errors() {
        for bad in ["[ab", "*a", "a\\", "[z-a]", "[]", "a]"] {
            assert!(m(bad, "a").is_err(), "{bad}");
        }
    }
}
