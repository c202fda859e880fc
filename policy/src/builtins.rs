//! Host builtins for OPA Wasm modules.
//!
//! OPA compiles most builtins into the module; the rest are imported and
//! called through `opa_builtin0..4`. This registry maps a builtin's Rego name
//! to a host function. A module whose `builtins` export names a builtin that
//! is not here is refused at load, naming it.
//!
//! Semantics follow OPA's Go topdown implementation: a builtin that fails
//! makes the expression undefined (non-strict mode), which denies.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::Value;

/// A host builtin: JSON arguments in, a JSON value (or an error, which makes
/// the call undefined) out.
pub type BuiltinFn = fn(&[Value]) -> Result<Value, String>;

/// Every host builtin: its Rego name, its number of operands, and the one
/// implementation both engines call (the Wasm host directly, regorus as an
/// extension where it has no builtin of that name).
const REGISTRY: &[(&str, u8, BuiltinFn)] = &[
    ("sprintf", 2, builtin_sprintf),
    ("net.cidr_contains", 2, net_cidr_contains),
    ("net.cidr_intersects", 2, net_cidr_intersects),
    ("net.cidr_is_valid", 1, net_cidr_is_valid),
    ("net.cidr_merge", 1, net_cidr_merge),
    ("net.lookup_ip_addr", 1, net_lookup_ip_addr),
    ("io.jwt.decode", 1, crate::jwt::decode),
    ("io.jwt.decode_verify", 2, crate::jwt::decode_verify),
    ("io.jwt.verify_rs256", 2, crate::jwt::verify_rs256),
    ("io.jwt.verify_rs384", 2, crate::jwt::verify_rs384),
    ("io.jwt.verify_rs512", 2, crate::jwt::verify_rs512),
    ("io.jwt.verify_ps256", 2, crate::jwt::verify_ps256),
    ("io.jwt.verify_ps384", 2, crate::jwt::verify_ps384),
    ("io.jwt.verify_ps512", 2, crate::jwt::verify_ps512),
    ("io.jwt.verify_es256", 2, crate::jwt::verify_es256),
    ("io.jwt.verify_es384", 2, crate::jwt::verify_es384),
    ("io.jwt.verify_es512", 2, crate::jwt::verify_es512),
    ("io.jwt.verify_hs256", 2, crate::jwt::verify_hs256),
    ("io.jwt.verify_hs384", 2, crate::jwt::verify_hs384),
    ("io.jwt.verify_hs512", 2, crate::jwt::verify_hs512),
    ("io.jwt.verify_eddsa", 2, crate::jwt::verify_eddsa),
    ("io.jwt.encode_sign", 3, crate::jwt::encode_sign),
    ("io.jwt.encode_sign_raw", 3, crate::jwt::encode_sign_raw),
    ("crypto.sha256", 1, crate::crypto::sha256),
    ("crypto.sha1", 1, crate::crypto::sha1),
    ("crypto.md5", 1, crate::crypto::md5),
    ("crypto.hmac.md5", 2, crate::crypto::hmac_md5),
    ("crypto.hmac.sha1", 2, crate::crypto::hmac_sha1),
    ("crypto.hmac.sha256", 2, crate::crypto::hmac_sha256),
    ("crypto.hmac.sha512", 2, crate::crypto::hmac_sha512),
    ("crypto.hmac.equal", 2, crate::crypto::hmac_equal),
    (
        "crypto.x509.parse_certificates",
        1,
        crate::crypto::parse_certificates,
    ),
    (
        "crypto.x509.parse_and_verify_certificates",
        1,
        crate::crypto::parse_and_verify_certificates,
    ),
    ("time.now_ns", 0, time_now_ns),
    ("time.parse_rfc3339_ns", 1, time_parse_rfc3339_ns),
    ("time.date", 1, time_date),
    ("time.clock", 1, time_clock),
    ("time.add_date", 4, time_add_date),
    ("glob.match", 3, glob_match),
    ("regex.match", 2, regex_match),
    ("re_match", 2, regex_match),
    ("regex.is_valid", 1, regex_is_valid),
    ("regex.split", 2, regex_split),
    ("regex.find_n", 3, regex_find_n),
    ("regex.globs_match", 2, crate::globs::globs_match),
    ("trace", 1, builtin_trace),
];

/// Looks up a host builtin by its Rego name.
pub fn lookup(name: &str) -> Option<BuiltinFn> {
    REGISTRY
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, f)| *f)
}

