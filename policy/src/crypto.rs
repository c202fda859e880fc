//! OPA's `crypto.*` builtins: digests and HMACs of strings, and X.509
//! certificates parsed (and chains verified) into the JSON shape Go's
//! `x509.Certificate` marshals to, which is what OPA policies index into
//! (`cert.Subject.CommonName`, `cert.URIs[0]`, ...).
//!
//! Digests, HMACs and signature checks are aws-lc-rs (MD5, which it does not
//! offer, is RustCrypto's); certificates are parsed by x509-parser.

use aws_lc_rs::{digest, hmac};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate, X509Name};

use crate::builtins::str_arg;

// ---------------------------------------------------------------- digests

fn hex_digest(alg: &'static digest::Algorithm, args: &[Value]) -> Result<Value, String> {
    let data = str_arg(args, 0)?;
    Ok(Value::String(hex::encode(digest::digest(
        alg,
        data.as_bytes(),
    ))))
}

pub(crate) fn sha256(args: &[Value]) -> Result<Value, String> {
    hex_digest(&digest::SHA256, args)
}

pub(crate) fn sha1(args: &[Value]) -> Result<Value, String> {
    hex_digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, args)
}

pub(crate) fn md5(args: &[Value]) -> Result<Value, String> {
    use md5::Digest as _;
    let data = str_arg(args, 0)?;
    Ok(Value::String(hex::encode(md5::Md5::digest(
        data.as_bytes(),
    ))))
}

fn hex_hmac(alg: hmac::Algorithm, args: &[Value]) -> Result<Value, String> {
    let data = str_arg(args, 0)?;
    let key = hmac::Key::new(alg, str_arg(args, 1)?.as_bytes());
    Ok(Value::String(hex::encode(hmac::sign(
        &key,
        data.as_bytes(),
    ))))
}

pub(crate) fn hmac_sha1(args: &[Value]) -> Result<Value, String> {
    hex_hmac(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, args)
}

pub(crate) fn hmac_sha256(args: &[Value]) -> Result<Value, String> {
    hex_hmac(hmac::HMAC_SHA256, args)
}

pub(crate) fn hmac_sha512(args: &[Value]) -> Result<Value, String> {
    hex_hmac(hmac::HMAC_SHA512, args)
}

pub(crate) fn hmac_md5(args: &[Value]) -> Result<Value, String> {
    use ::hmac::{KeyInit as _, Mac as _};
    let data = str_arg(args, 0)?;
    let mut mac = ::hmac::Hmac::<md5::Md5>::new_from_slice(str_arg(args, 1)?.as_bytes())
        .map_err(|e| e.to_string())?;
    mac.update(data.as_bytes());
    Ok(Value::String(hex::encode(mac.finalize().into_bytes())))
}

/// `crypto.hmac.equal(mac1, mac2)`: comparison in constant time.
pub(crate) fn hmac_equal(args: &[Value]) -> Result<Value, String> {
    let (a, b) = (str_arg(args, 0)?, str_arg(args, 1)?);
    #[allow(deprecated)] // the replacement is not in every aws-lc-rs 1.x
    let equal = aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes());
    Ok(Value::Bool(equal.is_ok()))
}

// ---------------------------------------------------------------- x509

/// DER certificates from PEM text, or base64 of PEM or of DER (one or
/// several concatenated), as OPA accepts them.
fn certificates_der(input: &str) -> Result<Vec<Vec<u8>>, String> {
    let from_pem = |text: &[u8]| -> Result<Vec<Vec<u8>>, String> {
        let mut out = Vec::new();
        for pem in x509_parser::pem::Pem::iter_from_buffer(text) {
            let pem = pem.map_err(|e| format!("failed to parse PEM: {e}"))?;
            if pem.label == "CERTIFICATE" {
                out.push(pem.contents);
            }
        }
        Ok(out)
    };
    if input.trim_start().starts_with("-----BEGIN") {
        return from_pem(input.as_bytes());
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(input.trim())
        .map_err(|e| format!("certificates are neither PEM nor base64: {e}"))?;
    if raw.starts_with(b"-----BEGIN") {
        return from_pem(&raw);
    }
    let mut out = Vec::new();
    let mut rest: &[u8] = &raw;
    while !rest.is_empty() {
        let (next, _) = X509Certificate::from_der(rest)
            .map_err(|e| format!("x509: malformed certificate: {e}"))?;
        let used = rest.len() - next.len();
        out.push(rest[..used].to_vec());
        rest = next;
    }
    Ok(out)
}

fn parse_all(ders: &[Vec<u8>]) -> Result<Vec<X509Certificate<'_>>, String> {
    ders.iter()
        .map(|der| {
            X509Certificate::from_der(der)
                .map(|(_, c)| c)
                .map_err(|e| format!("x509: malformed certificate: {e}"))
        })
        .collect()
}

