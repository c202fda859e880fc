//! A policy's result as the `CheckResponse` the OPA-Envoy plugin would
//! send: `true`/`false`, or an object with `allowed` and, for an allowed
//! request, `headers` (to the upstream request), `request_headers_to_remove`,
//! `response_headers_to_add`, `query_parameters_to_set`/`_to_remove`; for a
//! denied one, `headers`, `body` and `http_status` (403 by default); and
//! `dynamic_metadata` either way. The decision id always goes into the
//! dynamic metadata. A result of the wrong shape is a [`ResultError`]
//! (the plugin answers gRPC UNKNOWN, and Envoy applies its failure mode).

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, QueryParameter};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value as PbValue, value::Kind};
use envoy_types::pb::google::rpc::Status;
use serde_json::{Map, Value};

/// gRPC status codes of `CheckResponse.status`.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;

/// A result the plugin refuses (its `envoyauth_result_error`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ResultError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ResultError> {
    Err(ResultError(msg.into()))
}

/// The response for `result`, the policy's (defined) decision.
pub fn check_response(result: &Value, decision_id: &str) -> Result<CheckResponse, ResultError> {
    let mut response = match result {
        Value::Bool(allowed) => CheckResponse {
            status: Some(status(*allowed)),
            ..CheckResponse::default()
        },
        Value::Object(obj) => object_response(obj)?,
        other => {
            return err(format!(
                "failed to get response status: illegal value for policy evaluation result: {}",
                type_name(other)
            ));
        }
    };
    let metadata = response
        .dynamic_metadata
        .get_or_insert_with(Struct::default);
    metadata.fields.insert(
        "decision_id".into(),
        PbValue {
            kind: Some(Kind::StringValue(decision_id.to_owned())),
        },
    );
    Ok(response)
}

/// The answer to a request whose input could not be built.
pub fn request_error_response(why: &str) -> CheckResponse {
    let message = format!("request_parse_error: {why}");
    CheckResponse {
        status: Some(Status {
            code: PERMISSION_DENIED,
            message: message.clone(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: 400 }),
            body: message,
            ..DeniedHttpResponse::default()
        })),
        ..CheckResponse::default()
    }
}

/// `--dry-run`: a denial becomes an empty allow (metadata kept).
pub fn dry_run(mut response: CheckResponse) -> CheckResponse {
    if response.status.as_ref().is_some_and(|s| s.code != OK) {
        response.status = Some(status(true));
        response.http_response = Some(HttpResponse::OkResponse(OkHttpResponse::default()));
    }
    response
}

fn status(allowed: bool) -> Status {
    Status {
        code: if allowed { OK } else { PERMISSION_DENIED },
        message: String::new(),
        details: Vec::new(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn object_response(obj: &Map<String, Value>) -> Result<CheckResponse, ResultError> {
    let allowed = match obj.get("allowed") {
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return err(format!(
                "failed to get response status: expected allowed to be of type 'boolean' but got '{}'",
                type_name(other)
            ));
        }
        None => {
            return err(
                "failed to get response status: unable to determine evaluation result due to missing \"allowed\" key",
            );
        }
    };
    let headers = header_options("headers", obj.get("headers"))?;
    let dynamic_metadata = match obj.get("dynamic_metadata") {
        None => None,
        Some(Value::Object(m)) => Some(to_struct(m)),
        Some(_) => {
            return err(
                "failed to get dynamic metadata: expected dynamic_metadata to be of type 'object'",
            );
        }
    };
    let http_response = if allowed {
        HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove: strings(
                "request headers to remove",
                "request_headers_to_remove",
                obj.get("request_headers_to_remove"),
            )?,
            response_headers_to_add: header_options(
                "response_headers_to_add",
                obj.get("response_headers_to_add"),
            )?,
            query_parameters_to_remove: strings(
                "request query parameters to remove",
                "query_parameters_to_remove",
                obj.get("query_parameters_to_remove"),
            )?,
            query_parameters_to_set: query_parameters(obj.get("query_parameters_to_set"))?,
            ..OkHttpResponse::default()
        })
    } else {
        let body = match obj.get("body") {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return err(format!(
                    "failed to get response body: expected body to be of type 'string' but got '{}'",
                    type_name(other)
                ));
            }
        };
        HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: http_status(obj.get("http_status"))?,
            }),
            headers,
            body,
        })
    };
    Ok(CheckResponse {
        status: Some(status(allowed)),
        http_response: Some(http_response),
        dynamic_metadata,
    })
}