/// Names of every host builtin this crate provides.
pub fn names() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().map(|(n, _, _)| *n)
}

/// Every host builtin with its number of operands.
pub(crate) fn with_arity() -> impl Iterator<Item = (&'static str, u8, BuiltinFn)> {
    REGISTRY.iter().copied()
}

pub(crate) fn arg(args: &[Value], i: usize) -> Result<&Value, String> {
    args.get(i)
        .ok_or_else(|| format!("missing argument {}", i + 1))
}

pub(crate) fn str_arg(args: &[Value], i: usize) -> Result<&str, String> {
    arg(args, i)?
        .as_str()
        .ok_or_else(|| format!("operand {} must be string", i + 1))
}

fn int_arg(args: &[Value], i: usize) -> Result<i64, String> {
    let v = arg(args, i)?;
    v.as_i64()
        .or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18)
                .map(|f| f as i64)
        })
        .ok_or_else(|| format!("operand {} must be an integer", i + 1))
}

// ---------------------------------------------------------------- sprintf

/// A Go `fmt` argument as OPA's `sprintf` builds it: numbers become Go ints
/// or floats, strings stay strings, anything else is its Rego text.
#[derive(Debug, Clone)]
enum GoArg {
    Int(i128),
    Float(f64),
    Str(String),
}

impl GoArg {
    fn from_json(v: &Value) -> GoArg {
        match v {
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    GoArg::Int(i128::from(i))
                } else if let Some(u) = n.as_u64() {
                    GoArg::Int(i128::from(u))
                } else {
                    GoArg::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => GoArg::Str(s.clone()),
            other => GoArg::Str(rego_text(other)),
        }
    }

    fn go_type(&self) -> &'static str {
        match self {
            GoArg::Int(_) => "int",
            GoArg::Float(_) => "float64",
            GoArg::Str(_) => "string",
        }
    }

    fn plain(&self) -> String {
        match self {
            GoArg::Int(i) => i.to_string(),
            GoArg::Float(f) => go_float_g(*f, None),
            GoArg::Str(s) => s.clone(),
        }
    }
}

/// Rego's textual form of a value (`ast.Term.String()`): like JSON but with
/// `", "` and `": "` separators.
pub(crate) fn rego_text(v: &Value) -> String {
    let mut out = String::new();
    write_rego_text(v, &mut out);
    out
}

fn write_rego_text(v: &Value, out: &mut String) {
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_rego_text(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_rego_text(item, out);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Go's `%g`/`%v` for float64: shortest representation, exponent form when
/// the exponent is < -4 or >= 21 (for `%v`) or >= precision.
fn go_float_g(f: f64, prec: Option<usize>) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if f == 0.0 {
        return "0".into();
    }
    let exp = f.abs().log10().floor() as i32;
    let limit = prec.map_or(21, |p| p as i32);
    if exp < -4 || exp >= limit {
        let s = match prec {
            Some(p) => format!("{:.*e}", p.saturating_sub(1), f),
            None => format!("{f:e}"),
        };
        go_exponent(&trim_mantissa(&s))
    } else {
        match prec {
            Some(p) => {
                let decimals = (p as i32 - 1 - exp).max(0) as usize;
                let s = format!("{f:.decimals$}");
                if s.contains('.') {
                    s.trim_end_matches('0').trim_end_matches('.').to_string()
                } else {
                    s
                }
            }
            None => format!("{f}"),
        }
    }
}

fn trim_mantissa(s: &str) -> String {
    match s.split_once('e') {
        Some((m, e)) if m.contains('.') => {
            format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.'))
        }
        _ => s.to_string(),
    }
}

/// Rust writes `1e21`/`1.5e-7`; Go writes `1e+21`/`1.5e-07`.
fn go_exponent(s: &str) -> String {
    match s.split_once('e') {
        Some((m, e)) => {
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', e),
            };
            let digits = if digits.len() < 2 {
                format!("0{digits}")
            } else {
                digits.to_string()
            };
            format!("{m}e{sign}{digits}")
        }
        None => s.to_string(),
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Spec {
    minus: bool,
    plus: bool,
    zero: bool,
    space: bool,
    sharp: bool,
    width: Option<usize>,
    prec: Option<usize>,
}

impl Spec {
    fn pad(&self, s: String) -> String {
        let len = s.chars().count();
        match self.width {
            Some(w) if w > len => {
                let fill = w - len;
                if self.minus {
                    format!("{s}{}", " ".repeat(fill))
                } else if self.zero {
                    let (sign, rest) = if s.starts_with(['-', '+']) {
                        s.split_at(1)
                    } else {
                        ("", s.as_str())
                    };
                    format!("{sign}{}{rest}", "0".repeat(fill))
                } else {
                    format!("{}{s}", " ".repeat(fill))
                }
            }
            _ => s,
        }
    }

    fn sign(&self, negative: bool, body: String) -> String {
        if negative {
            format!("-{body}")
        } else if self.plus {
            format!("+{body}")
        } else if self.space {
            format!(" {body}")
        } else {
            body
        }
    }
}

/// Go's `fmt.Sprintf` over OPA's argument conversion.
pub fn go_sprintf(format: &str, args: &[Value]) -> String {
    let args: Vec<GoArg> = args.iter().map(GoArg::from_json).collect();
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars().peekable();
    let mut next = 0usize;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = Spec::default();
        while let Some(&f) = chars.peek() {
            match f {
                '-' => spec.minus = true,
                '+' => spec.plus = true,
                '0' => spec.zero = true,
                ' ' => spec.space = true,
                '#' => spec.sharp = true,
                _ => break,
            }
            chars.next();
        }
        let mut width = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            chars.next();
        }
        spec.width = width.parse().ok();
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut prec = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                prec.push(d);
                chars.next();
            }
            spec.prec = Some(prec.parse().unwrap_or(0));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(a) = args.get(next) else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        next += 1;
        out.push_str(&format_one(verb, spec, a));
    }
    if next < args.len() {
        out.push_str("%!(EXTRA ");
        for (i, a) in args.iter().enumerate().skip(next) {
            if i > next {
                out.push_str(", ");
            }
            let _ = write!(out, "{}={}", a.go_type(), a.plain());
        }
        out.push(')');
    }
    out
}

