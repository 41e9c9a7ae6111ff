"""Deployment files agree with the app and with each other (no Docker engine needed).

Optional tools make more of these run; each test that needs one says so when skipped:
  apt-get install -y --no-install-recommends prometheus shellcheck   # promtool, prometheus, shellcheck
  pip install check-jsonschema kubernetes-validate                    # compose/CI and k8s schemas
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy_checks as dc  # noqa: E402

REPO = dc.REPO
GATE_FLAGS = {"--min-accuracy", "--url", "--local", "--predictor", "--use-lower-bound", "--fail-on-ood", "--json"}
CLIENT_ENV = {"SNE_API_KEY"}  # read by `sne gate`, not a service setting


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def settings_names() -> set[str]:
    return dc.settings_env_names()


@pytest.fixture(scope="module")
def default_port() -> int:
    from app.settings import Settings

    return Settings.model_fields["port"].default


@pytest.fixture(scope="module")
def compose() -> dict:
    return dc.load_yaml(dc.COMPOSE)


@pytest.fixture(scope="module")
def prom() -> dict:
    return dc.load_yaml(dc.PROMETHEUS_YML)


@pytest.fixture(scope="module")
def k8s() -> dict[str, list[dict]]:
    return {p.name: dc.load_yaml_all(p) for p in sorted(dc.K8S_DIR.glob("*.yaml"))}


@pytest.fixture(scope="module")
def k8s_objects(k8s) -> list[dict]:
    return [d for name, docs in k8s.items() if name != "kustomization.yaml" for d in docs]


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(dc.DASHBOARD.read_text())


@pytest.fixture(scope="module")
def datasources() -> list[dict]:
    return [ds for p in sorted(dc.GRAFANA_DATASOURCES.glob("*.y*ml")) for ds in dc.load_yaml(p)["datasources"]]


@pytest.fixture(scope="module")
def exported_names() -> set[str]:
    return dc.exported_metric_names(dc.touched_metrics_exposition())


def _find(objs: list[dict], kind: str, name: str) -> dict:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert hits, f"no {kind}/{name} in deploy/k8s"
    return hits[0]


def _containers(objs: list[dict], kind: str = "Deployment") -> list[tuple[dict, dict]]:
    return [(o, c) for o in objs if o["kind"] == kind for c in o["spec"]["template"]["spec"]["containers"]]


def _api_deployments(objs: list[dict]) -> list[dict]:
    return [o for o in objs if o["kind"] == "Deployment"
            and o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "api"]


def _named_port(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


def _url_host_port(url: str) -> tuple[str, int]:
    u = urlparse(url)
    return u.hostname, u.port


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


# ---------------------------------------------------------------- everything parses

def test_yaml_and_json_files_parse():
    files = [dc.COMPOSE, dc.PROMETHEUS_YML, dc.GITHUB_WORKFLOW, dc.GITLAB_CI,
             *dc.GRAFANA_DATASOURCES.glob("*.y*ml"), *dc.GRAFANA_DASHBOARD_PROVIDERS.glob("*.y*ml"),
             *dc.K8S_DIR.glob("*.yaml")]
    assert len(files) >= 12
    for f in files:
        docs = dc.load_yaml_all(f)
        assert docs and all(isinstance(d, dict) for d in docs), f
    for f in (REPO / "deploy/grafana/dashboards").glob("*.json"):
        assert isinstance(json.loads(f.read_text()), dict), f


# ---------------------------------------------------------------- SNE_* variables are settings

def test_compose_sne_variables_are_settings(settings_names):
    unknown = dc.sne_env_names_in_text(dc.COMPOSE.read_text()) - settings_names
    assert not unknown, f"docker-compose.yml names SNE_* variables that app.settings.Settings lacks: {unknown}"


def test_k8s_sne_variables_are_settings(settings_names, k8s_objects):
    for p in dc.K8S_DIR.glob("*.yaml"):
        unknown = dc.sne_env_names_in_text(p.read_text()) - settings_names
        assert not unknown, f"{p.name} names SNE_* variables that Settings lacks: {unknown}"
    # and the keys actually handed to containers (ConfigMap data, env names) are settings
    cm_keys = {k for o in k8s_objects if o["kind"] == "ConfigMap" for k in o.get("data", {})}
    env_keys = {e["name"] for _, c in _containers(k8s_objects) for e in c.get("env", [])}
    assert {k for k in cm_keys | env_keys if k.startswith("SNE_")} <= settings_names
    assert all(k.startswith("SNE_") for k in cm_keys), "the ConfigMap holds service settings only"


def test_ci_sne_variables_are_settings_or_the_gate_key(settings_names):
    for p in (dc.GITHUB_WORKFLOW, dc.GITLAB_CI):
        unknown = dc.sne_env_names_in_text(p.read_text()) - settings_names - CLIENT_ENV
        assert not unknown, f"{p.name}: SNE_* names that are neither settings nor the gate's SNE_API_KEY: {unknown}"


def test_compose_environment_builds_valid_settings(compose):
    env = dc.compose_environment(compose["services"]["api"])
    s = dc.settings_from_env(env)
    assert s.api_keys == [], "with SNE_API_KEYS unset compose must leave the service open"
    host, port = _url_host_port(s.redis_url)
    assert host in compose["services"], f"SNE_REDIS_URL host {host} is not a compose service"
    redis = compose["services"][host]
    assert port in {int(p) for p in redis.get("expose", [])} | {c for _, c in dc.compose_port_pairs(redis)}
    # keys given on the host reach the service as a list
    keyed = dc.settings_from_env({**env, "SNE_API_KEYS": dc.compose_interpolate("${SNE_API_KEYS:-}", {"SNE_API_KEYS": "a,b"})})
    assert keyed.api_keys == ["a", "b"]


def test_k8s_config_builds_valid_settings(k8s_objects):
    cm = _find(k8s_objects, "ConfigMap", "sne-config")
    assert all(isinstance(v, str) for v in cm["data"].values()), "ConfigMap values must be strings"
    for dep in _api_deployments(k8s_objects):
        for c in dep["spec"]["template"]["spec"]["containers"]:
            env = {}
            for ef in c.get("envFrom", []):
                env.update(_find(k8s_objects, "ConfigMap", ef["configMapRef"]["name"])["data"])
            for e in c.get("env", []):
                if "value" in e:
                    assert isinstance(e["value"], str), f"{dep['metadata']['name']}: env {e['name']} must be a string"
                    env[e["name"]] = e["value"]
            s = dc.settings_from_env(env)
            host, port = _url_host_port(s.redis_url)
            svc = _find(k8s_objects, "Service", host)
            assert port in [p["port"] for p in svc["spec"]["ports"]]
            if c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu"):
                assert s.device.startswith("cuda"), "the GPU variant must run the encoder on CUDA"
            else:
                assert s.device == "cpu"


# ---------------------------------------------------------------- ports and probes agree

def test_ports_agree(default_port, compose, prom, k8s_objects):
    instrs = dc.dockerfile_instructions()
    assert [a for i, a in instrs if i == "EXPOSE"] == [str(default_port)]
    cmd = dc.dockerfile_exec_form([a for i, a in instrs if i == "CMD"][-1])
    assert cmd[cmd.index("--port") + 1] == str(default_port)
    health = [a for i, a in instrs if i == "HEALTHCHECK"][-1]
    assert f"127.0.0.1:{default_port}/healthz" in health

    api = compose["services"]["api"]
    assert (default_port, default_port) in dc.compose_port_pairs(api)
    assert dc.compose_environment(api).get("SNE_PORT", str(default_port)) == str(default_port)

    job = dc.scrape_job()
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"api:{default_port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert "api" in compose["services"]

    for dep, c in _containers(k8s_objects):
        if dep not in _api_deployments(k8s_objects):
            continue
        assert [p["containerPort"] for p in c["ports"]] == [default_port]
        if "command" in c:
            assert c["command"][c["command"].index("--port") + 1] == str(default_port)
        ann = dep["spec"]["template"]["metadata"].get("annotations", {})
        assert ann.get("prometheus.io/port") == str(default_port)
        assert ann.get("prometheus.io/path") == "/metrics"
    svc = _find(k8s_objects, "Service", "sne-api")
    api_dep = _find(k8s_objects, "Deployment", "sne-api")
    c = api_dep["spec"]["template"]["spec"]["containers"][0]
    assert [_named_port(c, p["targetPort"]) for p in svc["spec"]["ports"]] == [default_port]


def test_probes_hit_healthz_and_readyz(k8s_objects):
    deps = _api_deployments(k8s_objects)
    assert {d["metadata"]["name"] for d in deps} == {"sne-api", "sne-api-gpu"}
    for dep in deps:
        c = dep["spec"]["template"]["spec"]["containers"][0]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c.get("startupProbe", c["livenessProbe"])["httpGet"]["path"] == "/healthz"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in c:
                assert _named_port(c, c[probe]["httpGet"]["port"]) == 8000


# ---------------------------------------------------------------- Dockerfile

def test_dockerfile_stages_user_torch_and_cmd():
    instrs = dc.dockerfile_instructions()
    froms = [a for i, a in instrs if i == "FROM"]
    assert len(froms) >= 2 and all(" AS " in f.upper() for f in froms), "multi-stage with named stages"
    assert instrs[0] == ("ARG", instrs[0][1]) and instrs[0][1].startswith("BASE_IMAGE=python:3.1")
    assert froms[0].startswith("${BASE_IMAGE}")
    args = dict(a.split("=", 1) for i, a in instrs if i == "ARG" and "=" in a)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"

    torch_pin = next(d for d in _pyproject()["project"]["dependencies"] if re.match(r"torch\b", d))
    text = dc.DOCKERFILE.read_text()
    assert f'"{torch_pin.replace(" ", "")}"' in text, f"the image must install {torch_pin} like pyproject.toml"
    assert '--index-url "${TORCH_INDEX_URL}"' in text
    assert re.search(r"pip install \.(\s|$)", text), "the package (with its default predictor) is pip-installed"
    assert "predictors" in text and "default" in text, "the build checks the default predictor is installed"

    users = [a for i, a in instrs if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image runs as a non-root user"
    assert users[-1].split(":")[0].isdigit(), "numeric USER so k8s runAsNonRoot can verify it"
    health = [a for i, a in instrs if i == "HEALTHCHECK"]
    assert health and "/healthz" in health[-1]
    cmd = dc.dockerfile_exec_form([a for i, a in instrs if i == "CMD"][-1])
    assert cmd == ["sne", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert "sne" in _pyproject()["project"]["scripts"]


def test_dockerfile_python_snippets_compile():
    """The `python -c` checks in RUN and HEALTHCHECK are valid Python (a typo would only show in a docker build)."""
    snippets = []
    for instr, args in dc.dockerfile_instructions():
        if instr == "HEALTHCHECK":
            cmd = dc.dockerfile_exec_form(args[args.index("CMD") + 3:])
            assert cmd[:2] == ["python", "-c"]
            snippets.append(cmd[2])
        elif instr == "RUN":
            snippets += [m.group(2) for m in re.finditer(r"python3? -c ([\"'])(.*?)\1(?=\s|$)", args)]
    assert len(snippets) >= 4
    for code in snippets:
        compile(code, "<Dockerfile>", "exec")


def test_k8s_pods_run_as_the_image_user(k8s_objects):
    user = [a for i, a in dc.dockerfile_instructions() if i == "USER"][-1].split(":")[0]
    for dep in _api_deployments(k8s_objects):
        sc = dep["spec"]["template"]["spec"]["securityContext"]
        assert sc["runAsNonRoot"] is True and str(sc["runAsUser"]) == user
        c = dep["spec"]["template"]["spec"]["containers"][0]
        if c.get("securityContext", {}).get("readOnlyRootFilesystem"):
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, "a read-only root needs a writable /tmp (MPLCONFIGDIR, uploads)"


def _context_files(rel: str) -> list[str]:
    p = REPO / rel
    if p.is_file():
        return [rel]
    return sorted(str(f.relative_to(REPO)) for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts)


def test_dockerfile_copy_sources_exist_and_are_in_the_context():
    patterns = dc.dockerignore_patterns()
    for sources in dc.dockerfile_copy_sources():
        matched = []
        for src in sources:
            if any(ch in src for ch in "*?["):
                matched += [str(p.relative_to(REPO)) for p in REPO.glob(src)]
            else:
                assert (REPO / src).exists(), f"COPY source {src} is not in the repo"
                matched.append(src.rstrip("/"))
        assert matched, f"COPY {sources} matches nothing"
        for rel in matched:
            for f in _context_files(rel):
                assert not dc.dockerignored(f, patterns), f"{f} is copied into the image but .dockerignore drops it"
    for heavy in (".git", ".venv", "tests", "deploy/k8s/api-deployment.yaml", "app/__pycache__/x.pyc"):
        assert dc.dockerignored(heavy, patterns), f"{heavy} should stay out of the build context"


def test_build_context_builds_a_wheel_with_app_and_default_predictor(tmp_path):
    """Copy what the Dockerfile COPYs (minus .dockerignore) and build the wheel `pip install .` would install."""
    predictor = REPO / "model/predictors/default"
    assert predictor.is_dir() and any(predictor.iterdir()), \
        "model/predictors/default/ (the shipped default predictor) is missing: the image build would fail"
    patterns = dc.dockerignore_patterns()
    ctx = tmp_path / "ctx"
    for sources in dc.dockerfile_copy_sources():
        for src in sources:
            rels = [str(p.relative_to(REPO)) for p in REPO.glob(src)] if any(c in src for c in "*?[") else [src.rstrip("/")]
            for rel in rels:
                for f in _context_files(rel):
                    if not dc.dockerignored(f, patterns):
                        (ctx / f).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(REPO / f, ctx / f)
    out = tmp_path / "wheel"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ctx)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    wheel = next(out.glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = [f for f in _context_files("app") + _context_files("model") if f.endswith(".py")]
    expected += _context_files("model/predictors/default")
    missing = [f for f in expected if f not in names]
    assert not missing, f"the installed package would lack {missing}"
    ep = next(n for n in names if n.endswith("entry_points.txt"))
    assert re.search(r"^sne\s*=", zipfile.ZipFile(wheel).read(ep).decode(), re.M)


# ---------------------------------------------------------------- docker-compose

def test_compose_services_mounts_and_wiring(compose, prom, datasources):
    services = compose["services"]
    assert {"api", "redis", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        deps = svc.get("depends_on") or []
        assert set(deps) <= set(services), f"{name} depends on unknown services"
        for host, _ in dc.compose_bind_mounts(svc):
            assert (REPO / host).exists(), f"{name} mounts {host}, which is not in the repo"
    build = services["api"]["build"]
    assert (REPO / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()
    assert set(build.get("args", {})) == {"BASE_IMAGE", "TORCH_INDEX_URL"}
    args = {k: dc.compose_interpolate(v) for k, v in build["args"].items()}
    df_args = dict(a.split("=", 1) for i, a in dc.dockerfile_instructions() if i == "ARG" and "=" in a)
    assert args == {k: df_args[k] for k in args}, "compose's default build args are the Dockerfile's"

    # Prometheus reads the repo's config
    p = services["prometheus"]
    cfg_flag = next(a for a in p["command"] if a.startswith("--config.file=")).split("=", 1)[1]
    mounts = dict((t, h) for h, t in dc.compose_bind_mounts(p))
    assert (REPO / mounts[cfg_flag]).resolve() == dc.PROMETHEUS_YML.resolve()
    host, port = dc.scrape_job()["static_configs"][0]["targets"][0].split(":")
    assert host in services

    # Grafana: provisioning folder, dashboards folder = provider path, datasource URL = prometheus service
    g = services["grafana"]
    gm = dict((t, h) for h, t in dc.compose_bind_mounts(g))
    assert (REPO / gm["/etc/grafana/provisioning"]).resolve() == (REPO / "deploy/grafana/provisioning").resolve()
    providers = [pr for f in dc.GRAFANA_DASHBOARD_PROVIDERS.glob("*.y*ml") for pr in dc.load_yaml(f)["providers"]]
    assert providers
    for pr in providers:
        path = pr["options"]["path"]
        assert path in gm, f"dashboard provider path {path} is not mounted into grafana"
        assert (REPO / gm[path] / "sne.json").resolve() == dc.DASHBOARD.resolve()
    home = dc.compose_environment(g).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        mount = next(t for t in gm if home.startswith(t + "/"))
        assert (REPO / gm[mount] / home[len(mount) + 1:]).is_file()
    prom_port = next((c for _, c in dc.compose_port_pairs(p)), 9090)
    for ds in datasources:
        if ds["type"] == "prometheus":
            assert _url_host_port(ds["url"]) == ("prometheus", prom_port)
            assert "prometheus" in services


def test_compose_image_is_the_one_k8s_runs(compose, k8s_objects):
    repo_name = compose["services"]["api"]["image"].split(":")[0]
    for _, c in _containers(k8s_objects):
        if c["name"] == "api":
            assert c["image"].split(":")[0] == repo_name


# ---------------------------------------------------------------- Grafana dashboard

def test_dashboard_datasource_uid_is_the_provisioned_one(dashboard, datasources, prom):
    prov = {ds["uid"]: ds for ds in datasources}
    uids = set()

    def collect(o):
        if isinstance(o, dict):
            ds = o.get("datasource")
            if isinstance(ds, dict) and ds.get("uid") and ds.get("type") != "grafana":
                uids.add(ds["uid"])
            for v in o.values():
                collect(v)
        elif isinstance(o, list):
            for v in o:
                collect(v)

    collect(dashboard)
    assert uids and uids <= set(prov), f"dashboard datasource uids {uids} vs provisioned {set(prov)}"
    for uid in uids:
        assert prov[uid]["type"] == "prometheus"
        assert prov[uid]["jsonData"]["timeInterval"] == prom["global"]["scrape_interval"]


def test_dashboard_layout_and_panels(dashboard):
    panels = list(dc._walk_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    boxes = []
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for q in boxes:
            overlap = g["x"] < q["x"] + q["w"] and q["x"] < g["x"] + g["w"] and g["y"] < q["y"] + q["h"] and q["y"] < g["y"] + g["h"]
            assert not overlap, f"panel {p['title']} overlaps another"
        boxes.append(g)
        if p["type"] not in ("row", "text"):
            assert p.get("targets"), f"panel {p['title']} has no query"
    titles = " | ".join(p["title"].lower() for p in panels)
    for needle in ("request rate", "status", "error", "latency p50 / p95 / p99", "queue depth", "batch size",
                   "encode time", "cache hit ratio", "predicted-accuracy distribution", "predictor", "gate verdicts"):
        assert needle in titles, f"no panel about {needle!r}"
    gate = next(p for p in panels if "gate" in p["title"].lower())
    assert gate["type"] == "text" and "not exported" in gate["options"]["content"].lower()


def test_dashboard_variables_are_defined(dashboard, prom):
    defined = {v["name"] for v in dashboard["templating"]["list"]} | set(dc.GRAFANA_BUILTINS)
    for expr in dc.dashboard_exprs() + list(dc.dashboard_variable_queries().values()):
        assert dc.grafana_variables_used(expr) <= defined, expr
    job = next(v for v in dashboard["templating"]["list"] if v["name"] == "job")
    assert job["current"]["value"] == dc.scrape_job()["job_name"], "the dashboard opens on the job prometheus.yml scrapes"


def test_dashboard_metrics_are_exported_by_app_metrics(exported_names):
    used = dc.dashboard_metric_names()
    assert used, "the dashboard queries no sne_* metric"
    missing = used - exported_names
    assert not missing, f"dashboard queries metrics app.metrics does not export: {sorted(missing)}"


def test_every_app_metric_has_a_panel(exported_names):
    """A metric added to app/metrics.py without a panel fails here: add one to deploy/grafana/dashboards/sne.json."""
    def family(n: str) -> str:
        return re.sub(r"_(bucket|sum|count|total|created|info)$", "", n)

    app_families = {family(n) for n in exported_names if n.startswith("sne_") and not n.endswith("_created")}
    used = {family(n) for n in dc.dashboard_metric_names()}
    assert app_families - used == set(), f"metrics with no dashboard panel: {sorted(app_families - used)}"


def test_metric_name_helpers():
    expr = 'sum by (le) (rate(sne_a_bucket{route="sne_not_a_metric", x=~"$y"}[$__rate_interval])) / sne_b_total'
    assert dc.promql_metric_names(expr) == {"sne_a_bucket", "sne_b_total"}
    assert dc.grafana_variables_used(expr) == {"y", "__rate_interval"}
    assert dc.substitute_grafana_variables(expr, {"y": ".*"}).endswith('x=~".*"}[1m])) / sne_b_total')
    with pytest.raises(KeyError):
        dc.substitute_grafana_variables("up{a=\"$nope\"}", {})
    text = ('# TYPE sne_h histogram\nsne_h_bucket{le="1.0"} 1.0\nsne_h_bucket{le="+Inf"} 1.0\nsne_h_count 1.0\nsne_h_sum 0.5\n'
            '# TYPE sne_c counter\nsne_c_total 3.0\n')
    assert dc.exported_metric_names(text) == {"sne_h_bucket", "sne_h_count", "sne_h_sum", "sne_c_total"}


def test_dockerignore_and_interpolation_helpers():
    pats = ["deploy", "**/__pycache__", "*.egg-info", "model/big/*", "!model/big/keep"]
    assert dc.dockerignored("deploy/k8s/x.yaml", pats)
    assert dc.dockerignored("model/sub/__pycache__/m.pyc", pats)
    assert dc.dockerignored("sne.egg-info/PKG-INFO", pats)
    assert not dc.dockerignored("app/sne.egg-info/PKG-INFO", pats)
    assert dc.dockerignored("model/big/w.bin", pats) and not dc.dockerignored("model/big/keep", pats)
    assert not dc.dockerignored("model/predictors/default/card.json", pats)
    assert dc.compose_interpolate("${A:-x}-${B}-$C-$$D", {"C": "c"}) == "x--c-$D"
    assert dc.compose_interpolate("${A:-x}", {"A": "a"}) == "a"


# ---------------------------------------------------------------- Prometheus

def test_promtool_check_config():
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not on PATH (Debian: apt-get install -y --no-install-recommends prometheus)")
    r = subprocess.run([promtool, "check", "config", str(dc.PROMETHEUS_YML)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_queries_run_on_a_real_prometheus(tmp_path):
    """A real Prometheus, configured from deploy/prometheus/prometheus.yml, scrapes app.metrics (served on
    loopback with every metric observed); every dashboard query must parse and return data."""
    if not shutil.which("prometheus"):
        pytest.skip("prometheus not on PATH (Debian: apt-get install -y --no-install-recommends prometheus)")
    job = dc.scrape_job()["job_name"]
    with dc.synthetic_metrics_target() as target, dc.run_prometheus(dc.loopback_prometheus_config(target)) as url:
        dc.wait_for_samples(url, job)
        records = dc.evaluate_dashboard(url, job)
        assert len(records) == len(dc.dashboard_exprs())
        bad = [r for r in records if r["status"] != "success" or not r["has_data"]]
        assert not bad, "dashboard queries failing or empty:\n" + "\n".join(f"{r['panel']}: {r['expr']} -> {r['error']}" for r in bad)
        values = dc.evaluate_variable_queries(url, job)
        assert job in values["job"] and all(values.values()), values

        # the check does catch a broken query and a metric that is not exported
        broken = json.loads(dc.DASHBOARD.read_text())
        targets = [t for p in dc._walk_panels(broken["panels"]) for t in p.get("targets", []) if t.get("expr")]
        targets[0]["expr"] = "sum(rate(sne_http_requests_total[$__rate_interval])"
        targets[1]["expr"] = "sum(rate(sne_no_such_metric_total[$__rate_interval]))"
        (tmp_path / "broken.json").write_text(json.dumps(broken))
        recs = dc.evaluate_dashboard(url, job, tmp_path / "broken.json")
        assert recs[0]["status"] == "error" and recs[1]["status"] == "success" and not recs[1]["has_data"]


# ---------------------------------------------------------------- Kubernetes

def test_k8s_manifests_hang_together(k8s_objects):
    for o in k8s_objects:
        assert o.get("apiVersion") and o.get("kind") and o["metadata"].get("name"), o
    for dep in (o for o in k8s_objects if o["kind"] == "Deployment"):
        sel = dep["spec"]["selector"]["matchLabels"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert sel.items() <= labels.items(), f"{dep['metadata']['name']}: selector does not match its pods"
        for c in dep["spec"]["template"]["spec"]["containers"]:
            for ef in c.get("envFrom", []):
                _find(k8s_objects, "ConfigMap", ef["configMapRef"]["name"])
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    _find(k8s_objects, "Secret", ref["name"])
    deps = _api_deployments(k8s_objects)
    selectors = [tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) for d in deps]
    assert len(set(selectors)) == len(selectors), "api Deployments must not share a selector"
    svc = _find(k8s_objects, "Service", "sne-api")
    for d in deps:  # one Service in front of CPU and GPU replicas
        assert svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    for s in (o for o in k8s_objects if o["kind"] == "Service"):
        pods = [d for d in k8s_objects if d["kind"] == "Deployment"
                and s["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert pods, f"Service {s['metadata']['name']} selects no pods"
        for p in s["spec"]["ports"]:
            _named_port(pods[0]["spec"]["template"]["spec"]["containers"][0], p["targetPort"])


def test_k8s_hpa_and_gpu_variant(k8s_objects):
    hpa = _find(k8s_objects, "HorizontalPodAutoscaler", "sne-api")
    ref = hpa["spec"]["scaleTargetRef"]
    dep = _find(k8s_objects, ref["kind"], ref["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "replicas" not in dep["spec"], "the HPA owns the replica count; a fixed one is reset by every apply"
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["requests"].get("cpu"), "CPU utilisation targets need a CPU request"

    gpu = _find(k8s_objects, "Deployment", "sne-api-gpu")
    spec = gpu["spec"]["template"]["spec"]
    gc = spec["containers"][0]
    assert gc["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert spec.get("nodeSelector"), "the GPU variant must pin GPU nodes"
    assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", []))
    assert gc["image"] != c["image"], "the GPU variant runs the CUDA build of the image"


def test_k8s_kustomization(k8s):
    kust = k8s["kustomization.yaml"][0]
    listed = set(kust["resources"])
    for r in listed:
        assert (dc.K8S_DIR / r).is_file(), f"kustomization lists missing {r}"
    unlisted = {n for n in k8s if n != "kustomization.yaml"} - listed
    assert unlisted == {"api-gpu-deployment.yaml"}, f"manifests not in kustomization.yaml: {unlisted}"
    images = {c["image"].split(":")[0] for name in listed for d in k8s[name]
              if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]}
    assert {i["name"] for i in kust.get("images", [])} <= images


def test_k8s_schema():
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("kubernetes-validate not installed (pip install kubernetes-validate)")
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for p in sorted(dc.K8S_DIR.glob("*.yaml")):
        if p.name == "kustomization.yaml":
            continue
        for doc in dc.load_yaml_all(p):
            kubernetes_validate.validate(doc, version, strict=True)


# ---------------------------------------------------------------- CI

def _gate_invocations(text: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", text)
    return [m.group(0) for m in re.finditer(r"\bsne gate\b[^\n]*", joined)]


def _check_gate_lines(text: str, where: str) -> None:
    lines = _gate_invocations(text)
    assert lines, f"{where} never runs `sne gate`"
    for line in lines:
        flags = set(re.findall(r"(?<!\S)--[a-z][a-z-]*", line))
        assert flags <= GATE_FLAGS, f"{where}: unknown `sne gate` flags {flags - GATE_FLAGS}"
        assert "--min-accuracy" in flags and "--url" in flags


def test_github_workflow(default_port):
    wf = dc.load_yaml(dc.GITHUB_WORKFLOW)
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as True
    assert on and "pull_request" in on
    steps = wf["jobs"]["gate"]["steps"]
    assert wf["jobs"]["gate"].get("timeout-minutes")
    runs = "\n".join(s.get("run", "") for s in steps)
    assert f"-p 127.0.0.1:{default_port}:{default_port}" in runs, "the service container publishes its port"
    assert "/readyz" in runs, "the job waits for readiness before gating"
    assert wf["env"]["GATE_URL"] == f"http://127.0.0.1:{default_port}"
    assert "GITHUB_STEP_SUMMARY" in runs
    _check_gate_lines(runs, "github-actions.yml")
    build = next(s for s in steps if str(s.get("uses", "")).startswith("docker/build-push-action"))
    assert (REPO / build["with"]["context"] / build["with"]["file"]).is_file()


def test_gitlab_job(default_port):
    ci = dc.load_yaml(dc.GITLAB_CI)
    gate = ci["sne-gate"]
    alias = gate["services"][0]["alias"]
    assert gate["services"][0]["name"] == gate["image"] == "$GATE_IMAGE"
    assert gate["variables"]["GATE_URL"] == f"http://{alias}:{default_port}"
    script = "\n".join(gate["script"])
    assert "/readyz" in script
    _check_gate_lines(script, "gitlab-ci.yml")
    assert gate["stage"] in ci["stages"] and ci["sne-image"]["stage"] in ci["stages"]
    assert ci["stages"].index(ci["sne-image"]["stage"]) < ci["stages"].index(gate["stage"])
    assert "docker build" in "\n".join(ci["sne-image"]["script"])


@pytest.mark.parametrize("path,schema,extra", [
    (dc.COMPOSE, "vendor.compose-spec", []),
    (dc.GITHUB_WORKFLOW, "vendor.github-workflows", []),
    (dc.GITLAB_CI, "vendor.gitlab-ci", ["--data-transform", "gitlab-ci"]),
], ids=["compose", "github", "gitlab"])
def test_schemas(path, schema, extra):
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.skip("check-jsonschema not installed (pip install check-jsonschema): its vendored schemas validate this file")
    r = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, *extra, str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shell_scripts_pass_shellcheck():
    """The CI jobs' scripts and the Dockerfile's RUN lines."""
    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck not on PATH (Debian: apt-get install -y shellcheck)")
    scripts = [("sh", a) for i, a in dc.dockerfile_instructions() if i == "RUN"]
    for s in dc.load_yaml(dc.GITHUB_WORKFLOW)["jobs"]["gate"]["steps"]:
        if "run" in s:
            scripts.append(("bash", re.sub(r"\$\{\{[^}]*\}\}", "X", s["run"])))
    ci = dc.load_yaml(dc.GITLAB_CI)
    for job in ("sne-image", "sne-gate"):
        scripts.append(("sh", "\n".join(ci[job]["script"])))
    for shell, body in scripts:
        r = subprocess.run([shellcheck, "-s", shell, "-"], input=body, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout
