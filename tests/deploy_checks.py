"""Plain checks of the deployment files (Dockerfile, compose, k8s, Prometheus, Grafana), reusable from tests.

Nothing here needs Docker. The heavier helpers run real tools when they are installed:
`run_prometheus` starts a real Prometheus (Debian: `apt-get install -y prometheus`) scraping a target on
loopback, and `evaluate_dashboard` runs every dashboard query against it. To check the dashboard against
the real app: serve the app on 127.0.0.1, keep traffic going, and call
`check_dashboard_against_target(target="127.0.0.1:PORT")`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # check the working tree's app/, not an installed copy
    sys.path.insert(0, str(REPO))
DASHBOARD = REPO / "deploy/grafana/dashboards/sne.json"
PROMETHEUS_YML = REPO / "deploy/prometheus/prometheus.yml"
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
K8S_DIR = REPO / "deploy/k8s"
GRAFANA_DATASOURCES = REPO / "deploy/grafana/provisioning/datasources"
GRAFANA_DASHBOARD_PROVIDERS = REPO / "deploy/grafana/provisioning/dashboards"
GITHUB_WORKFLOW = REPO / "deploy/ci/github-actions.yml"
GITLAB_CI = REPO / "deploy/ci/gitlab-ci.yml"

# Grafana's own variables, replaced by plain values when a query is run outside Grafana.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "1m", "__range": "5m", "__range_s": "300"}


# ---------------------------------------------------------------- files

def load_yaml(path: Path) -> Any:
    with open(path) as f:
        return yaml.safe_load(f)


def load_yaml_all(path: Path) -> list[Any]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def settings_env_names() -> set[str]:
    """The `SNE_*` environment variables `app.settings.Settings` reads."""
    from app.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def sne_env_names_in_text(text: str) -> set[str]:
    """Every `SNE_*` token in a file's text (keys, `${SNE_X}` interpolations, comments alike)."""
    return set(re.findall(r"\bSNE_[A-Z0-9_]+\b", text))


def settings_from_env(env: dict[str, str]):
    """Build `Settings` from the given `SNE_*` variables only (the process environment is masked)."""
    from app.settings import Settings

    saved = {k: v for k, v in os.environ.items() if k.startswith("SNE_")}
    try:
        for k in saved:
            del os.environ[k]
        os.environ.update({k: v for k, v in env.items() if k.startswith("SNE_")})
        return Settings()
    finally:
        for k in [k for k in os.environ if k.startswith("SNE_")]:
            del os.environ[k]
        os.environ.update(saved)


