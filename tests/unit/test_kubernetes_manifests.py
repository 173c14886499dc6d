"""The Kubernetes manifests (deploy/kubernetes), checked offline: no cluster runs here.

The kustomization is rendered here as `kubectl apply -k` renders it, for the fields it uses:
its resources loaded, the namespace set on namespaced objects, its labels added, its
`images:` rewritten. The renderer refuses every field, kind or form it does not implement, so
it cannot quietly drift from kustomize; where kubectl is installed, its own kustomize renders
the same objects (kubectl kustomize works offline). Each rendered object is then validated against
Kubernetes' own schemas for a pinned version (the kubernetes-validate package, strict: an
unknown field fails), and cross-checked for what a schema cannot see: selectors that select
nothing, probes on a port nobody listens on, a Secret nobody creates, a privilege nobody
explained.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
SECRETS_EXAMPLE = DEPLOY / "secrets.example.yaml"
# The oldest Kubernetes the manifests are meant for; every kubernetes-validate release this
# project accepts (>=1.30) carries its schemas.
KUBERNETES = "1.30.0"
NAMESPACE = "firebox"

# What the renderer implements, and nothing else.
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "resources", "labels", "images"}
LABELS_FIELDS = {"pairs", "includeSelectors", "includeTemplates"}
IMAGE_FIELDS = {"name", "newName", "newTag", "digest"}
# The kinds it may meet, and whether each is namespaced (kustomize's namespace transformer
# leaves cluster-scoped objects alone). Any other kind is refused.
NAMESPACED = {
    "Namespace": False,
    "ServiceAccount": True,
    "ConfigMap": True,
    "Secret": True,
    "Service": True,
    "DaemonSet": True,
    "Deployment": True,
    "Ingress": True,
    "PodDisruptionBudget": True,
    "NetworkPolicy": True,
}

Obj = dict[str, Any]


class RenderError(Exception):
    """The kustomization uses something this renderer does not do as kustomize would."""


def load_objects(path: Path) -> list[Obj]:
    objects = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for obj in objects:
        if not (isinstance(obj, dict) and {"apiVersion", "kind", "metadata"} <= set(obj)):
            raise RenderError(f"{path.name}: not a Kubernetes object: {obj!r:.80}")
        if obj["kind"] not in NAMESPACED:
            raise RenderError(f"{path.name}: kind {obj['kind']} is not known to the renderer")
    return objects


def split_image(ref: str) -> tuple[str, str, str]:
    """name, tag, digest, as kustomize's image.Split: a tag's colon comes after the last '/'."""
    name, _, digest = ref.partition("@")
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        return name[:colon], name[colon + 1 :], digest
    return name, "", digest


def rewrite_image(ref: str, entry: dict[str, str]) -> str:
    """kustomize's imageTagUpdater: a new tag or digest replaces both the old tag and digest."""
    pattern = re.escape(entry["name"]) + r"(:[a-zA-Z0-9_.{}-]*)?(@sha256:[a-zA-Z0-9_.{}-]*)?"
    if not re.fullmatch(pattern, ref):
        return ref
    name, tag, digest = split_image(ref)
    name = entry.get("newName") or name
    new_tag, new_digest = entry.get("newTag", ""), entry.get("digest", "")
    if new_tag or new_digest:
        tag, digest = new_tag, new_digest
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def rewrite_images(node: Any, entry: dict[str, str]) -> None:
    """The image of every item of a `containers` or `initContainers` list, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            rewrite_images(value, entry)
            if key in ("containers", "initContainers") and isinstance(value, list):
                for c in value:
                    if isinstance(c, dict) and isinstance(c.get("image"), str):
                        c["image"] = rewrite_image(c["image"], entry)
    elif isinstance(node, list):
        for item in node:
            rewrite_images(item, entry)


def render(directory: Path) -> list[Obj]:
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    if not isinstance(kust, dict):
        raise RenderError("kustomization.yaml is not a mapping")
    if unknown := set(kust) - KUSTOMIZATION_FIELDS:
        raise RenderError(f"kustomization fields the renderer does not implement: {unknown}")
    if (kust.get("apiVersion"), kust.get("kind")) != (
        "kustomize.config.k8s.io/v1beta1",
        "Kustomization",
    ):
        raise RenderError("not a kustomize.config.k8s.io/v1beta1 Kustomization")

    objects: list[Obj] = []
    for entry in kust.get("resources") or []:
        # a file beside it only: no directories, other kustomizations or remote bases
        if not (
            isinstance(entry, str)
            and re.fullmatch(r"[\w.-]+\.ya?ml", entry)
            and (directory / entry).is_file()
        ):
            raise RenderError(f"resource {entry!r}: only a YAML file in this directory")
        objects += load_objects(directory / entry)

    if (namespace := kust.get("namespace")) is not None:
        if not isinstance(namespace, str):
            raise RenderError("namespace: not a string")
        for obj in objects:
            if NAMESPACED[obj["kind"]]:
                obj["metadata"]["namespace"] = namespace

    for labels in kust.get("labels") or []:
        if unknown := set(labels) - LABELS_FIELDS:
            raise RenderError(f"labels fields the renderer does not implement: {unknown}")
        if labels.get("includeSelectors") or labels.get("includeTemplates"):
            raise RenderError("labels: includeSelectors/includeTemplates are not implemented")
        pairs = labels.get("pairs") or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs.items()):
            raise RenderError("labels: pairs must be strings (quote them)")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(pairs)

    for image in kust.get("images") or []:
        if unknown := set(image) - IMAGE_FIELDS:
            raise RenderError(f"images fields the renderer does not implement: {unknown}")
        if not ("name" in image and all(isinstance(v, str) for v in image.values())):
            raise RenderError(f"images: {image!r}: a name, and strings only (quote a tag)")
        for obj in objects:
            rewrite_images(obj, image)

    ids = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    if dupes := {i for i in ids if ids.count(i) > 1}:
        raise RenderError(f"the same object twice: {dupes}")  # kustomize refuses it too
    return objects


def kubectl_kustomize(directory: Path) -> list[Obj]:
    """The real kustomize's rendering (kubectl's own, offline), where kubectl is installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the renderer is not compared with kustomize")
    out = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc is not None]


