//! OPA's `io.jwt.*` builtins: decoding, signature verification against PEM
//! certificates, PEM public keys or JWK sets, `decode_verify` with its
//! constraints, and `encode_sign`.
//!
//! The semantics are OPA's (topdown `tokens.go`): a malformed token, key or
//! constraint is an error (the expression is undefined), a signature or
//! claim that does not check out is `false` / `[false, {}, {}]`. Signatures
//! are checked by aws-lc-rs; nothing here implements a primitive.

use aws_lc_rs::{hmac, rand::SystemRandom, signature};
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::builtins::{arg, str_arg};

// ---------------------------------------------------------------- tokens

/// A compact JWS split into its three base64url parts.
struct Token<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
}

impl<'a> Token<'a> {
    fn split(token: &'a str) -> Result<Token<'a>, String> {
        if !token.contains('.') {
            return Err("encoded JWT had no period separators".into());
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [header, payload, signature] = parts.as_slice() else {
            return Err(format!(
                "encoded JWT must have 3 sections, found {}",
                parts.len()
            ));
        };
        Ok(Token {
            header,
            payload,
            signature,
        })
    }

    fn signed_part(&self) -> String {
        format!("{}.{}", self.header, self.payload)
    }

    fn header_object(&self) -> Result<Map<String, Value>, String> {
        let bytes =
            b64url(self.header).map_err(|e| format!("JWT header had invalid encoding: {e}"))?;
        let header: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("JWT header had invalid encoding: {e}"))?;
        let Value::Object(header) = header else {
            return Err("JWT header must be a JSON object".into());
        };
        if header.contains_key("enc") {
            return Err("JWT is a JWE object, which is not supported".into());
        }
        Ok(header)
    }

    fn payload_bytes(&self) -> Result<Vec<u8>, String> {
        b64url(self.payload).map_err(|e| format!("JWT payload had invalid encoding: {e}"))
    }

    fn signature_bytes(&self) -> Result<Vec<u8>, String> {
        b64url(self.signature).map_err(|e| format!("JWT signature had invalid encoding: {e}"))
    }
}

/// base64url with or without padding, as OPA's `base64url.decode`.
fn b64url(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| e.to_string())
}

fn json_object(bytes: &[u8]) -> Result<Value, String> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(o)) => Ok(Value::Object(o)),
        Ok(_) => Err("JWT payload must be a JSON object".into()),
        Err(e) => Err(format!("JWT payload is not JSON: {e}")),
    }
}

/// `io.jwt.decode(token) = [header, payload, signature_hex]`; no verification.
pub(crate) fn decode(args: &[Value]) -> Result<Value, String> {
    let token = Token::split(str_arg(args, 0)?)?;
    let header = token.header_object()?;
    let payload = token.payload_bytes()?;
    if header.get("cty").and_then(Value::as_str) == Some("JWT") {
        let inner = String::from_utf8_lossy(&payload);
        return decode(&[Value::String(inner.trim_matches(['"', '\'']).to_string())]);
    }
    let payload = json_object(&payload)?;
    let signature = token.signature_bytes()?;
    Ok(Value::Array(vec![
        Value::Object(header),
        payload,
        Value::String(hex::encode(signature)),
    ]))
}

/// The header fields OPA checks before verifying (RFC 7515 4.1).
struct Header {
    alg: String,
    kid: String,
    cty: String,
    valid: bool,
}

fn parse_header(header: &Map<String, Value>) -> Result<Header, String> {
    let text = |name: &str| -> Result<String, String> {
        match header.get(name) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("{name}: must be a string")),
        }
    };
    let crit: Vec<String> = match header.get("crit") {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            let names: Vec<String> = items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect();
            if names.is_empty() {
                return Err("crit: must be a nonempty list".into());
            }
            names
        }
        Some(_) => return Err("crit: must be a list".into()),
    };
    let known = ["alg", "kid", "typ", "cty", "crit"];
    let alg = text("alg")?;
    text("typ")?;
    // A critical parameter this verifier does not understand invalidates it.
    let unknown_critical = header
        .keys()
        .any(|k| !known.contains(&k.as_str()) && crit.contains(k));
    Ok(Header {
        valid: !alg.is_empty() && !unknown_critical,
        alg,
        kid: text("kid")?,
        cty: text("cty")?,
    })
}

