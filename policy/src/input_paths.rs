//! Which parts of the input a Rego policy can read, found by scanning its
//! source for references to `input`.
//!
//! Converting the whole input to regorus values is a good part of a small
//! policy's evaluation time, and a per-connection policy typically reads two
//! or three fields of a document with a dozen objects. When every reference
//! to the root `input` in the sources is a dotted path (`input.a.b`), only
//! the subtrees at the ends of those paths are converted; anything else
//! (`input[x]`, a bare `input`, `with input as`, `input` followed by a space)
//! keeps the whole input. A subtree that is kept is kept whole, so whatever a
//! rule does with `input.a.b` (index it, iterate it, pass it to a function)
//! sees the same value as with the full input.

use std::collections::BTreeMap;

/// The part of a document to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Keep {
    /// The whole value.
    All,
    /// Only these fields of an object (each kept as its entry says); a value
    /// that is not an object is kept whole.
    Fields(BTreeMap<String, Keep>),
}

impl Keep {
    fn add(&mut self, path: &[&str]) {
        let Keep::Fields(fields) = self else {
            return;
        };
        match path {
            [] => *self = Keep::All,
            [first, rest @ ..] => fields
                .entry((*first).to_string())
                .or_insert_with(|| Keep::Fields(BTreeMap::new()))
                .add(rest),
        }
    }
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// What of the input the policy in `sources` can read: `Keep::All` unless
/// every reference to `input` is a dotted path.
pub(crate) fn referenced<'a>(sources: impl IntoIterator<Item = &'a str>) -> Keep {
    let mut keep = Keep::Fields(BTreeMap::new());
    for text in sources {
        if !scan(text, &mut keep) {
            return Keep::All;
        }
    }
    keep
}

/// Adds the input paths of one source to `keep`; false when a reference is
/// not a dotted path.
fn scan(text: &str, keep: &mut Keep) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
                i += 1;
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                if &b[start..i] != b"input" {
                    continue;
                }
                let mut path = Vec::new();
                while i + 1 < b.len() && b[i] == b'.' && is_ident_start(b[i + 1]) {
                    let seg = i + 1;
                    i = seg;
                    while i < b.len() && is_ident(b[i]) {
                        i += 1;
                    }
                    path.push(&text[seg..i]);
                }
                if path.is_empty() {
                    return false;
                }
                keep.add(&path);
            }
            _ => i += 1,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(entries: &[(&str, Keep)]) -> Keep {
        Keep::Fields(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn dotted_paths_are_kept_whole_at_their_ends() {
        let src = r#"
package p
import rego.v1
allow if {
    some pattern in allowed[input.spiffe.peer_trust_domain]
    glob.match(pattern, ["/"], input.spiffe.peer_path)
    input.attributes.request.http.headers[h] == "x" # input[oops] in a comment
    s := "input[x] in a string \" input"
    r := `input in a raw string`
}
"#;
        let want = fields(&[
            (
                "spiffe",
                fields(&[("peer_trust_domain", Keep::All), ("peer_path", Keep::All)]),
            ),
            (
                "attributes",
                fields(&[(
                    "request",
                    fields(&[("http", fields(&[("headers", Keep::All)]))]),
                )]),
            ),
        ]);
        assert_eq!(referenced([src]), want);
    }

    #[test]
    fn a_shorter_path_keeps_the_longer_ones_subtree() {
        let src = "package p\na := input.x.y\nb := input.x\nc := input.x.z.w\n";
        assert_eq!(referenced([src]), fields(&[("x", Keep::All)]));
    }

    #[test]
    fn any_other_reference_keeps_everything() {
        for src in [
            "package p\nx := input\n",
            "package p\nx := input[\"a\"]\n",
            "package p\nx := input .a\n",
            "package p\nimport input\n",
            "package p\nt if { allow with input as {} }\n",
            "package p\nx := object.get(input, \"a\", 1)\n",
        ] {
            assert_eq!(referenced([src]), Keep::All, "{src}");
        }
        // Across files: one bare reference anywhere keeps everything.
        assert_eq!(
            referenced(["package a\nx := input.a\n", "package b\ny := input\n"]),
            Keep::All
        );
    }

    #[test]
    fn words_that_contain_input_are_not_references() {
        let src = "package p\nmyinput := 1\ninput_x := 2\nx := data.inputs.a\n";
        assert_eq!(referenced([src]), fields(&[]));
    }
}