def by_id(objects: list[Obj]) -> dict[tuple[str, str], Obj]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def rendered_or_none() -> list[Obj] | None:
    try:
        return render(DEPLOY)
    except (RenderError, OSError, yaml.YAMLError):
        return None  # test_the_kustomization_renders says why


RENDERED = rendered_or_none() or []
EXAMPLE_SECRETS = load_objects(SECRETS_EXAMPLE)


def one(kind: str, name: str) -> Obj:
    found = [o for o in RENDERED if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def workloads() -> list[Obj]:
    return [o for o in RENDERED if o["kind"] in ("DaemonSet", "Deployment")]


def pod_labels(kind: str, name: str) -> dict[str, str]:
    return dict(one(kind, name)["spec"]["template"]["metadata"]["labels"])


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels only: the manifests use no matchExpressions)."""
    assert set(selector) <= {"matchLabels"}, f"unsupported selector {selector}"
    match = selector.get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def containers(obj: Obj, init: bool = True) -> Iterator[Obj]:
    spec = obj["spec"]["template"]["spec"]
    yield from spec["containers"]
    if init:
        yield from spec.get("initContainers") or []


def port_number(container: Obj, port: int | str) -> int:
    """A probe's or a Service's port, by number or by the container port's name."""
    ports = {p["name"]: p["containerPort"] for p in container.get("ports") or [] if "name" in p}
    if isinstance(port, str):
        assert port in ports, f"{container['name']}: no port named {port}"
        return int(ports[port])
    return port


def listen_port(container: Obj) -> int:
    """The port the command listens on: its --port=N."""
    found = [int(a.split("=", 1)[1]) for a in container["args"] if a.startswith("--port=")]
    assert len(found) == 1, f"{container['name']}: expected one --port=N in its args"
    return found[0]


# --- the renderer, and the rendering


def test_the_kustomization_renders() -> None:
    objects = render(DEPLOY)
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == {
        ("Namespace", "firebox"),
        ("ConfigMap", "firebox"),
        ("ServiceAccount", "firebox-node"),
        ("DaemonSet", "firebox-node"),
        ("ServiceAccount", "firebox-gateway"),
        ("Deployment", "firebox-gateway"),
        ("Service", "firebox-gateway"),
        ("Ingress", "firebox"),
        ("PodDisruptionBudget", "firebox-gateway"),
        ("NetworkPolicy", "firebox-node"),
    }


def test_the_renderer_renders_as_kustomize_does() -> None:
    """Where kubectl is installed, its kustomize renders the same objects, field for field."""
    assert by_id(render(DEPLOY)) == by_id(kubectl_kustomize(DEPLOY))


def write_kustomization(tmp_path: Path, kust: Obj, *resources: Obj) -> Path:
    (tmp_path / "objects.yaml").write_text(yaml.safe_dump_all(resources))
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["objects.yaml"],
                **kust,
            }
        )
    )
    return tmp_path