// ---------------------------------------------------------------- keys

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
}

/// A verification (public) key, or a shared secret.
#[derive(Debug, Clone)]
enum PublicKey {
    Ec { curve: Curve, point: Vec<u8> },
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ed25519(Vec<u8>),
    Secret(Vec<u8>),
}

#[derive(Debug, Clone)]
struct VerificationKey {
    key: PublicKey,
    /// From a JWK's `alg`; empty for certificates and PEM keys.
    alg: String,
    kid: String,
}

const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "HS256",
    "HS384", "HS512", "EdDSA",
];

/// Keys from a PEM certificate, a PEM public key, a JWK or a JWK set (a
/// PEM block is never JSON, so both are tried as OPA does).
fn keys_from_cert_or_jwk(text: &str) -> Result<Vec<VerificationKey>, String> {
    if text.trim_start().starts_with("-----BEGIN") {
        let (rest, pem) = x509_parser::pem::parse_x509_pem(text.trim_start().as_bytes())
            .map_err(|e| format!("failed to parse a PEM block: {e}"))?;
        if !rest.iter().all(u8::is_ascii_whitespace) {
            return Err("extra data after a PEM certificate block".into());
        }
        let key = match pem.label.as_str() {
            "CERTIFICATE" => {
                let cert = pem
                    .parse_x509()
                    .map_err(|e| format!("failed to parse a PEM certificate: {e}"))?;
                key_from_spki(cert.public_key())?
            }
            "PUBLIC KEY" => {
                use x509_parser::prelude::FromDer as _;
                let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&pem.contents)
                    .map_err(|e| format!("failed to parse a PEM public key: {e}"))?;
                key_from_spki(&spki)?
            }
            _ => return Err("failed to extract a Key from the PEM certificate".into()),
        };
        return Ok(vec![VerificationKey {
            key,
            alg: String::new(),
            kid: String::new(),
        }]);
    }
    let parsed: Value =
        serde_json::from_str(text).map_err(|e| format!("failed to parse a JWK key (set): {e}"))?;
    let jwks = match parsed.get("keys") {
        Some(Value::Array(keys)) => keys.clone(),
        Some(_) => return Err("failed to parse a JWK key (set): keys must be an array".into()),
        None => vec![parsed],
    };
    let mut keys = Vec::with_capacity(jwks.len());
    for jwk in &jwks {
        let alg = jwk.get("alg").and_then(Value::as_str).unwrap_or("");
        // Keys for algorithms OPA does not know are skipped, not fatal.
        if !alg.is_empty() && !ALGORITHMS.contains(&alg) {
            continue;
        }
        keys.push(VerificationKey {
            key: key_from_jwk(jwk)?,
            alg: alg.to_string(),
            kid: jwk
                .get("kid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        });
    }
    Ok(keys)
}

fn jwk_bytes(jwk: &Value, field: &str) -> Result<Vec<u8>, String> {
    let s = jwk
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("failed to parse a JWK key (set): missing {field:?}"))?;
    b64url(s).map_err(|e| format!("failed to parse a JWK key (set): {field}: {e}"))
}

fn curve_named(name: &str) -> Result<Curve, String> {
    match name {
        "P-256" => Ok(Curve::P256),
        "P-384" => Ok(Curve::P384),
        "P-521" => Ok(Curve::P521),
        other => Err(format!("unsupported elliptic curve {other:?}")),
    }
}

fn key_from_jwk(jwk: &Value) -> Result<PublicKey, String> {
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
    match kty {
        "EC" => {
            let curve = curve_named(jwk.get("crv").and_then(Value::as_str).unwrap_or(""))?;
            let mut point = vec![0x04];
            point.extend(jwk_bytes(jwk, "x")?);
            point.extend(jwk_bytes(jwk, "y")?);
            Ok(PublicKey::Ec { curve, point })
        }
        "RSA" => Ok(PublicKey::Rsa {
            n: jwk_bytes(jwk, "n")?,
            e: jwk_bytes(jwk, "e")?,
        }),
        "OKP" if jwk.get("crv").and_then(Value::as_str) == Some("Ed25519") => {
            Ok(PublicKey::Ed25519(jwk_bytes(jwk, "x")?))
        }
        "oct" => Ok(PublicKey::Secret(jwk_bytes(jwk, "k")?)),
        other => Err(format!(
            "failed to parse a JWK key (set): unsupported key type {other:?}"
        )),
    }
}

fn key_from_spki(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<PublicKey, String> {
    use x509_parser::public_key::PublicKey as Parsed;
    const P256: &str = "1.2.840.10045.3.1.7";
    const P384: &str = "1.3.132.0.34";
    const P521: &str = "1.3.132.0.35";
    const ED25519: &str = "1.3.101.112";
    if spki.algorithm.algorithm.to_id_string() == ED25519 {
        return Ok(PublicKey::Ed25519(spki.subject_public_key.data.to_vec()));
    }
    match spki.parsed() {
        Ok(Parsed::RSA(rsa)) => Ok(PublicKey::Rsa {
            n: rsa.modulus.to_vec(),
            e: rsa.exponent.to_vec(),
        }),
        Ok(Parsed::EC(point)) => {
            let curve_oid = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            let curve = match curve_oid.as_str() {
                P256 => Curve::P256,
                P384 => Curve::P384,
                P521 => Curve::P521,
                other => return Err(format!("unsupported elliptic curve {other}")),
            };
            Ok(PublicKey::Ec {
                curve,
                point: point.data().to_vec(),
            })
        }
        _ => Err("unsupported public key type".into()),
    }
}

/// A big-endian integer without its leading zero bytes.
pub(crate) fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[first..]
}

/// Whether `sig` is `alg`'s signature of `message` under `key`; a key of
/// another kind than `alg` needs never verifies.
fn verify(key: &PublicKey, alg: &str, message: &[u8], sig: &[u8]) -> bool {
    use signature::VerificationAlgorithm as _;
    let ec = |a: &'static signature::EcdsaVerificationAlgorithm, want: Curve| match key {
        PublicKey::Ec { curve, point } if *curve == want => {
            signature::UnparsedPublicKey::new(a, point)
                .verify(message, sig)
                .is_ok()
        }
        _ => false,
    };
    let rsa = |params: &'static signature::RsaParameters| match key {
        PublicKey::Rsa { n, e } => signature::RsaPublicKeyComponents {
            n: strip_leading_zeros(n),
            e: strip_leading_zeros(e),
        }
        .verify(params, message, sig)
        .is_ok(),
        _ => false,
    };
    let hs = |a: hmac::Algorithm| match key {
        PublicKey::Secret(secret) => hmac::verify(&hmac::Key::new(a, secret), message, sig).is_ok(),
        _ => false,
    };
    match alg {
        "ES256" => ec(&signature::ECDSA_P256_SHA256_FIXED, Curve::P256),
        "ES384" => ec(&signature::ECDSA_P384_SHA384_FIXED, Curve::P384),
        "ES512" => ec(&signature::ECDSA_P521_SHA512_FIXED, Curve::P521),
        "RS256" => rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
        "RS384" => rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
        "RS512" => rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
        "PS256" => rsa(&signature::RSA_PSS_2048_8192_SHA256),
        "PS384" => rsa(&signature::RSA_PSS_2048_8192_SHA384),
        "PS512" => rsa(&signature::RSA_PSS_2048_8192_SHA512),
        "HS256" => hs(hmac::HMAC_SHA256),
        "HS384" => hs(hmac::HMAC_SHA384),
        "HS512" => hs(hmac::HMAC_SHA512),
        "EdDSA" => match key {
            PublicKey::Ed25519(public) => {
                signature::ED25519.verify_sig(public, message, sig).is_ok()
            }
            _ => false,
        },
        _ => false,
    }
}