/// `crypto.x509.parse_certificates(certs)`: every certificate, as Go's JSON.
pub(crate) fn parse_certificates(args: &[Value]) -> Result<Value, String> {
    let ders = certificates_der(str_arg(args, 0)?)?;
    let certs = parse_all(&ders)?;
    Ok(Value::Array(certs.iter().map(go_certificate).collect()))
}

/// `crypto.x509.parse_and_verify_certificates(certs) = [valid, certs]`: the
/// first certificate is the trusted root, the last the leaf, those between
/// intermediates; `[false, []]` unless the chain verifies now.
pub(crate) fn parse_and_verify_certificates(args: &[Value]) -> Result<Value, String> {
    let invalid = || Value::Array(vec![Value::Bool(false), Value::Array(Vec::new())]);
    let Ok(ders) = certificates_der(str_arg(args, 0)?) else {
        return Ok(invalid());
    };
    let Ok(certs) = parse_all(&ders) else {
        return Ok(invalid());
    };
    if certs.len() < 2 || !chain_verifies(&certs) {
        return Ok(invalid());
    }
    Ok(Value::Array(vec![
        Value::Bool(true),
        Value::Array(certs.iter().map(go_certificate).collect()),
    ]))
}

/// Each certificate issued by the one before it (name and signature), every
/// issuer below the root a CA within its path length, all valid now.
fn chain_verifies(certs: &[X509Certificate<'_>]) -> bool {
    let now = x509_parser::time::ASN1Time::now();
    if !certs.iter().all(|c| c.validity().is_valid_at(now)) {
        return false;
    }
    for (i, pair) in certs.windows(2).enumerate() {
        let (issuer, subject) = (&pair[0], &pair[1]);
        if issuer.subject().as_raw() != subject.issuer().as_raw()
            || subject.verify_signature(Some(issuer.public_key())).is_err()
        {
            return false;
        }
        // Intermediates must be CAs; the root is trusted as given.
        if i > 0 {
            let Ok(Some(bc)) = issuer.basic_constraints() else {
                return false;
            };
            if !bc.value.ca {
                return false;
            }
            // Intermediates below this one (the leaf excluded).
            let below = certs.len() - i - 2;
            if bc
                .value
                .path_len_constraint
                .is_some_and(|max| usize::try_from(max).is_ok_and(|max| below > max))
            {
                return false;
            }
        }
    }
    true
}

fn b64(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// A big-endian unsigned integer as a JSON number (exact up to 2^64, a float
/// above, where JSON numbers stop being exact anyway).
fn big_number(bytes: &[u8]) -> Value {
    let trimmed = crate::jwt::strip_leading_zeros(bytes);
    if trimmed.len() <= 8 {
        let mut n = 0u64;
        for b in trimmed {
            n = (n << 8) | u64::from(*b);
        }
        return json!(n);
    }
    let f = trimmed
        .iter()
        .fold(0f64, |acc, b| acc * 256.0 + f64::from(*b));
    json!(f)
}

fn oid_array(oid: &x509_parser::der_parser::oid::Oid<'_>) -> Value {
    match oid.iter() {
        Some(arcs) => Value::Array(arcs.map(|a| json!(a)).collect()),
        None => Value::Array(Vec::new()),
    }
}

fn strings_or_null(items: Vec<String>) -> Value {
    if items.is_empty() {
        Value::Null
    } else {
        Value::Array(items.into_iter().map(Value::String).collect())
    }
}

/// A `pkix.Name`: the well-known attributes by field, all in `Names`.
fn go_name(name: &X509Name<'_>) -> Value {
    const FIELDS: &[(&str, &str)] = &[
        ("2.5.4.6", "Country"),
        ("2.5.4.10", "Organization"),
        ("2.5.4.11", "OrganizationalUnit"),
        ("2.5.4.7", "Locality"),
        ("2.5.4.8", "Province"),
        ("2.5.4.9", "StreetAddress"),
        ("2.5.4.17", "PostalCode"),
    ];
    let mut out = Map::new();
    let mut names = Vec::new();
    let mut lists: Vec<Vec<String>> = vec![Vec::new(); FIELDS.len()];
    let (mut serial, mut common) = (String::new(), String::new());
    for attr in name.iter_attributes() {
        let oid = attr.attr_type().to_id_string();
        let value = attr.as_str().unwrap_or_default().to_string();
        names.push(json!({"Type": oid_array(attr.attr_type()), "Value": value}));
        match oid.as_str() {
            "2.5.4.3" => common = value,
            "2.5.4.5" => serial = value,
            _ => {
                if let Some(i) = FIELDS.iter().position(|(o, _)| *o == oid) {
                    lists[i].push(value);
                }
            }
        }
    }
    for ((_, field), values) in FIELDS.iter().zip(lists) {
        out.insert((*field).to_string(), strings_or_null(values));
    }
    out.insert("SerialNumber".into(), Value::String(serial));
    out.insert("CommonName".into(), Value::String(common));
    out.insert("Names".into(), Value::Array(names));
    out.insert("ExtraNames".into(), Value::Null);
    Value::Object(out)
}

/// A URI SAN as Go's `url.URL` marshals (`spiffe://td/path` gives Scheme,
/// Host, Path).
fn go_url(uri: &str) -> Value {
    let (scheme, rest) = uri.split_once(':').unwrap_or(("", uri));
    let (rest, fragment) = rest.split_once('#').unwrap_or((rest, ""));
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (opaque, host, path) = match rest.strip_prefix("//") {
        Some(authority_path) => {
            let (host, path) = match authority_path.find('/') {
                Some(i) => authority_path.split_at(i),
                None => (authority_path, ""),
            };
            ("", host, path)
        }
        None => (rest, "", ""),
    };
    json!({
        "Scheme": scheme, "Opaque": opaque, "User": null, "Host": host, "Path": path,
        "RawPath": "", "OmitHost": false, "ForceQuery": false, "RawQuery": query,
        "Fragment": fragment, "RawFragment": "",
    })
}

/// Go's `x509.SignatureAlgorithm` and `x509.PublicKeyAlgorithm` numbers.
fn go_algorithms(cert: &X509Certificate<'_>) -> (u8, u8) {
    let sig = match cert.signature_algorithm.algorithm.to_id_string().as_str() {
        "1.2.840.113549.1.1.5" => 3,
        "1.2.840.113549.1.1.11" => 4,
        "1.2.840.113549.1.1.12" => 5,
        "1.2.840.113549.1.1.13" => 6,
        "1.2.840.10045.4.1" => 9,
        "1.2.840.10045.4.3.2" => 10,
        "1.2.840.10045.4.3.3" => 11,
        "1.2.840.10045.4.3.4" => 12,
        "1.2.840.113549.1.1.10" => 13,
        "1.3.101.112" => 16,
        _ => 0,
    };
    let key = match cert
        .public_key()
        .algorithm
        .algorithm
        .to_id_string()
        .as_str()
    {
        "1.2.840.113549.1.1.1" => 1,
        "1.2.840.10040.4.1" => 2,
        "1.2.840.10045.2.1" => 3,
        "1.3.101.112" => 4,
        _ => 0,
    };
    (sig, key)
}

fn go_public_key(cert: &X509Certificate<'_>) -> Value {
    use x509_parser::public_key::PublicKey;
    match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            json!({"N": big_number(rsa.modulus), "E": big_number(rsa.exponent)})
        }
        Ok(PublicKey::EC(point)) => {
            let data = point.data();
            let half = data.len().saturating_sub(1) / 2;
            let (x, y) = data.get(1..).unwrap_or_default().split_at(half);
            json!({"Curve": {}, "X": big_number(x), "Y": big_number(y)})
        }
        _ => b64(&cert.public_key().subject_public_key.data),
    }
}