fn bad_verb(verb: char, a: &GoArg) -> String {
    format!("%!{verb}({}={})", a.go_type(), a.plain())
}

fn format_one(verb: char, spec: Spec, a: &GoArg) -> String {
    let body = match (verb, a) {
        ('v', GoArg::Int(i)) | ('d', GoArg::Int(i)) => {
            spec.sign(*i < 0, i.unsigned_abs().to_string())
        }
        ('v', GoArg::Float(f)) | ('g', GoArg::Float(f)) | ('G', GoArg::Float(f)) => {
            let s = go_float_g(f.abs(), spec.prec);
            let s = if verb == 'G' { s.to_uppercase() } else { s };
            spec.sign(f.is_sign_negative() && *f != 0.0, s)
        }
        ('v', GoArg::Str(s)) | ('s', GoArg::Str(s)) => match spec.prec {
            Some(p) => s.chars().take(p).collect(),
            None => s.clone(),
        },
        ('q', GoArg::Str(s)) => go_quote(s),
        ('q', GoArg::Int(i)) => match u32::try_from(*i).ok().and_then(char::from_u32) {
            Some(c) => format!("'{c}'"),
            None => bad_verb(verb, a),
        },
        ('t', _) => bad_verb(verb, a),
        ('f', GoArg::Float(f)) | ('F', GoArg::Float(f)) => {
            let p = spec.prec.unwrap_or(6);
            spec.sign(f.is_sign_negative(), format!("{:.p$}", f.abs()))
        }
        ('f', GoArg::Int(_)) | ('F', GoArg::Int(_)) => bad_verb(verb, a),
        ('e', GoArg::Float(f)) | ('E', GoArg::Float(f)) => {
            let p = spec.prec.unwrap_or(6);
            let s = go_exponent(&format!("{:.p$e}", f.abs()));
            let s = if verb == 'E' { s.to_uppercase() } else { s };
            spec.sign(f.is_sign_negative(), s)
        }
        ('x', GoArg::Int(i)) | ('X', GoArg::Int(i)) => {
            let mut s = format!("{:x}", i.unsigned_abs());
            if spec.sharp {
                s = format!("0x{s}");
            }
            if verb == 'X' {
                s = s.to_uppercase();
            }
            spec.sign(*i < 0, s)
        }
        ('x', GoArg::Str(s)) | ('X', GoArg::Str(s)) => {
            let h = hex::encode(s.as_bytes());
            if verb == 'X' { h.to_uppercase() } else { h }
        }
        ('o', GoArg::Int(i)) => spec.sign(*i < 0, format!("{:o}", i.unsigned_abs())),
        ('b', GoArg::Int(i)) => spec.sign(*i < 0, format!("{:b}", i.unsigned_abs())),
        ('c', GoArg::Int(i)) => match u32::try_from(*i).ok().and_then(char::from_u32) {
            Some(c) => c.to_string(),
            None => "\u{FFFD}".into(),
        },
        _ => bad_verb(verb, a),
    };
    spec.pad(body)
}

/// Go's `strconv.Quote` (close enough for printable text and common escapes).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\u{0b}' => out.push_str("\\v"),
            c if c.is_control() => {
                let _ = if (c as u32) < 0x10000 {
                    write!(out, "\\u{:04x}", c as u32)
                } else {
                    write!(out, "\\U{:08x}", c as u32)
                };
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn builtin_sprintf(args: &[Value]) -> Result<Value, String> {
    let format = str_arg(args, 0)?;
    let values = arg(args, 1)?.as_array().ok_or("operand 2 must be array")?;
    Ok(Value::String(go_sprintf(format, values)))
}

fn builtin_trace(_args: &[Value]) -> Result<Value, String> {
    Ok(Value::Bool(true))
}

// ---------------------------------------------------------------- net

/// An IP network (`10.0.0.0/8`) or a single address (`10.0.0.1`).
#[derive(Debug, Clone, Copy)]
struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("invalid CIDR or IP {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid CIDR {s:?}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    /// The address aligned to the top of a u128 (IPv4 in the top 32 bits),
    /// and the family's width.
    fn bits(&self) -> (u128, u32) {
        match self.addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    }

    fn mask(prefix: u8) -> u128 {
        if prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(prefix))
        }
    }

    /// Whether `other` lies wholly inside `self`.
    fn contains(&self, other: &Cidr) -> bool {
        let (a, fa) = self.bits();
        let (b, fb) = other.bits();
        if fa != fb || other.prefix < self.prefix {
            return false;
        }
        // Both addresses are aligned to the top bits, so the prefix masks directly.
        let m = Self::mask(self.prefix);
        a & m == b & m
    }

    /// The network itself: host bits cleared.
    fn network(&self) -> Cidr {
        let (bits, family) = self.bits();
        let masked = bits & Self::mask(self.prefix);
        let addr = if family == 32 {
            IpAddr::from((u32::try_from(masked >> 96).unwrap_or(0)).to_be_bytes())
        } else {
            IpAddr::from(masked.to_be_bytes())
        };
        Cidr {
            addr,
            prefix: self.prefix,
        }
    }

    /// The parent network when `self` and `other` are its two halves.
    fn sibling_merge(&self, other: &Cidr) -> Option<Cidr> {
        let ((a, fa), (b, fb)) = (self.bits(), other.bits());
        if fa != fb || self.prefix != other.prefix || self.prefix == 0 {
            return None;
        }
        let parent = Cidr {
            addr: self.addr,
            prefix: self.prefix - 1,
        }
        .network();
        let m = Self::mask(parent.prefix);
        (a & m == b & m && a != b && parent.bits().0 == a.min(b)).then_some(parent)
    }

    fn text(self) -> String {
        format!("{}/{}", self.addr, self.prefix)
    }

    fn intersects(&self, other: &Cidr) -> bool {
        let (a, fa) = self.bits();
        let (b, fb) = other.bits();
        if fa != fb {
            return false;
        }
        let m = Self::mask(self.prefix.min(other.prefix));
        a & m == b & m
    }
}

fn net_cidr_contains(args: &[Value]) -> Result<Value, String> {
    let outer = Cidr::parse(str_arg(args, 0)?)?;
    let inner = Cidr::parse(str_arg(args, 1)?)?;
    Ok(Value::Bool(outer.contains(&inner)))
}

fn net_cidr_intersects(args: &[Value]) -> Result<Value, String> {
    let a = Cidr::parse(str_arg(args, 0)?)?;
    let b = Cidr::parse(str_arg(args, 1)?)?;
    Ok(Value::Bool(a.intersects(&b)))
}

fn net_cidr_is_valid(args: &[Value]) -> Result<Value, String> {
    let s = str_arg(args, 0)?;
    Ok(Value::Bool(s.contains('/') && Cidr::parse(s).is_ok()))
}

