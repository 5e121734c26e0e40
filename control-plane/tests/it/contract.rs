//! The REST contract: the router serves exactly the operations of `api/openapi.yaml`, and that
//! file keeps the user's seed contract (`api/seed-openapi.yaml`): every seed schema with its
//! field names, and every seed operation at its mapped path, except the ones listed in
//! [`PENDING_SEED_OPERATIONS`] with the issue that will deliver them.
//!
//! Every test collects all the differences it finds and reports them in one assertion message.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_yaml::Value;

/// A seed operation that is not served yet, and the issue that delivers it.
struct Pending {
    method: &'static str,
    /// The path as the seed contract spells it (before mapping, see [`mapped_path`]).
    seed_path: &'static str,
    issue: &'static str,
}

const fn pending(method: &'static str, seed_path: &'static str, issue: &'static str) -> Pending {
    Pending {
        method,
        seed_path,
        issue,
    }
}

/// Seed operations not served yet. An entry must go as soon as its operation is in
/// `api/openapi.yaml`: [`seed_operations_are_served_or_pending`] fails while it is still here.
const PENDING_SEED_OPERATIONS: &[Pending] = &[
    pending("post", "/install/ssh", "[P4]"),
    pending("post", "/config/validate", "[P4]"),
    pending("post", "/config/apply", "[P4]"),
    pending("get", "/logs/tail", "[P4]"),
    pending("get", "/logs/stream", "[P4]"),
    pending("get", "/alerts/rules", "[P4]"),
    pending("post", "/alerts/rules", "[P4]"),
    pending("post", "/support/bundle", "[P4]"),
];

/// Seed paths that stay at the root; every other seed path is node-scoped.
const ROOT_SEED_PATHS: &[&str] = &["/health", "/pair/start", "/pair/confirm"];

/// `GET /health` (liveness): without authentication, so probes can use it.
const HEALTH: (&str, &str) = ("get", "/health");

/// `GET /ready` (readiness): without authentication, so probes can use it, and its 503 carries
/// its own body (`Readiness`), not the envelope.
const READY: (&str, &str) = ("get", "/ready");

/// The probes, [`HEALTH`] and [`READY`]: root paths, explicitly without authentication.
const PROBES: &[(&str, &str)] = &[HEALTH, READY];

/// Besides the [`PROBES`], the only operations without bearer authentication (`security: []`):
/// the sign-in surface, which exists to obtain a token. Every other operation must require one
/// and declare 401.
const UNAUTHENTICATED_OPERATIONS: &[(&str, &str)] = &[
    ("post", "/pair/start"),
    ("post", "/pair/confirm"),
    ("post", "/v1/auth/refresh"),
    ("get", "/v1/auth/providers"),
    ("get", "/v1/auth/oidc/{provider}/login"),
    ("get", "/v1/auth/oidc/{provider}/callback"),
    ("post", "/v1/auth/oidc/{provider}/cli"),
    ("post", "/v1/auth/cli/approve"),
    ("post", "/v1/auth/cli/poll"),
];

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

type Op = (String, String);