/// OPA's key selection: a key whose `kid` matches the header's decides
/// alone; otherwise every key is tried, skipping JWKs of another `alg`.
fn verify_with_keys(
    keys: &[VerificationKey],
    kid: &str,
    alg: &str,
    message: &[u8],
    sig: &[u8],
) -> bool {
    if let Some(key) = keys.iter().find(|k| !kid.is_empty() && k.kid == kid) {
        return verify(&key.key, alg, message, sig);
    }
    keys.iter()
        .filter(|k| k.alg.is_empty() || k.alg == alg)
        .any(|k| verify(&k.key, alg, message, sig))
}

// ---------------------------------------------------------------- verify_*

/// `io.jwt.verify_<alg>(token, certificate)`: the signature alone, with
/// keys from a certificate, PEM key or JWKS (`secret` for the HS family).
fn verify_alg(args: &[Value], alg: &str) -> Result<Value, String> {
    let token = Token::split(str_arg(args, 0)?)?;
    let keys = if alg.starts_with("HS") {
        vec![VerificationKey {
            key: PublicKey::Secret(str_arg(args, 1)?.as_bytes().to_vec()),
            alg: String::new(),
            kid: String::new(),
        }]
    } else {
        keys_from_cert_or_jwk(str_arg(args, 1)?)?
    };
    let sig = token.signature_bytes()?;
    let header = parse_header(&token.header_object()?)?;
    let message = token.signed_part();
    // The builtin names the algorithm; JWKs declaring another are skipped.
    let usable: Vec<VerificationKey> = keys
        .into_iter()
        .filter(|k| k.alg.is_empty() || k.alg == header.alg)
        .collect();
    Ok(Value::Bool(verify_with_keys(
        &usable,
        &header.kid,
        alg,
        message.as_bytes(),
        &sig,
    )))
}