/// `net.cidr_merge(addrs)`: the smallest set of networks covering the given
/// networks and addresses (an array or set of strings).
fn net_cidr_merge(args: &[Value]) -> Result<Value, String> {
    let Value::Array(items) = arg(args, 0)? else {
        return Err("operand 1 must be one of {array, set}".into());
    };
    let mut nets: Vec<Cidr> = Vec::with_capacity(items.len());
    for item in items {
        let s = item.as_str().ok_or("operand 1: element must be string")?;
        nets.push(Cidr::parse(s)?.network());
    }
    let mut out: Vec<String> = Vec::new();
    for family in [32u32, 128] {
        let mut fam: Vec<Cidr> = nets
            .iter()
            .filter(|c| c.bits().1 == family)
            .copied()
            .collect();
        // Sort by address then prefix; drop what a kept network contains.
        fam.sort_by_key(|c| (c.bits().0, c.prefix));
        let mut kept: Vec<Cidr> = Vec::new();
        for c in fam {
            if kept.last().is_some_and(|k| k.contains(&c)) {
                continue;
            }
            kept.push(c);
            // Two adjacent halves of one network become that network.
            while kept.len() >= 2 {
                let (a, b) = (kept[kept.len() - 2], kept[kept.len() - 1]);
                match a.sibling_merge(&b) {
                    Some(parent) => {
                        kept.truncate(kept.len() - 2);
                        if !kept.last().is_some_and(|k| k.contains(&parent)) {
                            kept.push(parent);
                        }
                    }
                    None => break,
                }
            }
        }
        out.extend(kept.iter().map(|c| c.text()));
    }
    Ok(Value::from(out))
}

/// `net.lookup_ip_addr(name)`: the addresses a name resolves to (a set).
fn net_lookup_ip_addr(args: &[Value]) -> Result<Value, String> {
    use std::net::ToSocketAddrs as _;
    let name = str_arg(args, 0)?;
    let addrs = (name, 0)
        .to_socket_addrs()
        .map_err(|e| format!("lookup {name}: {e}"))?;
    let mut ips: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
    ips.sort();
    ips.dedup();
    Ok(Value::from(ips))
}

// ---------------------------------------------------------------- time

fn time_now_ns(_args: &[Value]) -> Result<Value, String> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(now)
        .map(Value::from)
        .map_err(|_| "time out of range".into())
}

fn time_parse_rfc3339_ns(args: &[Value]) -> Result<Value, String> {
    let s = str_arg(args, 0)?;
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("invalid RFC 3339 time {s:?}: {e}"))?;
    i64::try_from(t.unix_timestamp_nanos())
        .map(Value::from)
        .map_err(|_| "time out of range".into())
}

/// Accepts `ns` or `[ns, tz]` (only `"UTC"`/`""` time zones are supported).
fn datetime_arg(args: &[Value]) -> Result<time::OffsetDateTime, String> {
    let v = arg(args, 0)?;
    let ns = match v {
        Value::Array(items) => {
            let tz = items.get(1).and_then(Value::as_str).unwrap_or("UTC");
            if !(tz.is_empty() || tz == "UTC") {
                return Err(format!("time zone {tz:?} is not supported"));
            }
            int_arg(items, 0)?
        }
        _ => int_arg(args, 0)?,
    };
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).map_err(|e| e.to_string())
}

fn time_date(args: &[Value]) -> Result<Value, String> {
    let t = datetime_arg(args)?;
    Ok(Value::from(vec![
        i64::from(t.year()),
        i64::from(u8::from(t.month())),
        i64::from(t.day()),
    ]))
}

fn time_clock(args: &[Value]) -> Result<Value, String> {
    let t = datetime_arg(args)?;
    Ok(Value::from(vec![
        i64::from(t.hour()),
        i64::from(t.minute()),
        i64::from(t.second()),
    ]))
}

