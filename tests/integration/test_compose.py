#!/usr/bin/env python3
"""Checks the deployment files without a Docker engine: compose, Prometheus, Grafana,
the image's runtime packages and the systemd unit agree with each other and the code."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

SRC = os.environ.get("TG_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("TG_BUILD_DIR") or os.path.join(SRC, "build")
DOCKER = os.path.join(SRC, "docker")
COMPOSE = os.path.join(DOCKER, "docker-compose.yml")
COMPOSE_CONFIG = os.path.join(SRC, "config", "tollgate.compose.yaml")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def declared_metrics():
    """{name: type} from the TG_METRICS X-macro in metrics.h."""
    text = read(os.path.join(SRC, "include", "tollgate", "metrics.h"))
    found = dict((n, t) for t, n in re.findall(r'X\(\w+,\s*(counter|gauge|histogram),\s*"(\w+)"', text))
    assert found, "no metrics found in metrics.h"
    return found


def drain_timeout_ms(config_text):
    m = re.search(r"^\s*drain_timeout_ms:\s*(\d+)", config_text, re.M)
    if m:
        return int(m.group(1))
    header = read(os.path.join(SRC, "include", "tollgate", "config.h"))
    return int(re.search(r"TG_DEFAULT_DRAIN_TIMEOUT_MS (\d+)", header).group(1))


class Compose(unittest.TestCase):
    def test_compose_file_valid(self):
        exe = shutil.which("docker-compose")
        if exe is None:
            if os.environ.get("CI") == "true":  # scripts/install-deps.sh installs it
                self.fail("docker-compose not installed: compose file not validated")
            self.skipTest("docker-compose not installed: compose file not validated")
        env = dict(os.environ, GRAFANA_ADMIN_PASSWORD="x")
        r = subprocess.run([exe, "-f", COMPOSE, "config", "-q"], capture_output=True, text=True,
                           env=env, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stderr.strip(), "", "warnings from docker-compose config")
        r = subprocess.run([exe, "-f", COMPOSE, "config", "--services"], capture_output=True,
                           text=True, env=env, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(set(r.stdout.split()),
                         {"redis", "kafka", "mock", "tollgate", "prometheus", "grafana"})

    def test_config_points_at_compose_services(self):
        cfg = read(COMPOSE_CONFIG)
        compose = read(COMPOSE)
        self.assertRegex(cfg, r"backend:\s*redis\b")
        self.assertRegex(cfg, r"host:\s*redis\b")
        self.assertRegex(cfg, r"sink:\s*kafka\b")
        self.assertRegex(cfg, r'brokers:\s*"kafka:9092"')
        self.assertRegex(cfg, r'url:\s*"http://mock:8081"')
        self.assertIn('"0.0.0.0:8081"', compose)  # mock listens where the config looks
        admin = re.search(r'admin:\s*\n\s*listen:\s*"0\.0\.0\.0:(\d+)"', cfg)
        self.assertIsNotNone(admin, "admin must listen on 0.0.0.0 inside compose")
        port = admin.group(1)
        self.assertIn('"tollgate:%s"' % port, read(os.path.join(DOCKER, "prometheus.yml")))
        self.assertIn("http://127.0.0.1:%s/healthz" % port, read(os.path.join(DOCKER, "Dockerfile")))
        self.assertIn("../config/tollgate.compose.yaml:/etc/tollgate/tollgate.yaml", compose)
        # The stop grace period outlasts the drain and the usage flush after it.
        grace = re.search(r"stop_grace_period:\s*(\d+)s", compose)
        self.assertIsNotNone(grace)
        self.assertGreater(int(grace.group(1)) * 1000, 2 * drain_timeout_ms(cfg))

    def test_config_accepted_by_check(self):
        exe = os.path.join(BUILD, "tollgate")
        if not os.access(exe, os.X_OK):
            self.skipTest("%s not built" % exe)
        # Compose host names do not resolve here: check the same file on loopback.
        cfg = read(COMPOSE_CONFIG)
        cfg = re.sub(r"host:\s*redis\b", "host: 127.0.0.1", cfg)
        cfg = cfg.replace("http://mock:8081", "http://127.0.0.1:8081")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "tollgate.yaml")
            with open(path, "w") as f:
                f.write(cfg)
            r = subprocess.run([exe, "--check", "-c", path], capture_output=True, text=True,
                               timeout=30, cwd=d)
        out = r.stdout + r.stderr
        self.assertEqual(r.returncode, 0, out)
        self.assertIn("configuration ok", r.stdout)
        self.assertIn("small", r.stdout)  # a tenant of the compose config, as --check prints it


class Prometheus(unittest.TestCase):
    def test_prometheus_config_valid(self):
        exe = shutil.which("promtool")
        if exe is None:
            if os.environ.get("CI") == "true":  # scripts/install-deps.sh installs prometheus
                self.fail("promtool not installed")
            self.skipTest("promtool not installed")
        r = subprocess.run([exe, "check", "config", os.path.join(DOCKER, "prometheus.yml")],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


class Grafana(unittest.TestCase):
    def setUp(self):
        with open(os.path.join(DOCKER, "grafana", "dashboards", "tollgate.json")) as f:
            self.dash = json.load(f)

    def exprs(self):
        return [(p["title"], t["expr"]) for p in self.dash["panels"] for t in p.get("targets", [])]

    def test_dashboard_uses_declared_metrics(self):
        metrics = declared_metrics()
        self.assertGreaterEqual(len(self.exprs()), 6)
        for title, expr in self.exprs():
            names = re.findall(r"\btollgate_\w+", expr)
            self.assertTrue(names, "%s: no tollgate metric in %s" % (title, expr))
            for n in names:
                base = re.sub(r"_(bucket|sum|count)$", "", n)
                if base != n:
                    self.assertEqual(metrics.get(base), "histogram", "%s: %s" % (title, n))
                else:
                    self.assertIn(n, metrics, "%s: unknown metric %s" % (title, n))
                    self.assertNotEqual(metrics[n], "histogram", "%s: use %s_bucket" % (title, n))
            self.assertEqual(expr.count("("), expr.count(")"), "%s: %s" % (title, expr))

    def test_dashboard_has_required_panels(self):
        joined = "\n".join(e for _, e in self.exprs())
        for needle in ("tollgate_requests_total", "tollgate_ratelimited_total",
                       "tollgate_tokens_total", "histogram_quantile(0.5, sum by (le) (rate(tollgate_request_duration_seconds_bucket",
                       "histogram_quantile(0.99, sum by (le) (rate(tollgate_request_duration_seconds_bucket",
                       "tollgate_spool_bytes", "tollgate_kafka_queue_messages"):
            self.assertIn(needle, joined)
        ids = [p["id"] for p in self.dash["panels"]]
        self.assertEqual(len(ids), len(set(ids)), "panel ids repeat")

    def test_provisioning_matches(self):
        ds = read(os.path.join(DOCKER, "grafana", "provisioning", "datasources", "prometheus.yml"))
        uid = re.search(r"uid:\s*(\S+)", ds).group(1)
        self.assertIn("url: http://prometheus:9090", ds)
        for p in self.dash["panels"]:
            self.assertEqual(p["datasource"]["uid"], uid, p["title"])
        prov = read(os.path.join(DOCKER, "grafana", "provisioning", "dashboards", "tollgate.yml"))
        path = re.search(r"path:\s*(\S+)", prov).group(1)
        self.assertIn("./grafana/dashboards:%s" % path, read(COMPOSE))


class Image(unittest.TestCase):
    def runtime_packages(self):
        text = read(os.path.join(DOCKER, "Dockerfile"))
        final = text[text.rindex("\nFROM "):]
        m = re.search(r"apt-get install -y --no-install-recommends\s*\\\n(.*?)\n \&\&", final, re.S)
        self.assertIsNotNone(m, "no apt-get install in the runtime stage")
        return set(m.group(1).replace("\\", " ").split())

    def test_runtime_stage_has_no_dev_packages(self):
        pkgs = self.runtime_packages()
        self.assertFalse([p for p in pkgs if p.endswith("-dev")], pkgs)
        self.assertIn("curl", pkgs)  # HEALTHCHECK
        self.assertIn("ca-certificates", pkgs)  # https upstreams

    def test_runtime_stage_covers_linked_libraries(self):
        exe = os.path.join(BUILD, "tollgate")
        if not os.access(exe, os.X_OK) or shutil.which("objdump") is None or shutil.which("dpkg") is None:
            self.skipTest("needs a built tollgate, objdump and dpkg")
        pkgs = self.runtime_packages()
        needed = re.findall(r"NEEDED\s+(\S+)", subprocess.run(
            ["objdump", "-p", exe], capture_output=True, text=True, check=True).stdout)
        ldd = subprocess.run(["ldd", exe], capture_output=True, text=True).stdout
        base = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}  # in debian:12-slim already
        missing = []
        for soname in needed:
            if re.match(r"lib(a|ub|l|t)san\.so", soname):
                continue  # a sanitizer build; the image is built without them
            m = re.search(r"^\s*%s => (\S+)" % re.escape(soname), ldd, re.M)
            if not m:
                continue
            r = subprocess.run(["dpkg", "-S", os.path.realpath(m.group(1))], capture_output=True, text=True)
            if r.returncode != 0:
                r = subprocess.run(["dpkg", "-S", m.group(1)], capture_output=True, text=True)
            if r.returncode != 0:
                continue  # not from a Debian package (a local build): nothing to check
            pkg = r.stdout.split(":")[0]
            if pkg not in pkgs and pkg not in base:
                missing.append("%s (%s)" % (pkg, soname))
        self.assertFalse(missing, "runtime stage of docker/Dockerfile lacks: " + ", ".join(missing))


class Systemd(unittest.TestCase):
    def setUp(self):
        self.unit = read(os.path.join(DOCKER, "tollgate.service"))

    def test_stop_timeout_outlasts_drain(self):
        m = re.search(r"^TimeoutStopSec=(\d+)s?$", self.unit, re.M)
        self.assertIsNotNone(m)
        self.assertGreater(int(m.group(1)) * 1000, 2 * drain_timeout_ms(""))
        for line in ("Type=simple", "ExecStart=/usr/bin/tollgate -c /etc/tollgate/tollgate.yaml",
                     "ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGTERM", "NoNewPrivileges=yes",
                     "ProtectSystem=strict", "ReadWritePaths=/var/lib/tollgate", "LimitNOFILE=1048576"):
            self.assertIn("\n" + line + "\n", self.unit)

    def test_unit_verifies(self):
        exe = shutil.which("systemd-analyze")
        if exe is None:
            self.skipTest("systemd-analyze not installed")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "tollgate.service")
            with open(path, "w") as f:
                f.write(self.unit.replace("/usr/bin/tollgate", "/bin/true"))
            r = subprocess.run([exe, "verify", path], capture_output=True, text=True, timeout=60)
        out = (r.stdout + r.stderr).strip()
        if r.returncode != 0 and ("System has not been booted" in out or "Failed to connect" in out):
            self.skipTest("systemd-analyze cannot run here: " + out[:120])
        self.assertEqual(r.returncode, 0, out)
        self.assertEqual(out, "")


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    for test, why in result.skipped:
        print("SKIP %s: %s" % (test.id(), why))
    sys.exit(0 if result.wasSuccessful() else 1)