macro_rules! verify_builtins {
    ($($name:ident => $alg:literal),* $(,)?) => {
        $(pub(crate) fn $name(args: &[Value]) -> Result<Value, String> {
            verify_alg(args, $alg)
        })*
    };
}

verify_builtins! {
    verify_rs256 => "RS256", verify_rs384 => "RS384", verify_rs512 => "RS512",
    verify_ps256 => "PS256", verify_ps384 => "PS384", verify_ps512 => "PS512",
    verify_es256 => "ES256", verify_es384 => "ES384", verify_es512 => "ES512",
    verify_hs256 => "HS256", verify_hs384 => "HS384", verify_hs512 => "HS512",
    verify_eddsa => "EdDSA",
}

// ---------------------------------------------------------------- decode_verify

struct Constraints {
    keys: Option<Vec<VerificationKey>>,
    secret: String,
    alg: String,
    iss: String,
    aud: String,
    /// Nanoseconds since the epoch.
    time: f64,
}

fn constraint_string(name: &str, v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{name} constraint: must be a string"))
}

fn parse_constraints(c: &Map<String, Value>) -> Result<Constraints, String> {
    let mut out = Constraints {
        keys: None,
        secret: String::new(),
        alg: String::new(),
        iss: String::new(),
        aud: String::new(),
        time: -1.0,
    };
    for (name, v) in c {
        match name.as_str() {
            "cert" => {
                let s = v.as_str().ok_or("cert constraint: must be a string")?;
                out.keys = Some(keys_from_cert_or_jwk(s)?);
            }
            "secret" => out.secret = constraint_string("secret", v)?,
            "alg" => out.alg = constraint_string("alg", v)?,
            "iss" => out.iss = constraint_string("iss", v)?,
            "aud" => out.aud = constraint_string("aud", v)?,
            "time" => {
                let t = v
                    .as_f64()
                    .ok_or("token time constraint: must be a number")?;
                if t < 0.0 {
                    return Err("token time constraint: must not be negative".into());
                }
                out.time = t;
            }
            other => return Err(format!("unknown token validation constraint: {other}")),
        }
    }
    if out.time < 0.0 {
        out.time = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64;
    }
    match (out.keys.is_some(), !out.secret.is_empty()) {
        (true, true) => Err("duplicate key constraints".into()),
        (false, false) => Err("no key constraint".into()),
        _ => Ok(out),
    }
}

fn unverified() -> Value {
    Value::Array(vec![
        Value::Bool(false),
        Value::Object(Map::new()),
        Value::Object(Map::new()),
    ])
}