fn time_add_date(args: &[Value]) -> Result<Value, String> {
    let t = datetime_arg(args)?;
    let (y, m, d) = (int_arg(args, 1)?, int_arg(args, 2)?, int_arg(args, 3)?);
    // Go's AddDate normalises month overflow the way this arithmetic does.
    let total_months = i64::from(t.year()) * 12 + i64::from(u8::from(t.month())) - 1 + y * 12 + m;
    let year = i32::try_from(total_months.div_euclid(12)).map_err(|_| "year out of range")?;
    let month = u8::try_from(total_months.rem_euclid(12) + 1).map_err(|_| "month out of range")?;
    let month = time::Month::try_from(month).map_err(|e| e.to_string())?;
    let first = time::Date::from_calendar_date(year, month, 1).map_err(|e| e.to_string())?;
    let date = first
        .checked_add(time::Duration::days(i64::from(t.day()) - 1 + d))
        .ok_or("date out of range")?;
    let out = t.replace_date(date);
    i64::try_from(out.unix_timestamp_nanos())
        .map(Value::from)
        .map_err(|_| "time out of range".into())
}

// ---------------------------------------------------------------- glob, regex

/// `glob.match(pattern, delimiters, match)`, with OPA's semantics (see
/// [`crate::glob`]).
fn glob_match(args: &[Value]) -> Result<Value, String> {
    let pattern = str_arg(args, 0)?;
    let delimiters = match arg(args, 1)? {
        Value::Null => None,
        Value::Array(items) => Some(
            items
                .iter()
                .map(|d| crate::glob::single_char(d.as_str()))
                .collect::<Result<Vec<char>, String>>()?,
        ),
        _ => return Err("operand 2 must be array or null".into()),
    };
    let subject = str_arg(args, 2)?;
    crate::glob::glob_match(pattern, delimiters.as_deref(), subject).map(Value::Bool)
}

fn regex_match(args: &[Value]) -> Result<Value, String> {
    let subject = str_arg(args, 1)?;
    crate::glob::with_regex(str_arg(args, 0)?, |re| Value::Bool(re.is_match(subject)))
}

fn regex_is_valid(args: &[Value]) -> Result<Value, String> {
    Ok(Value::Bool(
        args.first()
            .and_then(Value::as_str)
            .is_some_and(|p| crate::glob::with_regex(p, |_| ()).is_ok()),
    ))
}

fn regex_split(args: &[Value]) -> Result<Value, String> {
    let s = str_arg(args, 1)?;
    crate::glob::with_regex(str_arg(args, 0)?, |re| {
        Value::from(re.split(s).collect::<Vec<_>>())
    })
}