/// Envoy's `StatusCode` values (its enum), as the plugin accepts them.
fn known_status(code: i64) -> bool {
    matches!(code, 100 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=417 | 421..=424
        | 426 | 428 | 429 | 431 | 500..=508 | 510 | 511)
}

fn http_status(v: Option<&Value>) -> Result<i32, ResultError> {
    let Some(v) = v else { return Ok(403) };
    let Value::Number(n) = v else {
        return err(format!(
            "failed to get response http status: expected http_status to be of type 'number' but got '{}'",
            type_name(v)
        ));
    };
    let Some(code) = n
        .as_i64()
        .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
    else {
        return err(format!(
            "failed to get response http status: error converting JSON number to int: {n}"
        ));
    };
    match i32::try_from(code) {
        Ok(c) if known_status(code) => Ok(c),
        _ => err(format!(
            "failed to get response http status: invalid HTTP status code {code}"
        )),
    }
}

/// `{"k": "v"}`, `{"k": ["v1", "v2"]}`, or an array of such objects, as
/// header options (one per value; neither `append` nor `append_action`
/// set, as the plugin leaves them).
fn header_options(name: &str, v: Option<&Value>) -> Result<Vec<HeaderValueOption>, ResultError> {
    let objects: Vec<&Map<String, Value>> = match v {
        None => return Ok(Vec::new()),
        Some(Value::Object(m)) => vec![m],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::Object(m) => Ok(m),
                other => err(format!(
                    "failed to get {name}: expected an object in the array but got '{}'",
                    type_name(other)
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return err(format!(
                "failed to get {name}: expected an object or an array of objects but got '{}'",
                type_name(other)
            ));
        }
    };
    let mut out = Vec::new();
    for m in objects {
        for (key, value) in m {
            let values: Vec<&str> = match value {
                Value::String(s) => vec![s.as_str()],
                Value::Array(items) => items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) => Ok(s.as_str()),
                        other => err(format!(
                            "failed to get {name}: invalid value type {} for header '{key}'",
                            type_name(other)
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                _ => {
                    return err(format!(
                        "failed to get {name}: type assertion error for header '{key}'"
                    ));
                }
            };
            out.extend(values.into_iter().map(|v| HeaderValueOption {
                header: Some(HeaderValue {
                    key: key.clone(),
                    value: v.to_owned(),
                    ..HeaderValue::default()
                }),
                ..HeaderValueOption::default()
            }));
        }
    }
    Ok(out)
}

fn strings(what: &str, name: &str, v: Option<&Value>) -> Result<Vec<String>, ResultError> {
    let bad = || {
        ResultError(format!(
            "failed to get {what}: expected {name} to be of type '[]string'"
        ))
    };
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

fn query_parameters(v: Option<&Value>) -> Result<Vec<QueryParameter>, ResultError> {
    let what = "failed to get request query parameters to set";
    let Some(v) = v else { return Ok(Vec::new()) };
    let Value::Object(m) = v else {
        return err(format!(
            "{what}: expected query_parameters_to_set to be of type 'object'"
        ));
    };
    let mut out = Vec::new();
    for (key, value) in m {
        let values: Vec<&str> = match value {
            Value::String(s) => vec![s],
            Value::Array(items) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map_or_else(|| err(format!("{what}: invalid value for '{key}'")), Ok)
                })
                .collect::<Result<_, _>>()?,
            _ => return err(format!("{what}: invalid value for '{key}'")),
        };
        out.extend(values.into_iter().map(|v| QueryParameter {
            key: key.clone(),
            value: v.to_owned(),
        }));
    }
    Ok(out)
}

/// A JSON object as a `google.protobuf.Struct` (numbers become doubles).
fn to_struct(m: &Map<String, Value>) -> Struct {
    let fields: HashMap<String, PbValue> =
        m.iter().map(|(k, v)| (k.clone(), to_value(v))).collect();
    Struct { fields }
}

fn to_value(v: &Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(to_value).collect(),
        }),
        Value::Object(m) => Kind::StructValue(to_struct(m)),
    };
    PbValue { kind: Some(kind) }
}