/// `io.jwt.decode_verify(token, constraints) = [valid, header, payload]`.
pub(crate) fn decode_verify(args: &[Value]) -> Result<Value, String> {
    let token_text = str_arg(args, 0)?.to_string();
    let Value::Object(c) = arg(args, 1)? else {
        return Err("operand 2 must be object".into());
    };
    let constraints = parse_constraints(c)?;
    let mut current = token_text;
    let (header, payload) = loop {
        let token = Token::split(&current)?;
        let header_obj = token.header_object()?;
        let header = parse_header(&header_obj)?;
        if !header.valid {
            return Ok(unverified());
        }
        if !constraints.alg.is_empty() && constraints.alg != header.alg {
            return Ok(unverified());
        }
        let sig = token.signature_bytes()?;
        let message = token.signed_part();
        let verified = match &constraints.keys {
            Some(keys) => {
                verify_with_keys(keys, &header.kid, &header.alg, message.as_bytes(), &sig)
            }
            None => verify(
                &PublicKey::Secret(constraints.secret.as_bytes().to_vec()),
                &header.alg,
                message.as_bytes(),
                &sig,
            ),
        };
        if !verified {
            return Ok(unverified());
        }
        let payload = token.payload_bytes()?;
        if header.cty.eq_ignore_ascii_case("JWT") {
            current = String::from_utf8_lossy(&payload).into_owned();
            continue;
        }
        break (header_obj, json_object(&payload)?);
    };
    if !claims_hold(&constraints, &payload)? {
        return Ok(unverified());
    }
    Ok(Value::Array(vec![
        Value::Bool(true),
        Value::Object(header),
        payload,
    ]))
}

/// `iss`, `aud`, `exp` and `nbf` against the constraints (RFC 7519 4.1).
fn claims_hold(c: &Constraints, payload: &Value) -> Result<bool, String> {
    if !c.iss.is_empty() && payload.get("iss").and_then(Value::as_str) != Some(c.iss.as_str()) {
        return Ok(false);
    }
    match payload.get("aud") {
        // A token for an audience is valid only where that audience is asked for.
        Some(Value::String(aud)) if *aud != c.aud => return Ok(false),
        Some(Value::Array(auds)) if !auds.iter().any(|a| a.as_str() == Some(c.aud.as_str())) => {
            return Ok(false);
        }
        Some(Value::String(_) | Value::Array(_)) => {}
        Some(_) => return Ok(false),
        None if !c.aud.is_empty() => return Ok(false),
        None => {}
    }
    let now = c.time / 1e9;
    if let Some(exp) = payload.get("exp") {
        let exp = exp.as_f64().ok_or("exp value must be a number")?;
        if now >= exp {
            return Ok(false);
        }
    }
    if let Some(nbf) = payload.get("nbf") {
        let nbf = nbf.as_f64().ok_or("nbf value must be a number")?;
        if now < nbf {
            return Ok(false);
        }
    }
    Ok(true)
}

// ---------------------------------------------------------------- encode_sign

/// `io.jwt.encode_sign(headers, payload, jwk)`: a compact JWS signed with
/// the JWK's private key (the first of a set).
pub(crate) fn encode_sign(args: &[Value]) -> Result<Value, String> {
    let header = serde_json::to_vec(arg(args, 0)?).map_err(|e| e.to_string())?;
    let payload = serde_json::to_vec(arg(args, 1)?).map_err(|e| e.to_string())?;
    let jwk = serde_json::to_string(arg(args, 2)?).map_err(|e| e.to_string())?;
    sign_compact(&header, &payload, &jwk)
}

/// `io.jwt.encode_sign_raw(headers, payload, jwk)`, all three as JSON text.
pub(crate) fn encode_sign_raw(args: &[Value]) -> Result<Value, String> {
    sign_compact(
        str_arg(args, 0)?.as_bytes(),
        str_arg(args, 1)?.as_bytes(),
        str_arg(args, 2)?,
    )
}

