"""Checks the moltops Helm chart and the image it runs, offline (scripts/check-helm runs this).

1. `helm lint --strict` (Helm's Go SDK through helm-python-sdk) with every ci/*.yaml.
2. The chart's defaults alone are refused, and the refusal names every required setting.
3. Every ci/*.yaml renders; each manifest validates strictly (unknown fields are errors) against
   the Kubernetes OpenAPI schemas of the oldest supported and the newest known Kubernetes.
4. Invariants of every render: hardened pods, secrets only by reference, a grace period that
   covers preStop + drain, probes on /health and /ready with the server's scheme, gRPC never
   behind an Ingress, a moltops.toml whose keys the server's config structs accept, ...
5. deploy/Dockerfile agrees with the chart and the workspace (versions, binary and web paths,
   ports, user).
6. Every ci/bad/*.yaml (layered over ci/default.yaml, like `helm -f default.yaml -f bad.yaml`) is
   refused, with a message containing the text its first line names (`# expect: …`).

Prints each check; exits 1 listing every failure.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate.utils as kv
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/helm/moltops"
CI = ROOT / "deploy/helm/ci"
DOCKERFILE = ROOT / "deploy/Dockerfile"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion: lifecycle.preStop.sleep) and
# the newest whose schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.30.0", kv.latest_version()]
RELEASE = "moltops"
NAMESPACE = "moltops-ci"
UID = 65532
HTTP_PORT, GRPC_PORT = 7337, 7338
SECRET_ENV = re.compile(r"^MOLTOPS_(DATABASE_URL|MASTER_KEY|OIDC_.+_CLIENT_SECRET|AUDIT_WEBHOOK_SECRET)$")

failures: list[str] = []
checks = 0


def check(ok: bool, what: str) -> bool:
    """Records one assertion; a failure is kept and reported at the end, not raised."""
    global checks
    checks += 1
    if not ok:
        failures.append(what)
        print(f"  FAIL {what}")
    return ok


def section(title: str) -> None:
    print(f"\n== {title}")


# --- Facts from the workspace --------------------------------------------------------------


def workspace_package() -> dict[str, str]:
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    return cargo["workspace"]["package"]


def server_crate() -> tuple[str, list[str]]:
    cargo = tomllib.loads((ROOT / "control-plane/Cargo.toml").read_text())
    return cargo["package"]["name"], [b["name"] for b in cargo.get("bin", [])]


def rust_struct_fields(path: str, struct: str) -> set[str]:
    """The field names of `pub struct <struct> { … }` in a Rust file: what serde accepts (every
    config struct is `deny_unknown_fields`, none renames fields)."""
    source = (ROOT / path).read_text()
    match = re.search(r"pub struct " + struct + r" \{(.*?)\n\}", source, re.S)
    if not match:
        raise SystemExit(f"validate.py: struct {struct} not found in {path}")
    return set(re.findall(r"^\s*pub (\w+):", match.group(1), re.M))


# --- Rendering -----------------------------------------------------------------------------


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's layering of -f files: maps merge, everything else is replaced (null included, which
    Helm then takes as "delete the default")."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def render(chart: helm.Chart, values: dict[str, Any]) -> dict[str, str]:
    return chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)


class StrictLoader(yaml.SafeLoader):
    """Refuses a mapping with a repeated key, which PyYAML would silently collapse and a cluster
    may refuse or read differently."""


def _no_duplicates(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
    if repeated:
        raise yaml.constructor.ConstructorError(None, None, f"repeated keys {repeated}", node.start_mark)
    return loader.construct_mapping(node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def manifests(rendered: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        try:
            loaded = list(yaml.load_all(text, Loader=StrictLoader))
        except yaml.YAMLError as e:
            check(False, f"{template} is YAML without repeated keys: {e}")
            continue
        for doc in loaded:
            if doc:
                docs.append((template, doc))
    return docs


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    found = [d for d in docs if d["kind"] == kind]
    return found[0] if len(found) == 1 else None


# --- Invariants of one render ------------------------------------------------------------


def check_render(name: str, values: dict[str, Any], docs: list[dict[str, Any]], notes: str) -> None:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    check("Secret" not in by_kind, f"{name}: the chart renders no Secret (secrets are referenced, never created)")
    for d in docs:
        labels = d["metadata"].get("labels", {})
        for label in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                      "app.kubernetes.io/managed-by", "helm.sh/chart"):
            check(label in labels, f"{name}: {d['kind']}/{d['metadata']['name']} has label {label}")
        check(d["metadata"].get("namespace") == NAMESPACE,
              f"{name}: {d['kind']}/{d['metadata']['name']} is in the release namespace")

    deployment = one(docs, "Deployment")
    if not check(deployment is not None, f"{name}: exactly one Deployment"):
        return
    pod = deployment["spec"]["template"]["spec"]
    containers = pod["containers"] + pod.get("initContainers", [])
    check_security(name, pod, containers)
    server = next((c for c in pod["containers"] if c["name"] == "moltops-server"), None)
    if not check(server is not None, f"{name}: a container named moltops-server"):
        return

    strategy = deployment["spec"].get("strategy", {})
    check(strategy.get("type") == "RollingUpdate"
          and strategy.get("rollingUpdate") == {"maxUnavailable": 0, "maxSurge": 1},
          f"{name}: RollingUpdate with maxUnavailable 0 and maxSurge 1")

    env = {e["name"]: e for e in server.get("env", [])}
    check_secrets_by_reference(name, env, docs)

    # Graceful shutdown: Kubernetes must not kill a replica before preStop + drain are over.
    pre_stop = server.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
    drain = env.get("MOLTOPS_DRAIN_SECONDS", {}).get("value")
    grace = pod.get("terminationGracePeriodSeconds")
    if check(isinstance(pre_stop, int) and drain is not None and isinstance(grace, int),
             f"{name}: preStop sleep, MOLTOPS_DRAIN_SECONDS and terminationGracePeriodSeconds are all set"):
        check(str(drain) == str(values["server"]["drainSeconds"]), f"{name}: MOLTOPS_DRAIN_SECONDS follows server.drainSeconds")
        check(grace >= pre_stop + int(drain),
              f"{name}: terminationGracePeriodSeconds {grace} ≥ preStop {pre_stop} + drain {drain}")

    # The configuration file, checked against what the server's config structs accept.
    config_map = one(docs, "ConfigMap")
    if not check(config_map is not None and "moltops.toml" in config_map["data"], f"{name}: a ConfigMap with moltops.toml"):
        return
    try:
        toml = tomllib.loads(config_map["data"]["moltops.toml"])
    except tomllib.TOMLDecodeError as e:
        check(False, f"{name}: moltops.toml is valid TOML ({e})")
        return
    check_config(name, toml, env, server, pod)

    ports = {p["name"]: p["containerPort"] for p in server.get("ports", [])}
    check(sorted(ports.values()) == [HTTP_PORT, GRPC_PORT], f"{name}: container ports are {HTTP_PORT} and {GRPC_PORT}")
    scheme = "HTTPS" if "http_tls_cert" in toml else "HTTP"
    for probe, path in (("startupProbe", "/health"), ("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        get = server.get(probe, {}).get("httpGet", {})
        port = ports.get(get.get("port"), get.get("port"))
        check(get.get("path") == path and port == HTTP_PORT and get.get("scheme") == scheme,
              f"{name}: {probe} is GET {path} on {HTTP_PORT} over {scheme} (got {get})")
    startup = server.get("startupProbe", {})
    check(startup.get("periodSeconds", 0) * startup.get("failureThreshold", 0) >= 120,
          f"{name}: the startup probe allows at least two minutes (first-start migrations)")

    check_services(name, docs, ports, by_kind)
    check_scaling(name, values, deployment, by_kind)
    check_network_policy(name, by_kind, values)
    check(values["server"]["grpc"]["advertise"] in notes and "Setup code" in notes,
          f"{name}: NOTES name the agents' address and how to find the setup code")


def check_security(name: str, pod: dict[str, Any], containers: list[dict[str, Any]]) -> None:
    check(pod.get("automountServiceAccountToken") is False, f"{name}: no service account token in the pod")
    pod_sc = pod.get("securityContext", {})
    check(pod_sc.get("runAsNonRoot") is True and pod_sc.get("runAsUser") == UID,
          f"{name}: pod securityContext runs as non-root {UID}")
    for c in containers:
        sc = c.get("securityContext", {})
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        what = f"{name}: container {c['name']}"
        check(sc.get("runAsNonRoot") is True, f"{what} runAsNonRoot")
        check(sc.get("runAsUser", pod_sc.get("runAsUser")) == UID, f"{what} runAsUser {UID}")
        check(sc.get("readOnlyRootFilesystem") is True, f"{what} readOnlyRootFilesystem")
        check(sc.get("allowPrivilegeEscalation") is False, f"{what} allowPrivilegeEscalation false")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc.get("capabilities", {}).get("add"),
              f"{what} drops ALL capabilities and adds none")
        check(seccomp.get("type") == "RuntimeDefault", f"{what} seccompProfile RuntimeDefault")
        check(sc.get("privileged") in (None, False), f"{what} is not privileged")
        check("resources" in c and "limits" in c["resources"] and "requests" in c["resources"],
              f"{what} has resource requests and limits")


def check_secrets_by_reference(name: str, env: dict[str, dict[str, Any]], docs: list[dict[str, Any]]) -> None:
    for required in ("MOLTOPS_DATABASE_URL", "MOLTOPS_MASTER_KEY"):
        check(required in env, f"{name}: {required} is set")
    for var, entry in env.items():
        if SECRET_ENV.match(var):
            check("value" not in entry and "secretKeyRef" in entry.get("valueFrom", {}),
                  f"{name}: {var} comes from a Secret (secretKeyRef), never a literal value")
    # Nothing that looks like a secret in any rendered object (ConfigMap included).
    for d in docs:
        text = yaml.safe_dump(d)
        for pattern in (r"postgres(ql)?://", r"client_secret\s*=", r"-----BEGIN"):
            check(not re.search(pattern, text),
                  f"{name}: {d['kind']}/{d['metadata']['name']} contains no secret material ({pattern})")


def check_config(name: str, toml: dict[str, Any], env: dict[str, Any], server: dict[str, Any], pod: dict[str, Any]) -> None:
    accepted = rust_struct_fields("control-plane/src/config.rs", "FileConfig")
    check(set(toml) <= accepted, f"{name}: moltops.toml keys {sorted(set(toml) - accepted)} are all FileConfig fields")
    check("database_url" not in toml, f"{name}: moltops.toml carries no database_url (it is a secret)")
    provider_fields = rust_struct_fields("control-plane/src/oidc.rs", "ProviderConfig")
    rule_fields = rust_struct_fields("control-plane/src/oidc.rs", "RoleRule")
    for provider in toml.get("oidc", []):
        check(set(provider) <= provider_fields,
              f"{name}: [[oidc]] {provider.get('name')} keys {sorted(set(provider) - provider_fields)} are ProviderConfig fields")
        for rule in provider.get("roles", []):
            check(set(rule) <= rule_fields, f"{name}: oidc role rule keys are RoleRule fields")
    forward_fields = rust_struct_fields("control-plane/src/audit_forward.rs", "ForwardConfig")
    check(set(toml.get("audit_forward", {})) <= forward_fields, f"{name}: [audit_forward] keys are ForwardConfig fields")
    # Each OIDC client secret reaches the server under the name oidc.rs reads.
    expected = {f"MOLTOPS_OIDC_{p['name'].upper().replace('-', '_')}_CLIENT_SECRET" for p in toml.get("oidc", [])}
    present = {v for v in env if v.startswith("MOLTOPS_OIDC_")}
    check(present <= expected, f"{name}: OIDC secret variables {sorted(present - expected)} match configured providers")
    oidc_source = (ROOT / "control-plane/src/oidc.rs").read_text()
    check('"MOLTOPS_OIDC_{}_CLIENT_SECRET"' in oidc_source, f"{name}: oidc.rs still reads MOLTOPS_OIDC_<NAME>_CLIENT_SECRET")
    # The listeners the config binds are the container's ports, on all interfaces.
    for key, port in (("http_addr", HTTP_PORT), ("grpc_addr", GRPC_PORT)):
        check(toml.get(key, "").endswith(f":{port}") and not toml.get(key, "").startswith("127."),
              f"{name}: {key} = {toml.get(key)!r} listens on all interfaces at {port}")
    check(bool(toml.get("grpc_server_names")), f"{name}: grpc_server_names is not empty")
    check(toml.get("public_url", "https://").startswith("https://"), f"{name}: public_url is https://")
    # The TLS files the config names are mounted from a Secret.
    mounts = {m["mountPath"]: m["name"] for m in server.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for key in ("http_tls_cert", "http_tls_key"):
        if key in toml:
            directory = os.path.dirname(toml[key])
            volume = volumes.get(mounts.get(directory, ""), {})
            check("secret" in volume and os.path.basename(toml[key]) in
                  {i["path"] for i in volume["secret"].get("items", [])},
                  f"{name}: {key} {toml[key]} is a file of a mounted Secret")
    config_path = env.get("MOLTOPS_CONFIG", {}).get("value")
    check(config_path in mounts and volumes.get(mounts[config_path], {}).get("configMap") is not None,
          f"{name}: MOLTOPS_CONFIG points at the mounted moltops.toml")
    check(any(m == "/tmp" for m in mounts), f"{name}: /tmp is writable (emptyDir) under the read-only root")


def check_services(name: str, docs: list[dict[str, Any]], ports: dict[str, int], by_kind: dict[str, list]) -> None:
    services = by_kind.get("Service", [])

    def targets(service: dict[str, Any]) -> set[int]:
        return {ports.get(p["targetPort"], p["targetPort"]) for p in service["spec"]["ports"]}

    http = [s for s in services if targets(s) == {HTTP_PORT}]
    grpc = [s for s in services if targets(s) == {GRPC_PORT}]
    check(len(http) == 1 and len(grpc) == 1 and len(services) == 2,
          f"{name}: one Service for {HTTP_PORT} and a separate one for {GRPC_PORT}")
    for ingress in by_kind.get("Ingress", []):
        backends = [p["backend"]["service"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
        for backend in backends:
            check(backend["name"] in {s["metadata"]["name"] for s in http},
                  f"{name}: Ingress routes only to the REST Service (got {backend['name']})")
            check(backend["port"].get("number") != GRPC_PORT and backend["port"].get("name") != "grpc",
                  f"{name}: no Ingress backend is the gRPC port")
    for s in grpc:
        check(s["metadata"]["name"] not in yaml.safe_dump(by_kind.get("Ingress", [])),
              f"{name}: the gRPC Service appears in no Ingress")


def check_scaling(name: str, values: dict[str, Any], deployment: dict[str, Any], by_kind: dict[str, list]) -> None:
    hpa = by_kind.get("HorizontalPodAutoscaler", [])
    pdb = by_kind.get("PodDisruptionBudget", [])
    if values["autoscaling"]["enabled"]:
        check(len(hpa) == 1 and "replicas" not in deployment["spec"],
              f"{name}: with the HPA, the Deployment leaves replicas to it")
        floor = values["autoscaling"]["minReplicas"]
    else:
        check(not hpa and deployment["spec"].get("replicas") == values["replicaCount"],
              f"{name}: without the HPA, replicas = replicaCount")
        floor = values["replicaCount"]
    if values["podDisruptionBudget"]["enabled"] and floor >= 2:
        check(len(pdb) == 1 and pdb[0]["spec"]["minAvailable"] < floor,
              f"{name}: a PDB whose minAvailable is below the {floor} replicas")
    else:
        check(not pdb, f"{name}: no PDB for a single replica")


def check_network_policy(name: str, by_kind: dict[str, list], values: dict[str, Any]) -> None:
    policies = by_kind.get("NetworkPolicy", [])
    if not values["networkPolicy"]["enabled"]:
        check(not policies, f"{name}: no NetworkPolicy when disabled")
        return
    if not check(len(policies) == 1, f"{name}: one NetworkPolicy"):
        return
    spec = policies[0]["spec"]
    ingress_ports = {p["port"] for rule in spec["ingress"] for p in rule.get("ports", [])}
    check(ingress_ports == {"https", "grpc"}, f"{name}: NetworkPolicy admits exactly the two server ports")
    egress_ports = {p["port"] for rule in spec["egress"] for p in rule.get("ports", [])}
    check(53 in egress_ports, f"{name}: NetworkPolicy allows DNS")
    for port in values["networkPolicy"]["egress"]["postgres"]["ports"]:
        check(port in egress_ports, f"{name}: NetworkPolicy allows Postgres on {port}")


# --- Kubernetes schemas ------------------------------------------------------------------


def validate_kubernetes(name: str, docs: list[tuple[str, dict[str, Any]]]) -> None:
    for version in KUBE_VERSIONS:
        for template, doc in docs:
            what = f"{name}: {doc['kind']}/{doc['metadata']['name']} ({template}) against Kubernetes {version} --strict"
            try:
                kv.validate(doc, version, strict=True)
                check(True, what)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                check(False, f"{what}: {path}: {e.message}")
            except kv.SchemaNotFoundError as e:
                check(False, f"{what}: no schema ({e.message})")


# --- The Dockerfile ------------------------------------------------------------------------


def check_dockerfile(chart: helm.Chart, default_docs: list[dict[str, Any]], ci_values: dict[str, dict[str, Any]]) -> None:
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in re.sub(r"\\\n\s*", " ", text).splitlines()
             if line.strip() and not line.strip().startswith("#")]
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", "\n".join(lines), re.M))
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")):]

    def instruction(name: str, stage: list[str]) -> list[str]:
        return [line[len(name) + 1:] for line in stage if line.startswith(name + " ")]

    workspace = workspace_package()
    package, bins = server_crate()
    app_version = chart.metadata["appVersion"]
    check(app_version == workspace["version"], f"Chart appVersion {app_version} = workspace version {workspace['version']}")
    check(args.get("MOLTOPS_VERSION") == workspace["version"],
          f"Dockerfile MOLTOPS_VERSION {args.get('MOLTOPS_VERSION')} = workspace version {workspace['version']}")
    check(args.get("RUST_VERSION") == workspace["rust-version"],
          f"Dockerfile RUST_VERSION {args.get('RUST_VERSION')} = workspace rust-version {workspace['rust-version']}")
    engines = re.search(r">=\s*(\d+)", str(load_json(ROOT / "web-admin/package.json").get("engines", {}).get("node", "")))
    check(engines is not None and int(args.get("NODE_VERSION", "0")) >= int(engines.group(1)),
          f"Dockerfile NODE_VERSION {args.get('NODE_VERSION')} satisfies web-admin engines.node")
    check("distroless/cc" in froms[-1] and froms[-1].endswith(":nonroot"),
          f"the runtime image is distroless cc, nonroot (got {froms[-1]})")
    build = re.search(r"cargo build --release --locked -p (\S+) --bin (\S+)", text)
    check(build is not None and build.group(1) == package and build.group(2) in bins,
          f"Dockerfile builds package {package}, binary {bins}")
    entrypoint = instruction("ENTRYPOINT", final)
    binary = f"/usr/local/bin/{build.group(2) if build else '?'}"
    check(entrypoint == [f'["{binary}"]'], f"ENTRYPOINT is {binary} (got {entrypoint})")
    check(any(c.endswith(f" {binary}") for c in instruction("COPY", final)), f"the binary is copied to {binary}")
    check(instruction("CMD", final) == ['["serve"]'], "CMD is serve")
    # The server finds the web admin at <binary dir>/../share/moltops/web when none is configured.
    web = os.path.normpath(os.path.join(os.path.dirname(binary), "../share/moltops/web"))
    check('"../share/moltops/web"' in (ROOT / "control-plane/src/config.rs").read_text(),
          "config.rs still looks for the web admin at <bin>/../share/moltops/web")
    check(any(c.rstrip("/").endswith(" " + web) and "web-admin/dist" in c for c in instruction("COPY", final)),
          f"the built web admin is copied to {web}")
    users = instruction("USER", final)
    check(users == [f"{UID}:{UID}"], f"USER is {UID}:{UID} (got {users})")
    exposed = sorted(int(p) for e in instruction("EXPOSE", final) for p in e.split())
    deployment = next(d for d in default_docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    check(exposed == sorted(p["containerPort"] for p in server["ports"]), f"EXPOSE {exposed} = the chart's container ports")
    check(pod["securityContext"]["runAsUser"] == UID and pod["securityContext"].get("runAsGroup") == UID,
          "the chart runs as the image's USER")
    check("command" not in server and server.get("args") == ["serve"],
          "the chart keeps the image's ENTRYPOINT and passes `serve`")
    title = re.search(r'org\.opencontainers\.image\.title="([^"]+)"', text)
    check(title is not None, "the image has a title label")
    check(server["image"] == f"{ci_values['default']['image']['repository']}:{app_version}",
          f"without image.tag the chart runs the appVersion tag (got {server['image']})")
    for name, values in ci_values.items():
        repository = values["image"]["repository"]
        check(title is not None and repository.rsplit("/", 1)[-1] == title.group(1),
              f"ci/{name}.yaml: image.repository {repository} is the image the Dockerfile builds")


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# --- Main ---------------------------------------------------------------------------------


def main() -> int:
    started = time.monotonic()
    print(f"Helm SDK {helm.helm_sdk_version()}, kubernetes-validate schemas for {', '.join(KUBE_VERSIONS)}")
    ci_files = sorted(CI.glob("*.yaml"))
    bad_files = sorted((CI / "bad").glob("*.yaml"))
    if not ci_files or not bad_files:
        print("no ci/*.yaml or ci/bad/*.yaml files", file=sys.stderr)
        return 1
    default_overrides = load_values(CI / "default.yaml")
    with helm.Chart.load(CHART) as chart:
        section("helm lint --strict")
        for path in ci_files:
            report = helm.lint(CHART, values=load_values(path), strict=True, kube_version="v" + KUBE_VERSIONS[0])
            problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
            check(not problems, f"lint with ci/{path.name}: {problems}")
            print(f"  ok   lint with ci/{path.name}")

        section("the defaults alone are refused, naming each required setting")
        try:
            render(chart, {})
            check(False, "rendering with no values fails")
        except helm.HelmError as e:
            for setting in ("/server/database/existingSecret", "/server/masterKey/existingSecret",
                            "/server/httpTls/existingSecret", "/server/grpc/advertise"):
                check(setting in str(e), f"the refusal names {setting}")
            named = dict.fromkeys(re.findall(r"at '([^']+)'", str(e)))
            print("  ok   refused, naming " + ", ".join(named))

        section("render, Kubernetes schemas, invariants")
        ci_values: dict[str, dict[str, Any]] = {}
        default_docs: list[dict[str, Any]] = []
        for path in ci_files:
            name = path.stem
            overrides = load_values(path)
            values = chart.merge_values(overrides)
            ci_values[name] = values
            before = len(failures)
            try:
                rendered = render(chart, overrides)
            except helm.HelmError as e:
                check(False, f"ci/{path.name} renders: {e}")
                continue
            docs = manifests(rendered)
            if name == "default":
                default_docs = [d for _, d in docs]
            validate_kubernetes(name, docs)
            notes = next((t for k, t in rendered.items() if k.endswith("NOTES.txt")), "")
            check_render(name, values, [d for _, d in docs], notes)
            kinds = sorted({d["kind"] for _, d in docs})
            status = "ok  " if len(failures) == before else "FAIL"
            print(f"  {status} ci/{path.name}: {len(docs)} objects ({', '.join(kinds)})")

        section("deploy/Dockerfile agrees with the chart and the workspace")
        before = len(failures)
        if check(bool(default_docs), "ci/default.yaml rendered"):
            check_dockerfile(chart, default_docs, ci_values)
        print(f"  {'ok  ' if len(failures) == before else 'FAIL'} Dockerfile")

        section("bad values are refused for the expected reason")
        for path in bad_files:
            first = path.read_text().splitlines()[0]
            expected = re.match(r"^# expect: (.+)$", first)
            if not check(expected is not None, f"ci/bad/{path.name}: line 1 is '# expect: <text of the error>'"):
                continue
            want = expected.group(1).strip()
            try:
                render(chart, merge(default_overrides, load_values(path)))
                check(False, f"ci/bad/{path.name} is refused (it rendered)")
            except helm.HelmError as e:
                message = " ".join(str(e).split())
                if check(want in message, f"ci/bad/{path.name}: the error contains {want!r} (got: {message})"):
                    print(f"  ok   ci/bad/{path.name}: {want}")

    elapsed = time.monotonic() - started
    print(f"\n{checks} checks, {len(failures)} failed, {elapsed:.1f} s")
    if failures:
        print("\nFAILED:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