fn go_time(t: x509_parser::time::ASN1Time) -> Value {
    t.to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .map_or(Value::Null, Value::String)
}

/// A certificate in the JSON shape of Go's `x509.Certificate`.
fn go_certificate(cert: &X509Certificate<'_>) -> Value {
    let (sig_alg, key_alg) = go_algorithms(cert);
    let mut dns = Vec::new();
    let mut emails = Vec::new();
    let mut ips = Vec::new();
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push((*d).to_string()),
                GeneralName::RFC822Name(e) => emails.push((*e).to_string()),
                GeneralName::URI(u) => uris.push(go_url(u)),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes)
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        _ => <[u8; 16]>::try_from(*bytes)
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                    };
                    if let Ok(ip) = ip {
                        ips.push(ip);
                    }
                }
                _ => {}
            }
        }
    }
    let key_usage = cert.key_usage().ok().flatten().map_or(0, |k| k.value.flags);
    let ext_key_usage: Vec<Value> = cert
        .extended_key_usage()
        .ok()
        .flatten()
        .map(|e| {
            let e = e.value;
            [
                (e.any, 0),
                (e.server_auth, 1),
                (e.client_auth, 2),
                (e.code_signing, 3),
                (e.email_protection, 4),
                (e.time_stamping, 8),
                (e.ocsp_signing, 9),
            ]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| json!(n))
            .collect()
        })
        .unwrap_or_default();
    let bc = cert.basic_constraints().ok().flatten();
    let (bc_valid, is_ca, max_path, max_path_zero) = match bc {
        Some(bc) => {
            let max = bc.value.path_len_constraint.map_or(-1, i64::from);
            (true, bc.value.ca, max, max == 0)
        }
        None => (false, false, 0, false),
    };
    let ski = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(b64(k.0)),
            _ => None,
        });
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(k) => {
                k.key_identifier.as_ref().map(|k| b64(k.0))
            }
            _ => None,
        });
    let extensions: Vec<Value> = cert
        .extensions()
        .iter()
        .map(|e| json!({"Id": oid_array(&e.oid), "Critical": e.critical, "Value": b64(e.value)}))
        .collect();
    let fields: Vec<(&str, Value)> = vec![
        ("Raw", b64(cert.as_raw())),
        ("RawTBSCertificate", b64(cert.tbs_certificate.as_ref())),
        ("RawSubjectPublicKeyInfo", b64(cert.public_key().raw)),
        ("RawSubject", b64(cert.subject().as_raw())),
        ("RawIssuer", b64(cert.issuer().as_raw())),
        ("Signature", b64(&cert.signature_value.data)),
        ("SignatureAlgorithm", json!(sig_alg)),
        ("PublicKeyAlgorithm", json!(key_alg)),
        ("PublicKey", go_public_key(cert)),
        ("Version", json!(cert.version().0 + 1)),
        ("SerialNumber", big_number(cert.raw_serial())),
        ("Issuer", go_name(cert.issuer())),
        ("Subject", go_name(cert.subject())),
        ("NotBefore", go_time(cert.validity().not_before)),
        ("NotAfter", go_time(cert.validity().not_after)),
        ("KeyUsage", json!(key_usage)),
        ("Extensions", json!(extensions)),
        ("ExtraExtensions", Value::Null),
        ("UnhandledCriticalExtensions", Value::Null),
        (
            "ExtKeyUsage",
            if ext_key_usage.is_empty() {
                Value::Null
            } else {
                Value::Array(ext_key_usage)
            },
        ),
        ("UnknownExtKeyUsage", Value::Null),
        ("BasicConstraintsValid", json!(bc_valid)),
        ("IsCA", json!(is_ca)),
        ("MaxPathLen", json!(max_path)),
        ("MaxPathLenZero", json!(max_path_zero)),
        ("SubjectKeyId", ski.unwrap_or(Value::Null)),
        ("AuthorityKeyId", aki.unwrap_or(Value::Null)),
        ("OCSPServer", Value::Null),
        ("IssuingCertificateURL", Value::Null),
        ("DNSNames", strings_or_null(dns)),
        ("EmailAddresses", strings_or_null(emails)),
        ("IPAddresses", strings_or_null(ips)),
        (
            "URIs",
            if uris.is_empty() {
                Value::Null
            } else {
                Value::Array(uris)
            },
        ),
        ("PermittedDNSDomainsCritical", Value::Bool(false)),
        ("PermittedDNSDomains", Value::Null),
        ("ExcludedDNSDomains", Value::Null),
        ("PermittedIPRanges", Value::Null),
        ("ExcludedIPRanges", Value::Null),
        ("PermittedEmailAddresses", Value::Null),
        ("ExcludedEmailAddresses", Value::Null),
        ("PermittedURIDomains", Value::Null),
        ("ExcludedURIDomains", Value::Null),
        ("CRLDistributionPoints", Value::Null),
        ("PolicyIdentifiers", Value::Null),
        ("Policies", Value::Null),
    ];
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_known_vectors() {
        let abc = [json!("abc")];
        assert_eq!(
            sha256(&abc),
            Ok(json!(
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            ))
        );
        assert_eq!(
            sha1(&abc),
            Ok(json!("a9993e364706816aba3e25717850c26c9cd0d89d"))
        );
        assert_eq!(md5(&abc), Ok(json!("900150983cd24fb0d6963f7d28e17f72")));
        // RFC 2202 / 4231 test case 2.
        let args = [json!("what do ya want for nothing?"), json!("Jefe")];
        assert_eq!(
            hmac_md5(&args),
            Ok(json!("750c783e6ab0b503eaa86e310a5db738"))
        );
        assert_eq!(
            hmac_sha1(&args),
            Ok(json!("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"))
        );
        assert_eq!(
            hmac_sha256(&args),
            Ok(json!(
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
            ))
        );
        assert_eq!(hmac_equal(&[json!("ab"), json!("ab")]), Ok(json!(true)));
        assert_eq!(hmac_equal(&[json!("ab"), json!("ac")]), Ok(json!(false)));
        assert!(sha256(&[json!(1)]).is_err());
    }

    #[test]
    fn certificates_parse_into_gos_shape() {
        let pem = crate::jwt::tests::CERT;
        let certs = parse_certificates(&[json!(pem)]).expect("parses");
        let cert = &certs[0];
        assert_eq!(cert["Subject"]["CommonName"], "jwt-test");
        assert_eq!(cert["Issuer"]["Names"][0]["Type"], json!([2, 5, 4, 3]));
        assert_eq!(cert["Version"], 3);
        assert_eq!(cert["IsCA"], true);
        assert_eq!(cert["PublicKeyAlgorithm"], 3);
        assert_eq!(cert["SignatureAlgorithm"], 10);
        assert_eq!(cert["NotAfter"], "2036-11-29T13:31:54Z");
        assert_eq!(cert["DNSNames"], Value::Null);
        // Base64 of the PEM text and of the DER both parse to the same.
        let b64_pem = base64::engine::general_purpose::STANDARD.encode(pem);
        assert_eq!(parse_certificates(&[json!(b64_pem)]), Ok(certs.clone()));
        let der = certificates_der(pem).expect("der").remove(0);
        let b64_der = base64::engine::general_purpose::STANDARD.encode(der);
        assert_eq!(parse_certificates(&[json!(b64_der)]), Ok(certs.clone()));
        assert!(parse_certificates(&[json!("not a certificate")]).is_err());
        // A self-signed root alone is not a chain; root + itself as leaf is.
        let one = parse_and_verify_certificates(&[json!(pem)]).expect("answers");
        assert_eq!(one, json!([false, []]));
        let two = parse_and_verify_certificates(&[json!(format!("{pem}{pem}"))]).expect("answers");
        assert_eq!(two[0], true);
    }

    #[test]
    fn urls_split_as_go_does() {
        let u = go_url("spiffe://example.org/ns/prod/sa/web");
        assert_eq!(u["Scheme"], "spiffe");
        assert_eq!(u["Host"], "example.org");
        assert_eq!(u["Path"], "/ns/prod/sa/web");
        assert_eq!(go_url("urn:x:y")["Opaque"], "x:y");
    }
}