fn sign_compact(header: &[u8], payload: &[u8], jwk: &str) -> Result<Value, String> {
    let header_v: Value =
        serde_json::from_slice(header).map_err(|e| format!("invalid JWT headers: {e}"))?;
    let alg = header_v
        .get("alg")
        .and_then(Value::as_str)
        .ok_or("missing or invalid 'alg' header")?;
    if !ALGORITHMS.contains(&alg) {
        return Err(format!("unknown JWS algorithm: {alg}"));
    }
    let typ = header_v.get("typ").and_then(Value::as_str);
    if matches!(typ, None | Some("JWT")) && serde_json::from_slice::<Value>(payload).is_err() {
        return Err("type is JWT but payload is not JSON".into());
    }
    let parsed: Value = serde_json::from_str(jwk).map_err(|e| format!("invalid JWK: {e}"))?;
    let key = match parsed.get("keys") {
        Some(Value::Array(keys)) => keys.first().cloned().ok_or("no keys found in JWK set")?,
        _ => parsed,
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!("{}.{}", b64.encode(header), b64.encode(payload));
    let sig = sign(&key, alg, signing_input.as_bytes())?;
    Ok(Value::String(format!(
        "{signing_input}.{}",
        b64.encode(sig)
    )))
}

fn sign(jwk: &Value, alg: &str, message: &[u8]) -> Result<Vec<u8>, String> {
    let rng = SystemRandom::new();
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
    match (kty, alg) {
        ("oct", "HS256" | "HS384" | "HS512") => {
            let a = match alg {
                "HS256" => hmac::HMAC_SHA256,
                "HS384" => hmac::HMAC_SHA384,
                _ => hmac::HMAC_SHA512,
            };
            let key = hmac::Key::new(a, &jwk_bytes(jwk, "k")?);
            Ok(hmac::sign(&key, message).as_ref().to_vec())
        }
        ("EC", "ES256" | "ES384" | "ES512") => {
            let (a, curve) = match alg {
                "ES256" => (&signature::ECDSA_P256_SHA256_FIXED_SIGNING, Curve::P256),
                "ES384" => (&signature::ECDSA_P384_SHA384_FIXED_SIGNING, Curve::P384),
                _ => (&signature::ECDSA_P521_SHA512_FIXED_SIGNING, Curve::P521),
            };
            let crv = curve_named(jwk.get("crv").and_then(Value::as_str).unwrap_or(""))?;
            if crv != curve {
                return Err(format!("key curve does not match {alg}"));
            }
            let mut public = vec![0x04];
            public.extend(jwk_bytes(jwk, "x")?);
            public.extend(jwk_bytes(jwk, "y")?);
            let pair = signature::EcdsaKeyPair::from_private_key_and_public_key(
                a,
                &jwk_bytes(jwk, "d")?,
                &public,
            )
            .map_err(|e| format!("invalid EC private key: {e}"))?;
            pair.sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|e| format!("cannot sign: {e}"))
        }
        ("OKP", "EdDSA") => {
            let pair = signature::Ed25519KeyPair::from_seed_and_public_key(
                &jwk_bytes(jwk, "d")?,
                &jwk_bytes(jwk, "x")?,
            )
            .map_err(|e| format!("invalid Ed25519 private key: {e}"))?;
            Ok(pair.sign(message).as_ref().to_vec())
        }
        ("RSA", _) => Err(
            "signing with an RSA JWK is not supported by Signet; use an EC, OKP or oct key".into(),
        ),
        (kty, alg) => Err(format!("a {kty:?} key cannot sign {alg}")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    const EC_JWK: &str = r#"{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256",
        "x":"B78tU6jSL5sV9cHxuZys102PWSR-NIZIBeKpf-SBs6g",
        "y":"z1wXxCdYvM2B4voDXeCdtVi_oGTZljm1B2l-0N2uBTY",
        "d":"-dzGoCnwEWGq9OhHG_MolCVYdi7RCiz_i1RUb3NCZPs"}"#;

    /// The key of [`CERT`].
    const CERT_JWK: &str = r#"{"kty":"EC","crv":"P-256",
        "x":"O9d2f8zlHC88MsnkPt7Oztl70LLrQc5X7-QyH2QPHgM",
        "y":"6f5gNFogB2oaXanCRBpnj8rQ86vfsyxOVMtRLKx0gM0",
        "d":"I_kSrmdugu9ehRc_b12Ol6rEowy9tIjt-F199EDG3AQ"}"#;

    /// A self-signed P-256 certificate (made once with openssl).
    pub(crate) const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBfDCCASGgAwIBAgIUfw2yzH0qjn3lPpxweFhraoeSLj4wCgYIKoZIzj0EAwIw
EzERMA8GA1UEAwwIand0LXRlc3QwHhcNMjYxMjAyMTMzMTU0WhcNMzYxMTI5MTMz
MTU0WjATMREwDwYDVQQDDAhqd3QtdGVzdDBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABDvXdn/M5RwvPDLJ5D7ezs7Ze9Cy60HOV+/kMh9kDx4D6f5gNFogB2oaXanC
RBpnj8rQ86vfsyxOVMtRLKx0gM2jUzBRMB0GA1UdDgQWBBTx1/LSeqL9mGu2AFOD
VmZFB9O1iDAfBgNVHSMEGDAWgBTx1/LSeqL9mGu2AFODVmZFB9O1iDAPBgNVHRMB
Af8EBTADAQH/MAoGCCqGSM49BAMCA0kAMEYCIQCRyBczMNDSMtSZFQ0JrhyuPeWA
5UCwODlLuPeOLoUaGAIhAP0n1gMMCZMT/4egE1/NNx6scjDFwG1GlaI3tiO0QLji
-----END CERTIFICATE-----
";

    fn public_of(jwk: &str) -> String {
        let mut v: Value = serde_json::from_str(jwk).expect("jwk");
        v.as_object_mut().expect("object").remove("d");
        json!({"keys": [v]}).to_string()
    }

    fn signed(payload: Value) -> String {
        let out = encode_sign(&[
            json!({"alg": "ES256", "typ": "JWT", "kid": "k1"}),
            payload,
            serde_json::from_str(EC_JWK).expect("jwk"),
        ])
        .expect("signs");
        out.as_str().expect("string").to_string()
    }

    fn dv(token: &str, constraints: Value) -> Result<Value, String> {
        decode_verify(&[json!(token), constraints])
    }

    #[test]
    fn encode_sign_and_verify_round_trip() {
        let token = signed(json!({"sub": "spiffe://example.org/web"}));
        let jwks = public_of(EC_JWK);
        assert_eq!(verify_es256(&[json!(token), json!(jwks)]), Ok(json!(true)));
        // Another algorithm's builtin never accepts it.
        assert_eq!(verify_es384(&[json!(token), json!(jwks)]), Ok(json!(false)));
        // A flipped payload byte breaks the signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"spiffe://example.org/admin"}"#);
        let forged = parts.join(".");
        assert_eq!(
            verify_es256(&[json!(forged), json!(jwks)]),
            Ok(json!(false))
        );
    }

    #[test]
    fn decode_verify_checks_claims_as_opa_does() {
        let now_s = 1_700_000_000.0;
        let time = json!(now_s * 1e9);
        let jwks = public_of(EC_JWK);
        let token = signed(
            json!({"sub": "s", "aud": ["a", "b"], "iss": "i", "exp": now_s + 60.0, "nbf": now_s - 60.0}),
        );
        let ok = dv(
            &token,
            json!({"cert": jwks, "aud": "b", "iss": "i", "time": time}),
        )
        .expect("ok");
        assert_eq!(ok[0], json!(true));
        assert_eq!(ok[2]["sub"], json!("s"));
        assert_eq!(ok[1]["kid"], json!("k1"));
        // A token with an audience needs that audience asked for.
        assert_eq!(
            dv(&token, json!({"cert": jwks, "time": time})),
            Ok(unverified())
        );
        assert_eq!(
            dv(&token, json!({"cert": jwks, "aud": "c", "time": time})),
            Ok(unverified())
        );
        assert_eq!(
            dv(
                &token,
                json!({"cert": jwks, "aud": "a", "iss": "x", "time": time})
            ),
            Ok(unverified())
        );
        // Expired, and not yet valid.
        assert_eq!(
            dv(
                &token,
                json!({"cert": jwks, "aud": "a", "time": (now_s + 60.0) * 1e9})
            ),
            Ok(unverified())
        );
        assert_eq!(
            dv(
                &token,
                json!({"cert": jwks, "aud": "a", "time": (now_s - 61.0) * 1e9})
            ),
            Ok(unverified())
        );
        // alg constraint.
        assert_eq!(
            dv(
                &token,
                json!({"cert": jwks, "aud": "a", "alg": "RS256", "time": time})
            ),
            Ok(unverified())
        );
        // Errors, not false: bad constraints and malformed tokens.
        assert!(dv(&token, json!({"cert": jwks, "secret": "x"})).is_err());
        assert!(dv(&token, json!({"aud": "a"})).is_err());
        assert!(dv(&token, json!({"cert": jwks, "audience": "a"})).is_err());
        assert!(dv("not-a-token", json!({"cert": jwks})).is_err());
        assert!(dv("a.b", json!({"cert": jwks})).is_err());
        // Another key does not verify.
        let other = public_of(
            r#"{"kty":"EC","crv":"P-256","kid":"k2","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#,
        );
        assert_eq!(
            dv(&token, json!({"cert": other, "aud": "a", "time": time})),
            Ok(unverified())
        );
    }

    #[test]
    fn hmac_tokens() {
        let jwk = json!({"kty": "oct", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("s3cret")});
        let token = encode_sign(&[json!({"alg": "HS256"}), json!({"x": 1}), jwk]).expect("signs");
        let token = token.as_str().expect("string");
        assert_eq!(
            verify_hs256(&[json!(token), json!("s3cret")]),
            Ok(json!(true))
        );
        assert_eq!(
            verify_hs256(&[json!(token), json!("other")]),
            Ok(json!(false))
        );
        let ok = dv(token, json!({"secret": "s3cret"})).expect("ok");
        assert_eq!(ok[0], json!(true));
        // A symmetric token is not accepted by an asymmetric key set.
        assert_eq!(
            dv(token, json!({"cert": public_of(EC_JWK)})),
            Ok(unverified())
        );
        // Algorithm confusion: HS256 keyed with the public key's own text,
        // offered to a verifier holding that certificate, is refused.
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let confused = encode_sign(&[
            json!({"alg": "HS256"}),
            json!({"sub": "admin"}),
            json!({"kty": "oct", "k": b64.encode(CERT)}),
        ])
        .expect("signs");
        let confused = confused.as_str().expect("string");
        assert_eq!(dv(confused, json!({"cert": CERT})), Ok(unverified()));
        assert_eq!(
            verify_es256(&[json!(confused), json!(CERT)]),
            Ok(json!(false))
        );
    }

    #[test]
    fn pem_keys_and_header_rules() {
        let token = signed(json!({"sub": "s"}));
        // The certificate holds another key: a valid parse, a false verify.
        assert_eq!(verify_es256(&[json!(token), json!(CERT)]), Ok(json!(false)));
        let by_cert_key = encode_sign(&[
            json!({"alg": "ES256"}),
            json!({"sub": "s"}),
            serde_json::from_str(CERT_JWK).expect("jwk"),
        ])
        .expect("signs");
        assert_eq!(
            verify_es256(&[by_cert_key.clone(), json!(CERT)]),
            Ok(json!(true))
        );
        let ok = dv(by_cert_key.as_str().expect("s"), json!({"cert": CERT})).expect("ok");
        assert_eq!(ok[0], json!(true));
        assert!(verify_es256(&[json!(token), json!(format!("{CERT}{CERT}"))]).is_err());
        assert!(verify_es256(&[json!(token), json!("{not json")]).is_err());
        // An unknown critical header invalidates the token.
        let crit = encode_sign(&[
            json!({"alg": "ES256", "crit": ["exp-policy"], "exp-policy": 1}),
            json!({}),
            serde_json::from_str(EC_JWK).expect("jwk"),
        ])
        .expect("signs");
        assert_eq!(
            dv(
                crit.as_str().expect("s"),
                json!({"cert": public_of(EC_JWK)})
            ),
            Ok(unverified())
        );
    }
}