def compose_interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Resolve compose `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `$VAR` against `env` (default empty)."""
    env = env or {}

    def braced(m: re.Match) -> str:
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        if op in (":?", "?"):
            if not env.get(name):
                raise ValueError(f"compose variable {name} is required")
            return env[name]
        return env.get(name, "")

    value = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-|:?\?)([^}]*))?\}", braced, value)
    value = re.sub(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)", lambda m: env.get(m.group(1), ""), value)
    return value.replace("$$", "$")


def compose_environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: compose_interpolate("" if v is None else str(v)) for k, v in env.items()}


def compose_port_pairs(service: dict) -> list[tuple[int | None, int]]:
    """(published, container) for each `ports` entry (short or long syntax)."""
    pairs = []
    for p in service.get("ports") or []:
        if isinstance(p, dict):
            pairs.append((int(p["published"]) if p.get("published") else None, int(p["target"])))
            continue
        p = str(p).split("/")[0]
        parts = p.split(":")
        container = int(parts[-1])
        published = int(parts[-2]) if len(parts) >= 2 else None
        pairs.append((published, container))
    return pairs


def compose_bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(host path, container path) of each bind mount (named volumes left out)."""
    mounts = []
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            if v.get("type") == "bind":
                mounts.append((v["source"], v["target"]))
            continue
        parts = str(v).split(":")
        if len(parts) >= 2 and parts[0].startswith((".", "/", "~")):
            mounts.append((parts[0], parts[1]))
    return mounts


# ---------------------------------------------------------------- Dockerfile

def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with comments dropped and `\\` continuations joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment line inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    if buf.strip():
        instr, _, args = buf.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def dockerfile_exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form CMD/ENTRYPOINT, or None for shell form."""
    args = args.strip()
    if args.startswith("["):
        return json.loads(args)
    return None


def dockerfile_copy_sources(path: Path = DOCKERFILE) -> list[list[str]]:
    """Source lists of each COPY/ADD that reads the build context (not `--from=`)."""
    sources = []
    for instr, args in dockerfile_instructions(path):
        if instr not in ("COPY", "ADD"):
            continue
        words = args.split()
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue
        words = [w for w in words if not w.startswith("--")]
        if words and words[0].startswith("["):
            words = json.loads(args[args.index("["):])
        sources.append(words[:-1])
    return sources


def dockerignore_patterns(path: Path = DOCKERIGNORE) -> list[str]:
    pats = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            pats.append(line)
    return pats


def _dockerignore_regex(pattern: str) -> re.Pattern:
    pattern = pattern.strip("/")
    rx = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            rx += ".*"
            i += 2
            if i < len(pattern) and pattern[i] == "/":
                rx = rx[:-2] + "(?:.*/)?"
                i += 1
            continue
        rx += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(rx + r"\Z")


def dockerignored(relpath: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `relpath` out of the build context (last matching pattern wins; a pattern
    matching a parent folder excludes what is inside it)."""
    parts = relpath.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        rx = _dockerignore_regex(pat[1:] if negate else pat)
        if any(rx.match(c) for c in candidates):
            ignored = not negate
    return ignored


# ---------------------------------------------------------------- dashboard

def _walk_panels(panels: list[dict]) -> Iterator[dict]:
    for p in panels:
        yield p
        yield from _walk_panels(p.get("panels") or [])


def dashboard_targets(path: Path = DASHBOARD) -> list[tuple[dict, dict]]:
    """(panel, target) for every query target of every panel, rows' nested panels included."""
    dash = json.loads(Path(path).read_text())
    return [(p, t) for p in _walk_panels(dash.get("panels", [])) for t in p.get("targets") or [] if t.get("expr")]


def dashboard_exprs(path: Path = DASHBOARD) -> list[str]:
    return [t["expr"] for _, t in dashboard_targets(path)]


def dashboard_variable_queries(path: Path = DASHBOARD) -> dict[str, str]:
    """name -> query of the dashboard's query variables."""
    dash = json.loads(Path(path).read_text())
    out = {}
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            out[v["name"]] = q.get("query", "") if isinstance(q, dict) else (q or v.get("definition", ""))
    return out


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def promql_metric_names(expr: str) -> set[str]:
    """`sne_*` metric names in a PromQL expression (string literals such as label values ignored)."""
    return set(re.findall(r"(?<![A-Za-z0-9_:])sne_[A-Za-z0-9_:]*", _strip_strings(expr)))


def dashboard_metric_names(path: Path = DASHBOARD) -> set[str]:
    """Every `sne_*` metric name the dashboard's queries and query variables read."""
    names: set[str] = set()
    for expr in dashboard_exprs(path):
        names |= promql_metric_names(expr)
    for q in dashboard_variable_queries(path).values():
        names |= promql_metric_names(q)
    return names


def grafana_variables_used(expr: str) -> set[str]:
    return set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expr))


def substitute_grafana_variables(expr: str, values: dict[str, str]) -> str:
    """Replace `$var`, `${var}` and `[[var]]` with `values` (Grafana's builtins have defaults)."""
    allv = {**GRAFANA_BUILTINS, **values}

    def rep(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in allv:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return allv[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?\}|\$([A-Za-z_][A-Za-z0-9_]*)|\[\[([A-Za-z_][A-Za-z0-9_]*)\]\]",
                  rep, expr)


# ---------------------------------------------------------------- metrics of app.metrics

# Plausible label values for the app's labelled metrics; unknown labels get "x".
LABEL_VALUES = {
    "route": ["/v1/encode", "/v1/encode/batch", "/v1/predictor", "/healthz"],
    "method": ["POST", "GET"],
    "status": ["200", "400", "413", "503"],
    "reason": ["not_safetensors", "too_large"],
}

# Run in a fresh interpreter (so the test process's default REGISTRY is not touched): import
# app.metrics, give every metric (and every plausible label combination) an observation.
TOUCH_METRICS_CODE = r'''
import itertools, random, sys
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics import MetricWrapperBase
import app.metrics as m

LABEL_VALUES = %(label_values)r

def touch(metric):
    kind = metric._type
    upper = [b for b in getattr(metric, "_upper_bounds", []) if b != float("inf")]
    if kind == "counter":
        metric.inc()
    elif kind == "gauge":
        metric.set(random.randint(0, 8))
    elif kind in ("histogram", "summary"):
        top = upper[-1] if upper else 1.0
        for _ in range(3):
            metric.observe(random.uniform(0, top))
    elif kind == "info":
        metric.info({"name": "default", "version": "0.1.0", "trained": "true"})
    elif kind == "stateset" or kind == "enum":
        metric.state(metric._states[0])

def touch_all():
    for name in dir(m):
        metric = getattr(m, name)
        if not isinstance(metric, MetricWrapperBase):
            continue
        labels = list(metric._labelnames)
        if not labels:
            touch(metric)
            continue
        for combo in itertools.product(*[LABEL_VALUES.get(l, ["x"]) for l in labels]):
            touch(metric.labels(**dict(zip(labels, combo))))

if len(sys.argv) > 1:  # serve on 127.0.0.1:PORT with traffic going on
    import time
    from prometheus_client import start_http_server
    touch_all()
    start_http_server(int(sys.argv[1]), addr="127.0.0.1")
    while True:
        touch_all()
        time.sleep(0.1)
else:
    touch_all()
    sys.stdout.write(generate_latest(REGISTRY).decode())
'''


def _touch_code() -> str:
    return TOUCH_METRICS_CODE % {"label_values": LABEL_VALUES}


def _repo_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def touched_metrics_exposition() -> str:
    """The text `generate_latest(REGISTRY)` gives after importing app.metrics and observing every metric."""
    r = subprocess.run([sys.executable, "-c", _touch_code()], cwd=REPO, env=_repo_env(),
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"touching app.metrics failed:\n{r.stderr}")
    return r.stdout


def exported_metric_names(exposition: str) -> set[str]:
    """Sample names in a Prometheus text exposition: histograms as `_bucket`/`_sum`/`_count`, counters as `_total`."""
    from prometheus_client.parser import text_string_to_metric_families

    return {s.name for fam in text_string_to_metric_families(exposition) for s in fam.samples}


# ---------------------------------------------------------------- a real Prometheus on loopback

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = e
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


def scrape_job(prometheus_yml: Path = PROMETHEUS_YML, job: str | None = None) -> dict:
    """The scrape config of `job` (default: the one whose metrics_path is /metrics on port 8000, else the first)."""
    cfg = load_yaml(prometheus_yml)
    jobs = cfg["scrape_configs"]
    if job:
        return next(j for j in jobs if j["job_name"] == job)
    for j in jobs:
        for sc in j.get("static_configs", []):
            if any(str(t).endswith(":8000") for t in sc.get("targets", [])):
                return j
    return jobs[0]


def loopback_prometheus_config(target: str, prometheus_yml: Path = PROMETHEUS_YML, job: str | None = None,
                               interval: str = "1s") -> dict:
    """The repo's Prometheus config with the api job pointed at `target` and a short scrape interval."""
    cfg = load_yaml(prometheus_yml)
    j = dict(scrape_job(prometheus_yml, job))
    j["static_configs"] = [{**sc, "targets": [target]} for sc in j.get("static_configs", [{}])][:1]
    j["scrape_interval"] = interval
    cfg["global"] = {**cfg.get("global", {}), "scrape_interval": interval, "evaluation_interval": interval}
    cfg["scrape_configs"] = [j]
    return cfg


@contextlib.contextmanager
def run_prometheus(config: dict, prometheus: str = "prometheus") -> Iterator[str]:
    """Start a real Prometheus with `config` on a free loopback port; yields its base URL."""
    binary = shutil.which(prometheus)
    if not binary:
        raise FileNotFoundError("prometheus binary not on PATH (Debian: apt-get install -y prometheus)")
    with tempfile.TemporaryDirectory(prefix="sne-prom-") as tmp:
        cfg_path = Path(tmp) / "prometheus.yml"
        cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        log = open(Path(tmp) / "prometheus.log", "w")
        proc = subprocess.Popen(
            [binary, f"--config.file={cfg_path}", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                _wait_http(url + "/-/ready", 60, proc)
            except Exception as e:
                log.flush()
                raise RuntimeError(f"{e}\n{(Path(tmp) / 'prometheus.log').read_text()[-4000:]}") from e
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


@contextlib.contextmanager
def synthetic_metrics_target() -> Iterator[str]:
    """Serve app.metrics on 127.0.0.1 (a subprocess) with every metric observed every 0.1 s; yields host:port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", _touch_code(), str(port)], cwd=REPO, env=_repo_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_http(f"http://127.0.0.1:{port}/metrics", 60, proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def prometheus_api(base_url: str, path: str, **params: Any) -> Any:
    query = urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(f"{base_url}{path}?{query}", timeout=30) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:  # 400/422 carry the PromQL error in the body
        body = json.loads(e.read())
    return body


def wait_for_samples(base_url: str, job: str, n: int = 4, timeout: float = 90) -> None:
    """Wait until Prometheus holds `n` successful scrapes of `job` (so rate() over them has data)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = prometheus_api(base_url, "/api/v1/query", query=f'sum_over_time(up{{job="{job}"}}[5m])')
        res = last.get("data", {}).get("result", [])
        if res and float(res[0]["value"][1]) >= n:
            return
        time.sleep(0.5)
    raise TimeoutError(f"Prometheus did not scrape job {job!r} {n} times: {last}")


def _has_number(result: dict) -> bool:
    rtype, data = result["resultType"], result["result"]
    if rtype == "scalar":
        return data[1] not in ("NaN",)
    if rtype == "vector":
        return any(s["value"][1] not in ("NaN", "+Inf", "-Inf") for s in data)
    if rtype == "matrix":
        return any(v[1] not in ("NaN", "+Inf", "-Inf") for s in data for v in s["values"])
    return False


def evaluate_dashboard(base_url: str, job: str, path: Path = DASHBOARD,
                       variables: dict[str, str] | None = None) -> list[dict]:
    """Run every dashboard query (Grafana variables filled in) as a Prometheus instant query.

    Returns one record per target: panel, expr (as sent), status, error, has_data."""
    values = {"job": job, "instance": ".*", "route": ".*", "predictor": ".*", **(variables or {})}
    out = []
    for panel, t in dashboard_targets(path):
        expr = substitute_grafana_variables(t["expr"], values)
        body = prometheus_api(base_url, "/api/v1/query", query=expr)
        ok = body.get("status") == "success"
        out.append({"panel": panel.get("title"), "expr": expr, "status": body.get("status"),
                    "error": body.get("error"), "has_data": ok and _has_number(body["data"])})
    return out


def evaluate_variable_queries(base_url: str, job: str, path: Path = DASHBOARD) -> dict[str, list[str]]:
    """Values Prometheus gives for each `label_values(selector, label)` query variable."""
    out = {}
    for name, q in dashboard_variable_queries(path).items():
        m = re.fullmatch(r"\s*label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)\s*", q)
        if not m:
            raise ValueError(f"variable {name}: unsupported query {q!r}")
        selector = substitute_grafana_variables(m.group(1), {"job": job, "instance": ".*", "route": ".*", "predictor": ".*"})
        body = prometheus_api(base_url, f"/api/v1/label/{m.group(2)}/values", **{"match[]": selector})
        if body.get("status") != "success":
            raise RuntimeError(f"variable {name}: {body}")
        out[name] = body["data"]
    return out


def check_dashboard_against_target(target: str, dashboard: Path = DASHBOARD, prometheus_yml: Path = PROMETHEUS_YML,
                                   allow_empty: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Scrape `target` (host:port serving /metrics) with a real Prometheus configured from the repo's
    prometheus.yml and run every dashboard query; returns problems (empty list = all good).

    `allow_empty`: panel titles whose queries may legitimately return no data (e.g. no rejected upload sent)."""
    job = scrape_job(prometheus_yml)["job_name"]
    problems = []
    with run_prometheus(loopback_prometheus_config(target, prometheus_yml)) as url:
        wait_for_samples(url, job)
        for rec in evaluate_dashboard(url, job, dashboard):
            if rec["status"] != "success":
                problems.append(f"{rec['panel']}: invalid query {rec['expr']!r}: {rec['error']}")
            elif not rec["has_data"] and rec["panel"] not in allow_empty:
                problems.append(f"{rec['panel']}: no data for {rec['expr']!r}")
        for name, vals in evaluate_variable_queries(url, job, dashboard).items():
            if not vals:
                problems.append(f"variable ${name}: no values")
    return problems