fn load(file: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("api")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn ours() -> Value {
    load("openapi.yaml")
}

fn seed() -> Value {
    load("seed-openapi.yaml")
}

/// A mapping key as a string (YAML allows `200:` as well as `"200":`).
fn key(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn entries(v: &Value) -> Vec<(String, &Value)> {
    v.as_mapping()
        .map(|m| m.iter().map(|(k, v)| (key(k), v)).collect())
        .unwrap_or_default()
}

/// A schema value for a message: strings bare, anything else as flow YAML.
fn text(v: Option<&Value>) -> String {
    match v {
        None => "absent".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// Every `(method, path)` of a document with its operation object.
fn operations(doc: &Value) -> BTreeMap<Op, &Value> {
    let mut ops = BTreeMap::new();
    for (path, item) in entries(&doc["paths"]) {
        for (method, op) in entries(item) {
            if HTTP_METHODS.contains(&method.as_str()) {
                ops.insert((method, path.clone()), op);
            }
        }
    }
    ops
}

/// Follows local `$ref`s (`#/components/…`) until a non-reference.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    for _ in 0..16 {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else {
            return v;
        };
        let pointer = r
            .strip_prefix("#/")
            .unwrap_or_else(|| panic!("only local references are supported, found {r}"));
        v = pointer.split('/').fold(doc, |node, part| &node[part]);
        assert!(!v.is_null(), "dangling reference {r}");
    }
    panic!("reference cycle");
}

/// Where a seed path is served: root paths stay, the rest are scoped to a node.
fn mapped_path(seed_path: &str) -> String {
    if ROOT_SEED_PATHS.contains(&seed_path) {
        seed_path.to_owned()
    } else {
        format!("/v1/nodes/{{node_id}}{seed_path}")
    }
}

fn show(ops: &BTreeSet<Op>) -> String {
    ops.iter()
        .map(|(m, p)| format!("\n  {} {p}", m.to_uppercase()))
        .collect()
}

#[track_caller]
fn report(what: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

#[test]
fn routed_operations_match_the_spec() {
    let routed_list: Vec<Op> = moltops_server::http::operations()
        .into_iter()
        .map(|op| (op.method, op.path.to_owned()))
        .collect();
    let routed: BTreeSet<Op> = routed_list.iter().cloned().collect();
    assert_eq!(
        routed.len(),
        routed_list.len(),
        "the route table registers an operation twice: {routed_list:?}"
    );
    assert!(!routed.is_empty(), "the route table is empty");
    let spec: BTreeSet<Op> = operations(&ours()).into_keys().collect();

    let not_in_spec: BTreeSet<Op> = routed.difference(&spec).cloned().collect();
    let not_routed: BTreeSet<Op> = spec.difference(&routed).cloned().collect();
    assert!(
        not_in_spec.is_empty() && not_routed.is_empty(),
        "router and api/openapi.yaml disagree.\nRouted but not in the spec:{}\nIn the spec but not routed:{}",
        show(&not_in_spec),
        show(&not_routed)
    );
}

/// Checks that `ours` keeps everything of `seed` that is on the wire: property names (at any
/// depth), required names, types, enum values, nullability and schema references.
fn compare_schema(at: &str, seed: &Value, ours: &Value, problems: &mut Vec<String>) {
    if let Some(r) = seed.get("$ref") {
        if ours.get("$ref") != Some(r) {
            problems.push(format!(
                "{at}: the seed refers to {}, ours to {}",
                text(Some(r)),
                text(ours.get("$ref"))
            ));
        }
        return;
    }
    for attribute in ["type", "format"] {
        if let Some(want) = seed.get(attribute)
            && ours.get(attribute) != Some(want)
        {
            problems.push(format!(
                "{at}: {attribute} is {} in the seed, {} in ours",
                text(Some(want)),
                text(ours.get(attribute))
            ));
        }
    }
    if seed.get("nullable") == Some(&Value::Bool(true))
        && ours.get("nullable") != Some(&Value::Bool(true))
    {
        problems.push(format!("{at}: nullable in the seed, not in ours"));
    }
    if let Some(values) = seed.get("enum").and_then(Value::as_sequence) {
        let ours_values = ours
            .get("enum")
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        for v in values {
            if !ours_values.contains(v) {
                problems.push(format!(
                    "{at}: enum value {} of the seed is missing",
                    text(Some(v))
                ));
            }
        }
    }
    for name in seed
        .get("required")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let required_by_ours = ours
            .get("required")
            .and_then(Value::as_sequence)
            .is_some_and(|r| r.contains(name));
        if !required_by_ours {
            problems.push(format!(
                "{at}: {} is required by the seed, not by ours",
                text(Some(name))
            ));
        }
    }
    for (name, seed_property) in entries(&seed["properties"]) {
        match ours.get("properties").and_then(|p| p.get(name.as_str())) {
            None => problems.push(format!("{at}: property {name:?} is missing")),
            Some(our_property) => {
                compare_schema(
                    &format!("{at}.{name}"),
                    seed_property,
                    our_property,
                    problems,
                );
            }
        }
    }
    if let Some(seed_items) = seed.get("items") {
        match ours.get("items") {
            None => problems.push(format!("{at}: the seed has items, ours not")),
            Some(our_items) => {
                compare_schema(&format!("{at}[]"), seed_items, our_items, problems);
            }
        }
    }
}

#[test]
fn seed_schemas_are_kept() {
    let seed = seed();
    let ours = ours();
    let seed_schemas = entries(&seed["components"]["schemas"]);
    assert!(!seed_schemas.is_empty(), "the seed contract has no schemas");
    let mut problems = Vec::new();
    for (name, seed_schema) in seed_schemas {
        let our_schema = &ours["components"]["schemas"][name.as_str()];
        if our_schema.is_null() {
            problems.push(format!("components/schemas/{name} is missing"));
        } else {
            compare_schema(&name, seed_schema, our_schema, &mut problems);
        }
    }
    report(
        "api/openapi.yaml does not keep the seed contract's schemas",
        &problems,
    );
}

/// The schema reference of an operation's `application/json` request or response content.
fn json_schema_ref(doc: &Value, holder: &Value) -> Option<String> {
    resolve(doc, holder)["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .map(str::to_owned)
}

/// The schema a response names, or each alternative of its `oneOf` (an addition next to the
/// seed's shape, e.g. a browser's cookie session beside the seed's tokens).
fn json_schema_refs(doc: &Value, holder: &Value) -> Vec<String> {
    let schema = &resolve(doc, holder)["content"]["application/json"]["schema"];
    match schema["$ref"].as_str() {
        Some(r) => vec![r.to_owned()],
        None => schema["oneOf"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|s| s["$ref"].as_str().map(str::to_owned))
            .collect(),
    }
}

#[test]
fn seed_operations_are_served_or_pending() {
    let seed_doc = seed();
    let ours_doc = ours();
    let seed_ops = operations(&seed_doc);
    let our_ops = operations(&ours_doc);
    let mut problems = Vec::new();

    for pending in PENDING_SEED_OPERATIONS {
        let op = (pending.method.to_owned(), pending.seed_path.to_owned());
        if !seed_ops.contains_key(&op) {
            problems.push(format!(
                "PENDING_SEED_OPERATIONS lists {} {}, which is not a seed operation",
                pending.method.to_uppercase(),
                pending.seed_path
            ));
        }
        let issue_ok = pending
            .issue
            .strip_prefix("[P")
            .and_then(|s| s.strip_suffix(']'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !issue_ok {
            problems.push(format!(
                "PENDING_SEED_OPERATIONS: {} {} names no issue ([P<n>]): {:?}",
                pending.method.to_uppercase(),
                pending.seed_path,
                pending.issue
            ));
        }
    }

    for ((method, seed_path), seed_op) in &seed_ops {
        let pending = PENDING_SEED_OPERATIONS
            .iter()
            .filter(|p| p.method == method && p.seed_path == seed_path)
            .count();
        if pending > 1 {
            problems.push(format!(
                "PENDING_SEED_OPERATIONS lists {} {seed_path} {pending} times",
                method.to_uppercase()
            ));
        }
        let mapped = mapped_path(seed_path);
        let ours_op = our_ops.get(&(method.clone(), mapped.clone()));
        match (ours_op, pending > 0) {
            (Some(_), true) => problems.push(format!(
                "{} {seed_path} is served as {} {mapped} but still listed in PENDING_SEED_OPERATIONS; remove it",
                method.to_uppercase(),
                method.to_uppercase()
            )),
            (None, false) => problems.push(format!(
                "seed operation {} {seed_path} is neither in api/openapi.yaml as {} {mapped} nor in PENDING_SEED_OPERATIONS",
                method.to_uppercase(),
                method.to_uppercase()
            )),
            (None, true) => {}
            (Some(ours_op), false) => {
                // Served: the request and response bodies must keep the seed's schemas.
                let at = format!("{} {mapped}", method.to_uppercase());
                if let Some(want) = seed_op
                    .get("requestBody")
                    .and_then(|b| json_schema_ref(&seed_doc, b))
                {
                    let have = ours_op
                        .get("requestBody")
                        .and_then(|b| json_schema_ref(&ours_doc, b));
                    if have.as_deref() != Some(want.as_str()) {
                        problems.push(format!(
                            "{at}: request body is {want} in the seed, {} in ours",
                            have.as_deref().unwrap_or("absent")
                        ));
                    }
                }
                for (status, seed_response) in entries(&seed_op["responses"]) {
                    let Some(want) = json_schema_ref(&seed_doc, seed_response) else {
                        continue;
                    };
                    let have = ours_op["responses"]
                        .get(status.as_str())
                        .map(|r| json_schema_refs(&ours_doc, r))
                        .unwrap_or_default();
                    if !have.contains(&want) {
                        problems.push(format!(
                            "{at}: response {status} is {want} in the seed, {} in ours",
                            if have.is_empty() {
                                "absent".to_owned()
                            } else {
                                have.join(" | ")
                            }
                        ));
                    }
                }
            }
        }
    }
    report(
        "seed operations are neither served nor honestly pending",
        &problems,
    );
}

#[test]
fn every_operation_has_an_operation_id_and_the_right_authentication() {
    let doc = ours();
    let ops = operations(&doc);
    assert!(!ops.is_empty(), "api/openapi.yaml has no operations");
    let global_security = doc.get("security");
    let global_is_bearer = global_security
        .and_then(Value::as_sequence)
        .is_some_and(|s| !s.is_empty());
    assert!(
        global_is_bearer,
        "api/openapi.yaml has no global security requirement (bearer authentication)"
    );
    let mut ids = BTreeSet::new();
    let mut problems = Vec::new();
    for &(method, path) in PROBES.iter().chain(UNAUTHENTICATED_OPERATIONS) {
        if !ops.contains_key(&(method.to_owned(), path.to_owned())) {
            problems.push(format!(
                "{} {path} is listed as unauthenticated but is not in api/openapi.yaml",
                method.to_uppercase()
            ));
        }
    }
    for ((method, path), op) in &ops {
        let at = format!("{} {path}", method.to_uppercase());
        match op.get("operationId").and_then(Value::as_str) {
            None => problems.push(format!("{at}: no operationId")),
            Some(id) => {
                let camel = id.starts_with(|c: char| c.is_ascii_lowercase())
                    && id.chars().all(|c| c.is_ascii_alphanumeric());
                if !camel {
                    problems.push(format!("{at}: operationId {id:?} is not camelCase"));
                }
                if !ids.insert(id.to_owned()) {
                    problems.push(format!("{at}: operationId {id:?} is used twice"));
                }
            }
        }
        let this = (method.as_str(), path.as_str());
        if PROBES.contains(&this) || UNAUTHENTICATED_OPERATIONS.contains(&this) {
            // Explicitly `security: []` on the operation, not merely inherited.
            let explicit_none = op
                .get("security")
                .and_then(Value::as_sequence)
                .is_some_and(Vec::is_empty);
            if !explicit_none {
                problems.push(format!("{at}: must be unauthenticated (security: [])"));
            }
            continue;
        }
        let security = op
            .get("security")
            .or(global_security)
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        if security.is_empty() {
            problems.push(format!(
                "{at}: requires no authentication but is not in UNAUTHENTICATED_OPERATIONS"
            ));
        }
        if op["responses"].get("401").is_none() {
            problems.push(format!("{at}: declares no 401 response"));
        }
    }
    report(
        "operations lack an operationId, or their authentication is wrong",
        &problems,
    );
}

#[test]
fn error_responses_use_the_error_envelope() {
    let doc = ours();
    let mut problems = Vec::new();
    for ((method, path), op) in operations(&doc) {
        for (status, response) in entries(&op["responses"]) {
            if !(status.starts_with('4') || status.starts_with('5')) {
                continue;
            }
            // `/ready` answers 503 with its own body (status `draining` or `unavailable`), which
            // must be `Readiness`; nothing else is excused from the envelope.
            if (method.as_str(), path.as_str()) == READY && status == "503" {
                let schema = json_schema_ref(&doc, response);
                if schema.as_deref() != Some("#/components/schemas/Readiness") {
                    problems.push(format!(
                        "GET /ready: response 503 is {}, not Readiness",
                        schema.as_deref().unwrap_or("without a schema reference")
                    ));
                }
                continue;
            }
            let schema = json_schema_ref(&doc, response);
            if schema.as_deref() != Some("#/components/schemas/Error") {
                problems.push(format!(
                    "{} {path}: response {status} is {}, not the Error envelope",
                    method.to_uppercase(),
                    schema
                        .as_deref()
                        .unwrap_or("without an application/json schema reference")
                ));
            }
            // The server sends `Retry-After` with every 429; clients need to know to wait.
            if status == "429"
                && resolve(&doc, response)["headers"]
                    .get("Retry-After")
                    .is_none()
            {
                problems.push(format!(
                    "{} {path}: response 429 declares no Retry-After header",
                    method.to_uppercase()
                ));
            }
        }
    }
    report(
        "error responses without the {code, message} envelope (or 429 without Retry-After)",
        &problems,
    );
}