def a_deployment(*images: str) -> Obj:
    pod = {
        "containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)],
        "initContainers": [{"name": "init", "image": images[0]}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"template": {"spec": pod}},
    }


@pytest.mark.parametrize(
    "kust",
    [
        {"patches": [{"path": "p.yaml"}]},
        {"commonLabels": {"a": "b"}},
        {"namePrefix": "x-"},
        {"configMapGenerator": [{"name": "c", "literals": ["a=b"]}]},
        {"resources": ["../base"]},
        {"resources": ["https://example.com/k.yaml"]},
        {"labels": [{"pairs": {"a": "b"}, "includeSelectors": True}]},
        {"labels": [{"pairs": {"a": "b"}, "includeTemplates": True}]},
        {"labels": [{"pairs": {"a": "b"}, "fields": [{"path": "spec/x"}]}]},
        {"images": [{"name": "firebox", "newTag": 1.1}]},
        {"images": [{"name": "firebox", "tagSuffix": "-x"}]},
    ],
)
def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path, kust: Obj) -> None:
    with pytest.raises(RenderError):
        render(write_kustomization(tmp_path, kust, a_deployment("firebox")))


def test_the_renderer_refuses_an_unknown_kind(tmp_path: Path) -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}}
    with pytest.raises(RenderError, match="Job"):
        render(write_kustomization(tmp_path, {}, job))


@pytest.mark.parametrize(
    ("image", "entry", "expected"),
    [
        ("firebox", {"newTag": "0.2.0"}, "firebox:0.2.0"),
        ("firebox:0.1.0", {"newName": "reg.example:5000/fb"}, "reg.example:5000/fb:0.1.0"),
        ("firebox:0.1.0", {"digest": "sha256:ab12"}, "firebox@sha256:ab12"),
        ("firebox:1@sha256:ab12", {"newTag": "2"}, "firebox:2"),
        ("firebox", {"newTag": "2", "digest": "sha256:cd"}, "firebox:2@sha256:cd"),
        # another image, or one whose name merely starts the same, is left alone
        ("firebox-other:1", {"newTag": "2"}, "firebox-other:1"),
        ("example.com/firebox:1", {"newTag": "2"}, "example.com/firebox:1"),
    ],
)
def test_images_are_rewritten_as_kustomize_does(
    tmp_path: Path, image: str, entry: dict[str, str], expected: str
) -> None:
    kust = {
        "images": [{"name": "firebox", **entry}],
        "namespace": "ns",
        "labels": [{"pairs": {"a": "b"}}],
    }
    directory = write_kustomization(tmp_path, kust, a_deployment(image))
    (obj,) = render(directory)
    assert [c["image"] for c in containers(obj)] == [expected, expected]
    assert obj["metadata"]["namespace"] == "ns"
    assert obj["metadata"]["labels"] == {"a": "b"}
    if shutil.which("kubectl"):
        assert kubectl_kustomize(directory) == [obj]


def test_a_registry_port_is_not_a_tag() -> None:
    assert split_image("reg.example:5000/fb") == ("reg.example:5000/fb", "", "")
    assert split_image("reg.example:5000/fb:1@sha256:ab") == (
        "reg.example:5000/fb",
        "1",
        "sha256:ab",
    )


def test_namespace_labels_and_image_are_applied() -> None:
    for obj in RENDERED:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "firebox"
        namespaced = NAMESPACED[obj["kind"]]
        assert obj["metadata"].get("namespace") == (NAMESPACE if namespaced else None)
    images = {c["image"] for obj in workloads() for c in containers(obj)}
    assert images == {"firebox:0.1.0"}


# --- the schemas


def object_id(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("obj", RENDERED + EXAMPLE_SECRETS, ids=object_id)
def test_valid_against_the_kubernetes_schema(obj: Obj) -> None:
    try:
        kubernetes_validate.validate(copy.deepcopy(obj), KUBERNETES, strict=True)
        return
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "the top"
        error = f"{object_id(obj)} at {where}: {e.message}"
    pytest.fail(error, pytrace=False)  # outside the except: not the whole schema printed


def test_an_invalid_object_fails_validation() -> None:
    """The check above can fail: a misspelt field is refused."""
    bad = copy.deepcopy(one("Service", "firebox-gateway"))
    bad["spec"]["selectr"] = bad["spec"].pop("selector")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES, strict=True)


# --- cross-checks


def test_the_service_selects_the_gateway_pods_on_their_port() -> None:
    service = one("Service", "firebox-gateway")
    assert selects(
        {"matchLabels": service["spec"]["selector"]}, pod_labels("Deployment", "firebox-gateway")
    )
    assert not selects(
        {"matchLabels": service["spec"]["selector"]}, pod_labels("DaemonSet", "firebox-node")
    )
    (gateway,) = containers(one("Deployment", "firebox-gateway"), init=False)
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80
    assert port_number(gateway, port["targetPort"]) == listen_port(gateway) == 7080


def test_the_pdb_selects_the_gateway_pods_and_allows_a_disruption() -> None:
    pdb = one("PodDisruptionBudget", "firebox-gateway")
    assert selects(pdb["spec"]["selector"], pod_labels("Deployment", "firebox-gateway"))
    assert not selects(pdb["spec"]["selector"], pod_labels("DaemonSet", "firebox-node"))
    assert pdb["spec"]["minAvailable"] == 1
    # at minAvailable == replicas no host holding a gateway could ever be drained
    assert one("Deployment", "firebox-gateway")["spec"]["replicas"] > pdb["spec"]["minAvailable"]


def test_every_workload_selects_its_own_pods() -> None:
    for obj in workloads():
        assert selects(obj["spec"]["selector"], obj["spec"]["template"]["metadata"]["labels"])
    node, gateway = (
        pod_labels("DaemonSet", "firebox-node"),
        pod_labels("Deployment", "firebox-gateway"),
    )
    assert not selects(one("DaemonSet", "firebox-node")["spec"]["selector"], gateway)
    assert not selects(one("Deployment", "firebox-gateway")["spec"]["selector"], node)


def test_the_network_policy_admits_only_the_gateways_to_the_nodes_port() -> None:
    policy = one("NetworkPolicy", "firebox-node")["spec"]
    node, gateway = (
        pod_labels("DaemonSet", "firebox-node"),
        pod_labels("Deployment", "firebox-gateway"),
    )
    assert selects(policy["podSelector"], node) and not selects(policy["podSelector"], gateway)
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}  # not any namespace's pods
    assert selects(peer["podSelector"], gateway) and not selects(peer["podSelector"], node)
    (container,) = containers(one("DaemonSet", "firebox-node"), init=False)
    assert [(p["protocol"], p["port"]) for p in rule["ports"]] == [("TCP", listen_port(container))]


def test_every_container_has_requests_and_probes_on_its_listening_port() -> None:
    for obj in workloads():
        for c in containers(obj):
            requests = c.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(requests), f"{object_id(obj)} {c['name']}: requests"
        for c in containers(obj, init=False):
            port = listen_port(c)
            assert [p["containerPort"] for p in c["ports"]] == [port]
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if probe == "startupProbe" and probe not in c:
                    continue
                get = c[probe]["httpGet"]
                assert get["path"] == "/health", f"{object_id(obj)} {c['name']} {probe}"
                assert port_number(c, get["port"]) == port, f"{object_id(obj)} {c['name']} {probe}"


def test_every_reference_names_an_object_that_exists() -> None:
    """Secrets and ConfigMaps by name and key: rendered, or created by hand as in
    secrets.example.yaml; and every $(VAR) in args is one of the container's env vars
    (Kubernetes leaves an unknown one in the command line as it is)."""
    data: dict[tuple[str, str], set[str]] = {}
    for obj in RENDERED + EXAMPLE_SECRETS:
        if obj["kind"] in ("Secret", "ConfigMap"):
            keys = set(obj.get("data") or {}) | set(obj.get("stringData") or {})
            data[(obj["kind"], obj["metadata"]["name"])] = keys
    for obj in EXAMPLE_SECRETS:
        assert obj["kind"] == "Secret" and obj["metadata"]["namespace"] == NAMESPACE
    checked = 0
    for obj in workloads():
        pod = obj["spec"]["template"]["spec"]
        for volume in pod.get("volumes") or []:
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in data
                checked += 1
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in data
                checked += 1
        for c in containers(obj):
            assert not c.get("envFrom"), "envFrom: name each variable"
            env = c.get("env") or []
            for var in env:
                source = var.get("valueFrom") or {}
                for ref, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                    if ref in source:
                        key = (kind, source[ref]["name"])
                        assert key in data, f"{c['name']}: {var['name']} names no {key}"
                        assert source[ref]["key"] in data[key], f"{c['name']}: {var['name']}"
                        checked += 1
            names = {var["name"] for var in env}
            for arg in c.get("args") or []:
                for used in re.findall(r"\$\((\w+)\)", arg):
                    assert used in names, f"{c['name']}: {arg} uses ${used}, not in its env"
        volumes = {v["name"] for v in pod.get("volumes") or []}
        for c in containers(obj):
            for mount in c.get("volumeMounts") or []:
                assert mount["name"] in volumes, f"{c['name']}: mount of no volume"
    assert checked >= 7
    assert (
        "secrets.example.yaml"
        not in yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    )