fn regex_find_n(args: &[Value]) -> Result<Value, String> {
    let s = str_arg(args, 1)?;
    let n = int_arg(args, 2)?;
    crate::glob::with_regex(str_arg(args, 0)?, |re| {
        let found = re.find_iter(s).map(|m| m.as_str());
        let found: Vec<&str> = if n < 0 {
            found.collect()
        } else {
            found
                .take(usize::try_from(n).unwrap_or(usize::MAX))
                .collect()
        };
        Value::from(found)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sprintf_matches_go() {
        let rows: &[(&str, Value, &str)] = &[
            (
                "%v:%v/%v",
                json!(["Component", "Platform", "Dev-Portal"]),
                "Component:Platform/Dev-Portal",
            ),
            ("%s is %d", json!(["x", 5]), "x is 5"),
            ("%v", json!([1.5]), "1.5"),
            ("%v", json!([true]), "true"),
            ("%v", json!([["a", 1]]), "[\"a\", 1]"),
            ("%v", json!([{"a": 1}]), "{\"a\": 1}"),
            ("%v", json!([null]), "null"),
            ("%d", json!(["x"]), "%!d(string=x)"),
            ("%s", json!([5]), "%!s(int=5)"),
            ("%q", json!(["a\"b"]), "\"a\\\"b\""),
            ("%x", json!([255]), "ff"),
            ("%05d|%-4d|%4s", json!([42, 7, "ab"]), "00042|7   |  ab"),
            ("%.2f", json!([1.23456]), "1.23"),
            ("%v %v", json!(["a"]), "a %!v(MISSING)"),
            ("%v", json!(["a", "b"]), "a%!(EXTRA string=b)"),
            ("100%%", json!([]), "100%"),
            ("%v", json!([1e21]), "1e+21"),
        ];
        for (f, a, want) in rows {
            let got = go_sprintf(f, a.as_array().unwrap_or(&Vec::new()));
            assert_eq!(&got, want, "sprintf({f:?}, {a})");
        }
    }

    #[test]
    fn cidr() {
        let t = |a: &str, b: &str| net_cidr_contains(&[json!(a), json!(b)]).unwrap();
        assert_eq!(t("10.0.0.0/8", "10.1.2.3"), json!(true));
        assert_eq!(t("10.0.0.0/8", "11.1.2.3"), json!(false));
        assert_eq!(t("10.0.0.0/8", "10.1.0.0/16"), json!(true));
        assert_eq!(t("10.1.0.0/16", "10.0.0.0/8"), json!(false));
        assert_eq!(t("fd00::/8", "fd12::1"), json!(true));
        assert_eq!(t("0.0.0.0/0", "1.2.3.4"), json!(true));
        assert!(net_cidr_contains(&[json!("bogus"), json!("1.2.3.4")]).is_err());
        let i = |a: &str, b: &str| net_cidr_intersects(&[json!(a), json!(b)]).unwrap();
        assert_eq!(i("10.0.0.0/8", "10.200.0.0/16"), json!(true));
        assert_eq!(i("10.0.0.0/16", "10.1.0.0/16"), json!(false));
    }

    #[test]
    fn glob_and_regex() {
        let g = |p: &str, d: Value, s: &str| glob_match(&[json!(p), d, json!(s)]).unwrap();
        assert_eq!(
            g("*.example.org", json!(["."]), "api.example.org"),
            json!(true)
        );
        assert_eq!(
            g("*.example.org", json!(["."]), "a.b.example.org"),
            json!(false)
        );
        assert_eq!(
            g("spiffe://td/**", json!(["/"]), "spiffe://td/ns/a/sa/b"),
            json!(true)
        );
        assert_eq!(g("{a,b}-?", json!([]), "b-1"), json!(true));
        // null: no delimiters at all (OPA), so `*` crosses dots.
        assert_eq!(g("*.org", Value::Null, "a.b.org"), json!(true));
        assert_eq!(g("*.org", json!([]), "a.b.org"), json!(false));
        assert!(glob_match(&[json!("*"), json!(["ab"]), json!("x")]).is_err());
        assert_eq!(
            regex_split(&[json!(","), json!("a,b,c")]).unwrap(),
            json!(["a", "b", "c"])
        );
        assert_eq!(
            regex_find_n(&[json!("[0-9]"), json!("a1b2c3"), json!(2)]).unwrap(),
            json!(["1", "2"])
        );
    }

    #[test]
    fn cidr_merge_as_opa() {
        let merge = |v: Value| net_cidr_merge(&[v]).unwrap();
        assert_eq!(
            merge(json!(["192.0.128.0/24", "192.0.129.0/24"])),
            json!(["192.0.128.0/23"])
        );
        assert_eq!(
            merge(json!([
                "192.0.129.0/24",
                "192.0.128.0/24",
                "192.0.128.7",
                "10.0.0.0/8",
                "10.1.0.0/16"
            ])),
            json!(["10.0.0.0/8", "192.0.128.0/23"])
        );
        assert_eq!(
            merge(json!(["10.0.0.1/8", "::1", "::/127"])),
            json!(["10.0.0.0/8", "::/127"])
        );
        assert!(net_cidr_merge(&[json!(["nope"])]).is_err());
        let ips = net_lookup_ip_addr(&[json!("localhost")]).unwrap();
        assert!(
            ips.as_array().unwrap().contains(&json!("127.0.0.1")),
            "{ips}"
        );
    }

    #[test]
    fn jwt_and_time() {
        // {"alg":"none"}.{"sub":"spiffe://td/x"}.sig
        let tok = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJzcGlmZmU6Ly90ZC94In0.AQI";
        let v = crate::jwt::decode(&[json!(tok)]).unwrap();
        assert_eq!(
            v,
            json!([{"alg": "none"}, {"sub": "spiffe://td/x"}, "0102"])
        );
        assert!(crate::jwt::decode(&[json!("nope")]).is_err());
        let ns = time_parse_rfc3339_ns(&[json!("2024-02-29T12:30:45Z")]).unwrap();
        assert_eq!(
            time_date(std::slice::from_ref(&ns)).unwrap(),
            json!([2024, 2, 29])
        );
        assert_eq!(
            time_clock(std::slice::from_ref(&ns)).unwrap(),
            json!([12, 30, 45])
        );
        let next = time_add_date(&[ns, json!(0), json!(1), json!(0)]).unwrap();
        assert_eq!(time_date(&[next]).unwrap(), json!([2024, 3, 29]));
        assert!(time_now_ns(&[]).unwrap().as_i64().unwrap() > 0);
    }
}