def test_no_service_account_token_is_mounted() -> None:
    for obj in workloads():
        pod = obj["spec"]["template"]["spec"]
        account = one("ServiceAccount", pod["serviceAccountName"])
        assert account["automountServiceAccountToken"] is False
        assert pod["automountServiceAccountToken"] is False


def test_the_node_daemonset_has_what_re_adoption_needs() -> None:
    node = one("DaemonSet", "firebox-node")
    pod = node["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert pod["nodeSelector"] == {"firebox.dev/node": "true"}
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert node["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }
    (container,) = containers(node)
    assert container["securityContext"]["privileged"] is True
    host_paths = {v["name"]: v["hostPath"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    expected = {
        "/var/lib/firebox": "DirectoryOrCreate",
        "/run/firebox": "DirectoryOrCreate",
        "/sys/fs/cgroup": "Directory",
        "/dev/kvm": "CharDevice",
    }
    assert {hp["path"]: hp["type"] for hp in host_paths.values()} == expected
    for name, hp in host_paths.items():
        assert mounts[name] == hp["path"], f"{name} is mounted where the host has it"
    assert "--home=/var/lib/firebox" in container["args"]
    assert container["args"][container["args"].index("--home=/var/lib/firebox") + 1] == "serve"


def test_every_privilege_host_path_and_device_says_why() -> None:
    """A YAML comment right above each: hostPID, privileged, and each hostPath volume."""
    lines = (DEPLOY / "node-daemonset.yaml").read_text().splitlines()

    def commented(index: int) -> bool:
        return lines[index - 1].strip().startswith("#")

    def line_of(text: str) -> int:
        found = [i for i, line in enumerate(lines) if line.strip() == text]
        assert len(found) == 1, f"{text!r} once in node-daemonset.yaml"
        return found[0]

    assert commented(line_of("hostPID: true"))
    assert commented(line_of("privileged: true"))
    pod = one("DaemonSet", "firebox-node")["spec"]["template"]["spec"]
    for volume in pod["volumes"]:
        if "hostPath" in volume:
            # the volume's `- name:` line, after the volumeMounts' line of the same name
            at = [i for i, line in enumerate(lines) if line.strip() == f"- name: {volume['name']}"]
            assert commented(at[-1]), f"volume {volume['name']}: no comment says why"


def test_the_ingress_routes_the_api_host_and_the_preview_wildcard_to_the_gateways() -> None:
    domain = one("ConfigMap", "firebox")["data"]["domain"]
    service = one("Service", "firebox-gateway")
    service_ports = {p["name"] for p in service["spec"]["ports"]} | {
        p["port"] for p in service["spec"]["ports"]
    }
    rules = one("Ingress", "firebox")["spec"]["rules"]
    assert [r["host"] for r in rules] == [domain, f"*.{domain}"]
    for rule in rules:
        (path,) = rule["http"]["paths"]
        assert (path["path"], path["pathType"]) == ("/", "Prefix")
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert next(iter(backend["port"].values())) in service_ports


def test_the_gateway_migrates_before_it_starts() -> None:
    gateway = one("Deployment", "firebox-gateway")
    (init,) = gateway["spec"]["template"]["spec"]["initContainers"]
    assert init["command"] + init["args"] == ["firebox", "db", "migrate"]
    assert gateway["spec"]["replicas"] >= 2


def test_nodes_and_gateways_name_previews_with_the_same_domain() -> None:
    """A node names its sandboxes' preview hosts with its --domain and recognises them in the
    Host header of what a gateway forwards: both roles take the ConfigMap's one domain."""
    for kind, name in (("DaemonSet", "firebox-node"), ("Deployment", "firebox-gateway")):
        (main,) = containers(one(kind, name), init=False)
        assert "--domain=$(FIREBOX_DOMAIN)" in main["args"], name
        env = {e["name"]: e for e in main["env"]}
        ref = env["FIREBOX_DOMAIN"]["valueFrom"]["configMapKeyRef"]
        assert (ref["name"], ref["key"]) == ("firebox", "domain"), name
