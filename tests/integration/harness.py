"""Integration-test harness for tollgate: processes (redis-server, the mock model server, the
Kafka mock broker, stunnel, tollgate itself), a raw-socket HTTP/1.1 client with an SSE
reader, a strict RFC 9112 message reader (read_message) and a raw upstream that records
the bytes it receives (RawUpstream), and a tiny test runner. Python 3 standard library
only.

A test file defines test_* functions (optionally setup_module/teardown_module) and ends
with `harness.main()`. Every test gets its own temp dir (tmpdir()); every process a test
starts is stopped when the test ends, pass or fail, and every process at all at exit.
"""

import atexit
import ctypes
import json as _json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

SOURCE_DIR = os.environ.get("TG_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD_DIR = os.environ.get("TG_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")
LOCALHOST = "127.0.0.1"
# Start/stop bounds; sanitizer builds are slower, so allow overriding.
START_TIMEOUT = float(os.environ.get("TG_START_TIMEOUT", "15"))
STOP_TIMEOUT = float(os.environ.get("TG_STOP_TIMEOUT", "10"))
TEST_TIMEOUT = float(os.environ.get("TG_TEST_TIMEOUT", "120"))

SANITIZER_PATTERNS = (b"ERROR: AddressSanitizer", b"ERROR: LeakSanitizer",
                      b"runtime error:", b"WARNING: ThreadSanitizer",
                      b"ERROR: UndefinedBehaviorSanitizer")


class StartError(RuntimeError):
    """A process did not become ready (exited, or timed out)."""


class ProtocolError(ConnectionError):
    """The peer broke HTTP framing or closed before a message was complete."""


class RedisError(Exception):
    """An error reply from Redis."""


# ---------------------------------------------------------------------------
# small helpers

def build_path(name):
    """Path of a program in the build dir (TG_BUILD_DIR)."""
    return os.path.join(BUILD_DIR, name)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def port_open(port, host=LOCALHOST, timeout=0.2):
    """True if a TCP connect to host:port succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(fn, timeout=5.0, interval=0.02, what=None):
    """Calls fn until it returns something truthy and returns that; raises AssertionError
    after timeout seconds (naming `what` and the last value). Exceptions from fn count as
    a falsy result until the deadline, then propagate."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except Exception:
            if time.monotonic() >= deadline:
                raise
        if time.monotonic() >= deadline:
            name = what or getattr(fn, "__name__", "condition")
            raise AssertionError("timed out after %.1fs waiting for %s (last value %r)"
                                 % (timeout, name, last))
        time.sleep(interval)


def wait_port(port, timeout=START_TIMEOUT, host=LOCALHOST):
    """Waits until host:port accepts a connection."""
    return wait_until(lambda: port_open(port, host), timeout, what="port %d" % port)


def read_jsonl(path):
    """The JSON objects of a JSON-lines file (an incomplete last line is skipped);
    [] if the file does not exist."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n"):
        if line.strip():
            try:
                out.append(_json.loads(line))
            except ValueError:
                pass
    return out


# ---------------------------------------------------------------------------
# per-test temp dirs and process registry

_session_dir = None
_test_dir = None
_all_procs = []      # every live Process
_test_procs = None   # processes started by the running test (None outside a test)
_module_procs = []   # processes started outside any test (setup_module), checked at exit
_test_servers = None  # in-process servers (RawUpstream) started by the running test, closed at its end
_module_servers = []  # those started outside any test, closed at exit


def session_dir():
    """A temp dir for the whole test file (removed at exit unless TG_KEEP_TMP=1 or a test failed)."""
    global _session_dir
    if _session_dir is None:
        script = os.path.splitext(os.path.basename(sys.argv[0] or "harness"))[0]
        _session_dir = tempfile.mkdtemp(prefix="tg-%s-" % script)
    return _session_dir


def tmpdir():
    """The running test's own temp dir (the session dir outside a test)."""
    return _test_dir or session_dir()


def _unique_path(directory, name, suffix):
    path = os.path.join(directory, name + suffix)
    i = 1
    while os.path.exists(path):
        i += 1
        path = os.path.join(directory, "%s.%d%s" % (name, i, suffix))
    return path


def _child_setup():
    # Die with the runner even if it is SIGKILLed (a CTest timeout).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def cleanup_all():
    """Stops every process still running (atexit; safe to call more than once)."""
    for p in list(_all_procs):
        try:
            p.stop(timeout=3)
        except Exception:
            pass


atexit.register(cleanup_all)


class Process:
    """A program run for a test. start() launches it and waits until it is ready:
    `ready_line` (a regex matched against its stdout lines; the match is kept in
    self.ready_match) and/or `ready_port` (a TCP port that must accept). stderr goes to
    a file in the test's temp dir (stderr_path); stdout is a pipe when ready_line is
    given (read more with read_line()), else a file (stdout_path)."""

    def __init__(self, argv, name=None, ready_line=None, ready_port=None, env=None, cwd=None,
                 start_timeout=None, stop_timeout=None):
        self.argv = [str(a) for a in argv]
        self.name = name or os.path.basename(self.argv[0])
        self.ready_line = re.compile(ready_line) if isinstance(ready_line, str) else ready_line
        self.ready_port = ready_port
        self.env = env
        self.cwd = cwd
        self.start_timeout = start_timeout or START_TIMEOUT
        self.stop_timeout = stop_timeout or STOP_TIMEOUT
        self.proc = None
        self.ready_match = None
        self.stdout_lines = []
        self.stderr_path = None
        self.stdout_path = None
        self._outbuf = b""
        self._stopped_sig = False

    # -- lifecycle

    def start(self):
        """Launches the program and waits until it is ready; raises StartError (with the
        tail of its stderr) if it exits or is not ready within start_timeout."""
        d = tmpdir()
        self.stderr_path = _unique_path(d, self.name, ".stderr")
        env = dict(os.environ)
        if self.env:
            env.update({k: str(v) for k, v in self.env.items()})
        err = open(self.stderr_path, "wb")
        if self.ready_line is not None:
            out = subprocess.PIPE
        else:
            self.stdout_path = _unique_path(d, self.name, ".stdout")
            out = open(self.stdout_path, "wb")
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         cwd=self.cwd or d, env=env, preexec_fn=_child_setup,
                                         start_new_session=True)
        finally:
            err.close()
            if out is not subprocess.PIPE:
                out.close()
        self._outbuf = b""
        self._stopped_sig = False
        self.ready_match = None
        _all_procs.append(self)
        if _test_procs is not None:
            _test_procs.append(self)
        elif self not in _module_procs:
            _module_procs.append(self)
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self):
        deadline = time.monotonic() + self.start_timeout
        if self.ready_line is not None:
            while self.ready_match is None:
                line = self.read_line(max(0.0, deadline - time.monotonic()))
                if line is None:
                    self._fail("no line matching %r on stdout within %.1fs"
                               % (self.ready_line.pattern, self.start_timeout))
                self.ready_match = self.ready_line.search(line)
        if self.ready_port is not None:
            while not port_open(self.ready_port):
                if self.proc.poll() is not None:
                    self._fail("exited with status %s before port %d accepted"
                               % (self.proc.returncode, self.ready_port))
                if time.monotonic() > deadline:
                    self._fail("port %d did not accept within %.1fs" % (self.ready_port, self.start_timeout))
                time.sleep(0.02)

    def _fail(self, why):
        time.sleep(0.05)
        raise StartError("%s: %s\n--- %s (tail)\n%s" % (self.name, why, self.stderr_path,
                                                       self.stderr_tail(40)))

    def read_line(self, timeout):
        """Next stdout line (str, without newline), None if none came within timeout;
        raises StartError if stdout closed (the process exited)."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._outbuf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                self.proc.wait(timeout=self.stop_timeout)
                self._fail("stdout closed (exit status %s)" % self.proc.returncode)
            self._outbuf += chunk
        line, self._outbuf = self._outbuf.split(b"\n", 1)
        text = line.decode("utf-8", "replace").rstrip("\r")
        self.stdout_lines.append(text)
        return text

    def wait_line(self, pattern, timeout=5.0):
        """Reads stdout lines until one matches the regex; returns the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            line = self.read_line(max(0.0, deadline - time.monotonic()))
            if line is None:
                raise AssertionError("%s: no stdout line matching %r within %.1fs" % (self.name, pattern, timeout))
            m = rx.search(line)
            if m:
                return m

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def returncode(self):
        """Exit status (negative: killed by that signal), None while it runs."""
        return self.proc.poll() if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout=None):
        """Waits for the process to exit; returns its status (raises TimeoutError)."""
        try:
            return self.proc.wait(timeout=timeout if timeout is not None else self.stop_timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError("%s (pid %d) still running after %ss" % (self.name, self.proc.pid, timeout))

    def stop(self, timeout=None, sig=signal.SIGTERM):
        """Sends sig (SIGTERM), SIGKILL if it is still running after timeout (stop_timeout);
        returns the exit status. No-op on a process already gone."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if self._stopped_sig:
                self.proc.send_signal(signal.SIGCONT)
                self._stopped_sig = False
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout if timeout is not None else self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._release()
        return self.proc.returncode

    def kill(self):
        """SIGKILL and reap; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._release()
        return self.proc.returncode

    def _release(self):
        if self.proc.stdout:
            self.proc.stdout.close()
        if self in _all_procs:
            _all_procs.remove(self)

    def sigstop(self):
        """Freezes the process (SIGSTOP): its sockets stay open but nothing answers."""
        self.send_signal(signal.SIGSTOP)
        self._stopped_sig = True

    def sigcont(self):
        self.send_signal(signal.SIGCONT)
        self._stopped_sig = False

    # -- output

    def stderr_bytes(self):
        if not self.stderr_path:
            return b""
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    @property
    def stderr(self):
        """Everything the process wrote to stderr so far (text)."""
        return self.stderr_bytes().decode("utf-8", "replace")

    def stderr_tail(self, n=30):
        return "\n".join(self.stderr.splitlines()[-n:])

    def sanitizer_errors(self):
        """Lines of sanitizer reports (ASan, LSan, UBSan) in its stderr."""
        return [l.decode("utf-8", "replace") for l in self.stderr_bytes().splitlines()
                if any(p in l for p in SANITIZER_PATTERNS)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------------------
# Redis

def _resp_encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if not isinstance(a, bytes):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _resp_read(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ProtocolError("redis: connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode("utf-8", "surrogateescape")
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [_resp_read(f) for _ in range(n)]
    raise ProtocolError("redis: unexpected reply %r" % line)


class RedisClient:
    """A plain RESP connection: cmd(*args) returns str/int/None/list or raises RedisError;
    pipeline(cmds) sends many commands at once and returns their replies (errors as
    RedisError objects, not raised)."""

    def __init__(self, port, host=LOCALHOST, timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.f = self.sock.makefile("rb")

    def cmd(self, *args):
        self.sock.sendall(_resp_encode(args))
        r = _resp_read(self.f)
        if isinstance(r, RedisError):
            raise r
        return r

    def pipeline(self, cmds):
        self.sock.sendall(b"".join(_resp_encode(c) for c in cmds))
        return [_resp_read(self.f) for _ in cmds]

    def close(self):
        self.f.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RedisServer(Process):
    """A real redis-server on 127.0.0.1 (free port unless given), no persistence."""

    def __init__(self, port=None, args=(), name="redis"):
        self.port = port or free_port()
        self.extra_args = list(args)
        super().__init__(self._argv(), name=name, ready_port=self.port)

    def _argv(self):
        return ["redis-server", "--port", self.port, "--bind", LOCALHOST, "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--logfile", "", "--protected-mode", "no",
                ] + self.extra_args

    def start(self):
        self.argv = [str(a) for a in self._argv()]
        super().start()
        wait_until(lambda: self.cli("PING") == "PONG", self.start_timeout, what="redis PING")
        return self

    def cli(self, *args, timeout=5.0):
        """One command on a fresh connection: cli("GET", "k"). Raises RedisError on an error reply."""
        with RedisClient(self.port, timeout=timeout) as c:
            return c.cmd(*args)

    def client(self, timeout=5.0):
        """A persistent RedisClient (close it, or use it in a with block)."""
        return RedisClient(self.port, timeout=timeout)

    def restart(self):
        """Stops and starts again on the same port (data is gone: no persistence)."""
        self.stop()
        return wait_until(lambda: self._try_start(), self.start_timeout, what="redis restart")

    def _try_start(self):
        try:
            self.start()
            return True
        except StartError:
            return False

    @property
    def url(self):
        return "redis://%s:%d" % (LOCALHOST, self.port)


# ---------------------------------------------------------------------------
# mock model server, Kafka broker, stunnel

class MockModel(Process):
    """BUILD_DIR/mock_model on 127.0.0.1 (free port unless given). See its header for the
    knobs (x-mock-* request headers)."""

    def __init__(self, port=0, threads=1, name="mock_model"):
        argv = [build_path("mock_model"), "--listen", "%s:%d" % (LOCALHOST, port)]
        if threads > 1:
            argv += ["--threads", threads]
        super().__init__(argv, name=name, ready_line=r"^LISTENING (\d+)$")
        self.port = port

    def start(self):
        super().start()
        self.port = int(self.ready_match.group(1))
        return self

    @property
    def url(self):
        return "http://%s:%d" % (LOCALHOST, self.port)

    def stats(self):
        """{"requests", "connections", "open_connections", "cancelled"} from GET /__stats."""
        return request(self.port, "GET", "/__stats").json()

    def reset(self):
        """POST /__reset: zeroes requests/connections/cancelled and forgets the last request."""
        request(self.port, "POST", "/__reset")

    def last(self):
        """The last model request as {"method","url","path","query","version","headers"
        (lower-case name -> value, repeats joined by ", "),"header_list" ([name, value] as
        received),"body","body_length"}; None if there was none."""
        r = request(self.port, "GET", "/__last")
        return r.json() if r.status == 200 else None


class KafkaBroker(Process):
    """BUILD_DIR/kafka_broker: librdkafka's mock cluster with the given topic(s) created."""

    def __init__(self, topic="tollgate.usage", partitions=3, brokers=1, verbose=False, name="kafka_broker",
                 rtt_ms=0):
        topics = [topic] if isinstance(topic, str) else list(topic)
        argv = [build_path("kafka_broker"), "--partitions", partitions, "--brokers", brokers]
        if rtt_ms:
            argv += ["--rtt", rtt_ms]  # every answer that late: records stay in flight
        for t in topics:
            argv += ["--topic", t]
        if verbose:
            argv.append("--verbose")
        super().__init__(argv, name=name, ready_line=r"^BOOTSTRAP (\S+)$")
        self.topic = topics[0]
        self.topics = topics
        self.bootstrap = None
        self.is_down = False

    def start(self):
        super().start()
        self.bootstrap = self.ready_match.group(1)
        self.is_down = False
        return self

    def down(self, timeout=5.0):
        """Takes every broker down (connections dropped, new ones refused) and waits for it."""
        self.send_signal(signal.SIGUSR1)
        self.wait_line(r"^DOWN$", timeout)
        self.is_down = True

    def up(self, timeout=5.0):
        """Brings every broker back up and waits for it."""
        self.send_signal(signal.SIGUSR2)
        self.wait_line(r"^UP$", timeout)
        self.is_down = False

    def consume(self, n=0, timeout=5.0, topic=None):
        return consume(self.bootstrap, topic or self.topic, n, timeout)

    def produce(self, items, timeout=10.0, topic=None):
        return produce(self.bootstrap, topic or self.topic, items, timeout)


def consume(bootstrap, topic, n=0, timeout=5.0):
    """Reads topic from the beginning with BUILD_DIR/kafka_consume: returns [(key, value)]
    (str) after n messages (n=0: all) or once none arrived for `timeout` seconds."""
    argv = [build_path("kafka_consume"), "-b", bootstrap, "-t", topic, "-n", str(n),
            "--timeout-ms", str(int(timeout * 1000))]
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout + 60,
                       preexec_fn=_child_setup)
    if r.returncode != 0:
        raise RuntimeError("kafka_consume failed (%d): %s" % (r.returncode, r.stderr.decode(errors="replace")))
    out = []
    for line in r.stdout.decode("utf-8", "replace").split("\n"):
        if line:
            k, _, v = line.partition("\t")
            out.append((k, v))
    return out


def produce(bootstrap, topic, items, timeout=10.0):
    """Writes [(key, value)] (or plain values) to topic; returns how many were delivered
    within timeout."""
    lines = []
    for it in items:
        if isinstance(it, tuple):
            lines.append("%s\t%s" % it)
        else:
            lines.append(str(it))
    argv = [build_path("kafka_consume"), "-b", bootstrap, "-t", topic, "--produce",
            "--timeout-ms", str(int(timeout * 1000))]
    r = subprocess.run(argv, input="\n".join(lines).encode() + b"\n", capture_output=True,
                       timeout=timeout + 60, preexec_fn=_child_setup)
    m = re.search(rb"PRODUCED (\d+)", r.stdout)
    return int(m.group(1)) if m else 0


_cert = None


def self_signed_cert():
    """(cert_path, key_path) of a self-signed EC certificate for localhost / 127.0.0.1,
    made once per test file with the openssl CLI."""
    global _cert
    if _cert is None:
        d = os.path.join(session_dir(), "tls")
        os.makedirs(d, exist_ok=True)
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=30)
        _cert = (cert, key)
    return _cert


class Stunnel(Process):
    """stunnel4 as a TLS front for 127.0.0.1:target_port, on its own free port. `port` is
    where to connect with TLS; `cert` the self-signed certificate (a CA file for clients)."""

    def __init__(self, target_port, name="stunnel"):
        self.target_port = target_port
        self.port = free_port()
        self.cert, self.key = self_signed_cert()
        exe = shutil.which("stunnel4") or shutil.which("stunnel") or "stunnel4"
        self.conf_path = None
        super().__init__([exe], name=name, ready_port=self.port)

    def start(self):
        self.conf_path = _unique_path(tmpdir(), self.name, ".conf")
        with open(self.conf_path, "w") as f:
            f.write("foreground = yes\npid =\ndebug = 5\n\n[tg]\naccept = %s:%d\nconnect = %s:%d\n"
                    "cert = %s\nkey = %s\n" % (LOCALHOST, self.port, LOCALHOST, self.target_port,
                                                self.cert, self.key))
        self.argv = [self.argv[0], self.conf_path]
        return super().start()

    @property
    def url(self):
        return "https://%s:%d" % (LOCALHOST, self.port)


# ---------------------------------------------------------------------------
# tollgate

def to_yaml(obj, indent=0):
    """Block YAML for dicts/lists/scalars (strings double-quoted JSON-style)."""
    pad = " " * indent
    lines = []

    def scalar(v):
        if v is True:
            return "true"
        if v is False:
            return "false"
        if v is None:
            return "null"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, dict) and not v:
            return "{}"
        if isinstance(v, list) and not v:
            return "[]"
        return _json.dumps(str(v))

    def key(k):
        return k if re.match(r"^[A-Za-z0-9_.-]+$", str(k)) else _json.dumps(str(k))

    def nested(v):
        return (isinstance(v, dict) and v) or (isinstance(v, list) and v)

    if isinstance(obj, dict):
        for k, v in obj.items():
            if nested(v):
                lines.append("%s%s:" % (pad, key(k)))
                lines.append(to_yaml(v, indent + 2))
            else:
                lines.append("%s%s: %s" % (pad, key(k), scalar(v)))
    elif isinstance(obj, list):
        for v in obj:
            if nested(v):
                sub = to_yaml(v, indent + 2)
                lines.append(pad + "- " + sub[indent + 2:])
            else:
                lines.append("%s- %s" % (pad, scalar(v)))
    else:
        lines.append(pad + scalar(obj))
    return "\n".join(lines)


def deep_merge(base, over):
    """base updated by over, recursively for dicts (lists and scalars replace)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


TEST_KEY = "sk-test-acme"


def tollgate_config(upstream_url, **sections):
    """A config dict for tests: one upstream "mock" at upstream_url, routes for the five
    model endpoints, tenant "acme" with key TEST_KEY and generous limits, usage to
    var/usage.jsonl (relative to the test dir). Keyword sections are deep-merged on top
    (e.g. limiter={"backend": "redis", ...}); tenants=[...] replaces the tenant list."""
    cfg = {
        "server": {"workers": 1},
        "log": {"level": "info"},
        "usage": {"sink": "file", "file": {"path": "var/usage.jsonl"}},
        "upstreams": [{"name": "mock", "url": upstream_url}],
        "routes": [
            {"path": "/v1/chat/completions", "upstream": "mock", "cost": "tokens"},
            {"path": "/v1/completions", "upstream": "mock", "cost": "tokens"},
            {"path": "/v1/embeddings", "upstream": "mock", "cost": "tokens"},
            {"path": "/v1/videos", "upstream": "mock", "cost": "video"},
            {"path": "/v1/models", "upstream": "mock", "cost": "requests"},
        ],
        "tenants": [{
            "name": "acme",
            "keys": [TEST_KEY],
            "limits": [
                {"name": "rpm", "unit": "requests", "rate": 100000, "per": "minute"},
                {"name": "tpm", "unit": "tokens", "rate": 10000000, "per": "minute"},
                {"name": "vsd", "unit": "video_seconds", "rate": 100000, "per": "day"},
            ],
        }],
    }
    return deep_merge(cfg, sections)


class Tollgate(Process):
    """BUILD_DIR/tollgate -c <tmpdir>/tollgate.yaml, run with the test dir as cwd.

    config is YAML text or a dict (see tollgate_config). In text, @PORT@, @ADMIN_PORT@
    and @TMP@ are replaced by the listen port, the admin port and the test dir, and
    @NAME@ by str(subst["NAME"]). A dict gets server.listen/admin.listen filled in when
    absent. start() waits until the listen port (and the admin port) accept."""

    def __init__(self, config, port=None, admin_port=None, args=(), env=None, subst=None, name="tollgate",
                 wait_admin=True):
        self.port = port or free_port()
        self.admin_port = admin_port or free_port()
        if isinstance(config, dict):
            config = deep_merge(config, {})
            config.setdefault("server", {})
            config["server"] = dict(config["server"])
            config["server"].setdefault("listen", "%s:%d" % (LOCALHOST, self.port))
            config.setdefault("admin", {})
            config["admin"] = dict(config["admin"])
            config["admin"].setdefault("listen", "%s:%d" % (LOCALHOST, self.admin_port))
            text = to_yaml(config) + "\n"
        else:
            text = config
        text = text.replace("@PORT@", str(self.port)).replace("@ADMIN_PORT@", str(self.admin_port))
        for k, v in (subst or {}).items():
            text = text.replace("@%s@" % k, str(v))
        self.config_text = text
        self.config_path = None
        self.extra_args = [str(a) for a in args]
        self.wait_admin = wait_admin and ("%s:%d" % (LOCALHOST, self.admin_port)) in text
        super().__init__([build_path("tollgate")], name=name, ready_port=self.port, env=env)

    def write_config(self, text=None):
        """(Re)writes the config file (text given: replaces the current config text first)."""
        if text is not None:
            self.config_text = text.replace("@PORT@", str(self.port)).replace("@ADMIN_PORT@", str(self.admin_port))
        d = tmpdir()
        os.makedirs(os.path.join(d, "var"), exist_ok=True)
        if self.config_path is None:
            self.config_path = _unique_path(d, self.name, ".yaml")
        self.config_text = self.config_text.replace("@TMP@", d)
        with open(self.config_path, "w") as f:
            f.write(self.config_text)
        return self.config_path

    def start(self):
        self.write_config()
        self.argv = [self.argv[0], "-c", self.config_path] + self.extra_args
        super().start()
        if self.wait_admin:
            deadline = time.monotonic() + self.start_timeout
            while not port_open(self.admin_port):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    self._fail("admin port %d did not accept" % self.admin_port)
                time.sleep(0.02)
        return self

    def reload(self, text=None):
        """Optionally rewrites the config, then SIGHUP."""
        if text is not None:
            self.write_config(text)
        self.send_signal(signal.SIGHUP)

    def term(self, timeout=None):
        """SIGTERM and wait (SIGKILL after the bound); returns the exit status."""
        return self.stop(timeout=timeout)

    @property
    def url(self):
        return "http://%s:%d" % (LOCALHOST, self.port)

    @property
    def usage_path(self):
        return os.path.join(tmpdir(), "var", "usage.jsonl")

    def request(self, method, path, **kw):
        """request() against the front listener."""
        return request(self.port, method, path, **kw)

    def admin(self, path, **kw):
        """GET path on the admin listener."""
        return request(self.admin_port, "GET", path, **kw)

    def metrics(self):
        """The /metrics page parsed: {'name{labels}': value}."""
        out = {}
        for line in self.admin("/metrics").text.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                try:
                    out[k] = float(v)
                except ValueError:
                    pass
        return out

    @staticmethod
    def check(config_text, args=()):
        """Runs `tollgate --check -c FILE` on the text; returns (status, stdout, stderr)."""
        path = _unique_path(tmpdir(), "check", ".yaml")
        with open(path, "w") as f:
            f.write(config_text)
        r = subprocess.run([build_path("tollgate"), "--check", "-c", path] + list(args), capture_output=True,
                           timeout=30, cwd=tmpdir(), preexec_fn=_child_setup)
        return r.returncode, r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")


# ---------------------------------------------------------------------------
# HTTP/1.1 client on raw sockets

class Headers:
    """Response headers in order; lookups are case-insensitive."""

    def __init__(self, items=()):
        self._items = list(items)

    def get(self, name, default=None):
        n = name.lower()
        for k, v in self._items:
            if k.lower() == n:
                return v
        return default

    def get_all(self, name):
        n = name.lower()
        return [v for k, v in self._items if k.lower() == n]

    def __getitem__(self, name):
        v = self.get(name)
        if v is None:
            raise KeyError(name)
        return v

    def __contains__(self, name):
        return self.get(name) is not None

    def items(self):
        return list(self._items)

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def __repr__(self):
        return "Headers(%r)" % self._items


class Response:
    """status (int), reason, version ("HTTP/1.1"), headers (Headers), body (bytes; None
    while streaming), text, json(), sse() (the body parsed as SSE events), t_head (when
    the head arrived, time.monotonic())."""

    def __init__(self, version, status, reason, headers, t_head):
        self.version, self.status, self.reason, self.headers = version, status, reason, headers
        self.body = None
        self.t_head = t_head

    @property
    def text(self):
        return (self.body or b"").decode("utf-8", "replace")

    def json(self):
        return _json.loads(self.body)

    def sse(self):
        return list(_parse_sse(self.body or b"", time.monotonic()))

    def __repr__(self):
        return "<Response %d %s %d bytes>" % (self.status, self.reason, len(self.body or b""))


class SSEEvent:
    """One server-sent event: data (str, data lines joined by \\n), event, id, t
    (time.monotonic() when it arrived), raw (bytes). json() decodes data."""

    def __init__(self, raw, t):
        self.raw, self.t = raw, t
        self.event = self.id = None
        data = []
        for line in raw.decode("utf-8", "replace").splitlines():
            if not line or line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "data":
                data.append(value)
            elif field == "event":
                self.event = value
            elif field == "id":
                self.id = value
        self.data = "\n".join(data)

    def json(self):
        return _json.loads(self.data)

    @property
    def done(self):
        return self.data == "[DONE]"

    def __repr__(self):
        return "<SSEEvent %r>" % self.data[:80]


_SSE_SPLIT = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def _parse_sse(data, t):
    for raw in _SSE_SPLIT.split(data):
        if raw.strip():
            yield SSEEvent(raw, t)


def build_request(method, path, headers=None, body=None, json=None, host="localhost"):
    """Request bytes. Adds Host (unless given), Content-Length for a body (unless
    Content-Length or Transfer-Encoding is given; a chunked body must be pre-framed), and
    Content-Type for json=. headers: dict or list of (name, value). host="" sends no Host."""
    if json is not None:
        body = _json.dumps(json).encode()
    if isinstance(body, str):
        body = body.encode()
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {k.lower() for k, _ in items}
    if "host" not in names and host:
        items.insert(0, ("Host", host))
    if json is not None and "content-type" not in names:
        items.append(("Content-Type", "application/json"))
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        items.append(("Content-Length", str(len(body))))
    head = "%s %s HTTP/1.1\r\n" % (method, path) + "".join("%s: %s\r\n" % (k, v) for k, v in items) + "\r\n"
    return head.encode("latin-1") + (body or b"")


class Conn:
    """One client connection (keep-alive: several requests may use it). Raises
    TimeoutError when the peer is silent for `timeout` seconds, ProtocolError on broken
    framing or a close before a message is complete, ConnectionResetError on a reset."""

    def __init__(self, port, host=LOCALHOST, timeout=10.0):
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""
        self.eof = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        """Sends raw bytes (str is encoded as latin-1)."""
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def send_request(self, method, path, headers=None, body=None, json=None):
        self.send(build_request(method, path, headers, body, json, host="%s:%d" % (self.host, self.port)))

    def request(self, method, path, headers=None, body=None, json=None):
        """Sends a request and reads the whole response."""
        self.send_request(method, path, headers, body, json)
        return self.read_response(method)

    def _fill(self):
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no data from %s:%d within %.1fs" % (self.host, self.port, self.timeout))
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _line(self):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return line.rstrip(b"\r\n")
            if len(self.buf) > 1 << 20:
                raise ProtocolError("line too long")
            if not self._fill():
                raise ProtocolError("connection closed mid-line (%r)" % self.buf[:200])

    def _exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise ProtocolError("connection closed with %d of %d bytes" % (len(self.buf), n))
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def closed_by_peer(self, wait=0.5):
        """True if the peer closed (EOF or reset) within `wait` seconds and sent nothing more."""
        if self.eof:
            return True
        r, _, _ = select.select([self.sock], [], [], wait)
        if not r:
            return False
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return True
        if not chunk:
            self.eof = True
            return True
        self.buf += chunk
        return False

    def read_head(self):
        """Reads a response head (skipping 1xx); returns a Response whose body is None.
        Raises ProtocolError if the connection closes first."""
        while True:
            if not self.buf and not self._fill():
                raise ProtocolError("connection closed before a response")
            line = self._line()
            t = time.monotonic()
            parts = line.decode("latin-1").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise ProtocolError("bad status line %r" % line)
            hdrs = []
            while True:
                h = self._line()
                if not h:
                    break
                k, sep, v = h.decode("latin-1").partition(":")
                if not sep:
                    raise ProtocolError("bad header line %r" % h)
                hdrs.append((k.strip(), v.strip()))
            resp = Response(parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "", Headers(hdrs), t)
            if 100 <= resp.status < 200 and resp.status != 101:
                continue
            return resp

    def iter_body(self, resp, method="GET"):
        """Yields the body of resp as it arrives (bytes pieces), following Content-Length,
        chunked encoding, or read-until-close."""
        if method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200:
            return
        te = resp.headers.get("transfer-encoding", "").lower()
        cl = resp.headers.get("content-length")
        if "chunked" in te:
            while True:
                size_line = self._line().split(b";")[0].strip()
                try:
                    size = int(size_line, 16)
                except ValueError:
                    raise ProtocolError("bad chunk size %r" % size_line)
                if size == 0:
                    while self._line():
                        pass
                    return
                data = self._exact(size)
                if self._exact(2) != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                yield data
        elif cl is not None:
            left = int(cl)
            while left > 0:
                if not self.buf and not self._fill():
                    raise ProtocolError("connection closed with %d body bytes missing" % left)
                piece, self.buf = self.buf[:left], self.buf[left:]
                left -= len(piece)
                yield piece
        else:
            while True:
                if self.buf:
                    piece, self.buf = self.buf, b""
                    yield piece
                if not self._fill():
                    return

    def read_response(self, method="GET"):
        """Reads one whole response (head and body)."""
        resp = self.read_head()
        resp.body = b"".join(self.iter_body(resp, method))
        return resp

    def iter_sse(self, resp):
        """Yields SSEEvents from resp's body as they arrive, each stamped with its arrival
        time; ends at the end of the body."""
        pending = b""
        for piece in self.iter_body(resp):
            pending += piece
            t = time.monotonic()
            while True:
                m = _SSE_SPLIT.search(pending)
                if not m:
                    break
                raw, pending = pending[:m.start()], pending[m.end():]
                if raw.strip():
                    yield SSEEvent(raw, t)
        if pending.strip():
            yield SSEEvent(pending, time.monotonic())


def request(port, method="GET", path="/", headers=None, body=None, json=None, timeout=10.0, host=LOCALHOST):
    """One request on a new connection; returns the whole Response."""
    with Conn(port, host, timeout) as c:
        return c.request(method, path, headers, body, json)


def send_raw(port, data, timeout=10.0, method="GET", host=LOCALHOST):
    """Sends raw bytes (possibly malformed) on a new connection and parses the response."""
    with Conn(port, host, timeout) as c:
        c.send(data)
        return c.read_response(method)


class Stream:
    """A request whose response is read incrementally: .response (head, read at once),
    .events() (SSEEvents as they arrive), .chunks() (raw body pieces), .close()."""

    def __init__(self, port, method, path, headers=None, body=None, json=None, timeout=10.0, host=LOCALHOST):
        self.conn = Conn(port, host, timeout)
        self.t_sent = time.monotonic()
        try:
            self.conn.send_request(method, path, headers, body, json)
            self.response = self.conn.read_head()
        except BaseException:
            self.conn.close()
            raise
        self.method = method

    def events(self):
        return self.conn.iter_sse(self.response)

    def chunks(self):
        return self.conn.iter_body(self.response, self.method)

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def stream(port, method, path, **kw):
    """Opens a Stream (use it in a with block)."""
    return Stream(port, method, path, **kw)


def chat_body(content="hello world!", model="gpt-4o", stream=False, include_usage=None, **extra):
    """A chat completions request body (dict)."""
    b = {"model": model, "messages": [{"role": "user", "content": content}]}
    if stream:
        b["stream"] = True
        if include_usage is not None:
            b["stream_options"] = {"include_usage": include_usage}
    b.update(extra)
    return b


def auth(key=TEST_KEY, **more):
    """Headers dict with Authorization: Bearer key plus the given ones (underscores in
    names become dashes)."""
    h = {"Authorization": "Bearer %s" % key}
    h.update({k.replace("_", "-"): str(v) for k, v in more.items()})
    return h


# ---------------------------------------------------------------------------
# a strict HTTP/1.1 reader, and a raw upstream that records the bytes it receives

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_TOKEN_RX = re.compile(_TOKEN + rb"\Z")
_CHUNK_EXT_RX = re.compile(rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|"
                           + _QUOTED + rb"))?)*\Z")
_VALUE_RX = re.compile(rb"[\t \x21-\x7e\x80-\xff]*\Z")
_TARGET_RX = re.compile(rb"[\x21-\x7e]+\Z")
_VERSION_RX = re.compile(rb"HTTP/[0-9]\.[0-9]\Z")
_STATUS_RX = re.compile(rb"(HTTP/[0-9]\.[0-9]) ([0-9]{3}) ([\t \x21-\x7e\x80-\xff]*)\Z")


class Message:
    """One HTTP/1.x message as read_message read it. A request has method, target and
    version; a reply version, status and reason. headers: Headers as received (names as
    sent, values without surrounding whitespace); body: the body bytes (de-chunked);
    framing: "length", "chunked", "close" (a reply read until EOF) or "none";
    chunk_exts: the extension text of each chunk line; trailers: [(name, value)];
    raw: the message's bytes exactly as received."""

    def __init__(self, kind):
        self.kind = kind
        self.method = self.target = self.version = self.reason = None
        self.status = None
        self.headers = Headers()
        self.body = b""
        self.framing = "none"
        self.chunk_exts = []
        self.trailers = []
        self.raw = b""

    @property
    def path(self):
        return self.target.split("?", 1)[0] if self.target else None

    def header_names(self):
        return [k.lower() for k, _ in self.headers]

    def __repr__(self):
        if self.kind == "request":
            return "<Message %s %s %s, %d body bytes>" % (self.method, self.target, self.version, len(self.body))
        return "<Message %s %s, %d body bytes>" % (self.version, self.status, len(self.body))


def _field_line(line):
    """(name, value) of a header or trailer field line, strictly (RFC 9112 5)."""
    if line[:1] in (b" ", b"\t"):
        raise ProtocolError("obs-fold or whitespace before a field: %r" % line[:80])
    name, sep, value = line.partition(b":")
    if not sep or not _TOKEN_RX.match(name):
        raise ProtocolError("bad field name in %r" % line[:80])
    value = value.strip(b" \t")
    if not _VALUE_RX.match(value):
        raise ProtocolError("bad byte in the value of %r" % name)
    return name.decode("latin-1"), value.decode("latin-1")


def _lines_crlf(data):
    """Raises ProtocolError if data holds a bare LF or a CR not followed by LF."""
    if data.count(b"\n") != data.count(b"\r\n") or data.count(b"\r") != data.count(b"\r\n"):
        raise ProtocolError("a bare LF or CR in %r" % data[:200])


def read_message(buf, kind="request", eof=False, head_request=False):
    """Reads one HTTP/1.x message from the start of buf the way a strict RFC 9112 reader
    does: single spaces in the start line, no whitespace in or after a field name, no
    obs-fold, CRLF only, one Content-Length or Transfer-Encoding: chunked (never both),
    valid chunk sizes and extensions, CRLF after chunk data. Returns (Message, bytes
    consumed), None when buf holds only part of a message (eof=True: the bytes end here,
    so a part is a ProtocolError; a reply without a length is read up to eof). Raises
    ProtocolError for anything a strict reader refuses."""
    end = buf.find(b"\r\n\r\n")
    _lines_crlf(buf if end < 0 else buf[:end + 4])
    if end < 0:
        if eof and buf:
            raise ProtocolError("cut inside the head: %r" % buf[:200])
        return None
    m = Message(kind)
    lines = buf[:end].split(b"\r\n")
    start = lines[0]
    if kind == "request":
        parts = start.split(b" ")
        if len(parts) != 3 or not _TOKEN_RX.match(parts[0]) or not _TARGET_RX.match(parts[1]) \
                or not _VERSION_RX.match(parts[2]):
            raise ProtocolError("bad request line %r" % start[:200])
        m.method, m.target, m.version = (p.decode("latin-1") for p in parts)
    else:
        sm = _STATUS_RX.match(start)
        if not sm:
            raise ProtocolError("bad status line %r" % start[:200])
        m.version, m.status, m.reason = sm.group(1).decode(), int(sm.group(2)), sm.group(3).decode("latin-1")
    m.headers = Headers([_field_line(l) for l in lines[1:]])
    pos = end + 4
    te = m.headers.get_all("transfer-encoding")
    cl = m.headers.get_all("content-length")
    if te and cl:
        raise ProtocolError("Content-Length with Transfer-Encoding")
    if len(cl) > 1:
        raise ProtocolError("two Content-Length fields")
    bodyless = kind == "reply" and (head_request or m.status in (204, 304) or 100 <= m.status < 200)
    if bodyless:
        pass
    elif te:
        if len(te) != 1 or te[0].lower() != "chunked":
            raise ProtocolError("Transfer-Encoding %r" % te)
        m.framing = "chunked"
        body = []
        while True:
            i = buf.find(b"\r\n", pos)
            if i < 0:
                _lines_crlf(buf[pos:])
                if eof:
                    raise ProtocolError("cut in a chunk-size line")
                return None
            line = buf[pos:i]
            _lines_crlf(line)
            size_m = re.match(rb"([0-9A-Fa-f]{1,16})(.*)\Z", line, re.S)
            if not size_m or not _CHUNK_EXT_RX.match(size_m.group(2)):
                raise ProtocolError("bad chunk line %r" % line[:200])
            size = int(size_m.group(1), 16)
            m.chunk_exts.append(size_m.group(2).decode("latin-1"))
            pos = i + 2
            if size == 0:
                while True:
                    j = buf.find(b"\r\n", pos)
                    if j < 0:
                        _lines_crlf(buf[pos:])
                        if eof:
                            raise ProtocolError("cut in the trailer")
                        return None
                    tline = buf[pos:j]
                    _lines_crlf(tline)
                    pos = j + 2
                    if not tline:
                        break
                    m.trailers.append(_field_line(tline))
                break
            if len(buf) < pos + size + 2:
                if eof:
                    raise ProtocolError("cut in chunk data")
                return None
            body.append(buf[pos:pos + size])
            if buf[pos + size:pos + size + 2] != b"\r\n":
                raise ProtocolError("chunk data not followed by CRLF")
            pos += size + 2
        m.body = b"".join(body)
    elif cl:
        if not re.match(r"[0-9]{1,18}\Z", cl[0]):
            raise ProtocolError("bad Content-Length %r" % cl[0])
        n = int(cl[0])
        m.framing = "length"
        if len(buf) < pos + n:
            if eof:
                raise ProtocolError("cut with %d of %d body bytes" % (len(buf) - pos, n))
            return None
        m.body = buf[pos:pos + n]
        pos += n
    elif kind == "reply":
        if not eof:
            return None
        m.framing = "close"
        m.body = buf[pos:]
        pos = len(buf)
    m.raw = buf[:pos]
    return m, pos


def read_messages(data, kind="request"):
    """Every message in data, read strictly in order (read_message); raises ProtocolError
    when bytes are left over that do not make a whole message."""
    out, pos = [], 0
    while pos < len(data):
        got = read_message(data[pos:], kind, eof=True)
        out.append(got[0])
        pos += got[1]
    return out


def http_reply(status=200, body=b"", headers=None, reason=None, length=True, version="HTTP/1.1"):
    """Reply bytes: a status line, headers (dict or list of (name, value)), a
    Content-Length unless length=False or the headers frame it, then body."""
    if isinstance(body, str):
        body = body.encode()
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {k.lower() for k, _ in items}
    if length and "content-length" not in names and "transfer-encoding" not in names:
        items.append(("Content-Length", str(len(body))))
    head = "%s %d %s\r\n" % (version, status, reason or "OK") + "".join("%s: %s\r\n" % kv for kv in items) + "\r\n"
    return head.encode("latin-1") + body


def chunked(*pieces, trailers=b""):
    """A chunked body: each piece as one chunk, then the last chunk and `trailers`
    (raw field lines, each ending in CRLF)."""
    out = []
    for p in pieces:
        if isinstance(p, str):
            p = p.encode()
        out.append(b"%x\r\n%s\r\n" % (len(p), p))
    return b"".join(out) + b"0\r\n" + trailers + b"\r\n"


CHAT_REPLY_BODY = (b'{"id":"chatcmpl-raw","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,'
                   b'"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],'
                   b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}')


class RawUpstreamConn:
    """What one connection to a RawUpstream carried: data (every byte received, as
    received), requests (the Messages read from it), error (why the strict reader gave
    up, or None), closed (the peer closed it)."""

    def __init__(self, index):
        self.index = index
        self.data = b""
        self.requests = []
        self.error = None
        self.closed = False

    def __repr__(self):
        return "<RawUpstreamConn %d: %d bytes, %d requests%s>" % (
            self.index, len(self.data), len(self.requests), ", error %s" % self.error if self.error else "")


class RawUpstream:
    """A loopback TCP server standing in for the model server, one thread per
    connection. It records exactly the bytes each connection brings (conns, received()),
    reads them strictly (read_message) into requests, and answers each request with the
    scripted reply, then reads the next one (keep-alive) or closes (close=True).

    A reply is bytes, or a list of pieces sent one after another: bytes to send, a
    number of seconds to sleep (to split a reply in time), a callable to call there
    (e.g. an Event's wait), "close" to close the connection there, "hold" to keep it
    open unanswered until the test ends; or a callable taking the request (Message)
    and returning one of those. The default is
    a 200 chat completion with a Content-Length. A connection whose bytes the strict
    reader refuses is closed without an answer (its error is kept). reset() forgets
    what was recorded (a connection still open gets a fresh record when it brings more
    bytes)."""

    def __init__(self, reply=None, close=False):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOCALHOST, 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self._stopped = threading.Event()
        self._live = []     # [handler state dict] of connections still open
        self._socks = []
        self.conns = []     # RawUpstreamConn, in accept order (since the last reset)
        self.requests = []  # Message, in arrival order (since the last reset)
        self.accepted = 0
        self.script(reply, close)
        threading.Thread(target=self._accept, daemon=True, name="raw-upstream").start()
        if _test_servers is not None:
            _test_servers.append(self)
        else:
            _module_servers.append(self)

    @property
    def url(self):
        return "http://%s:%d" % (LOCALHOST, self.port)

    def script(self, reply=None, close=False):
        """Sets the reply to later requests (see the class) and whether the connection
        closes after it."""
        self.reply = http_reply(200, CHAT_REPLY_BODY, {"Content-Type": "application/json"}) \
            if reply is None else reply
        self.close_after = close

    def reset(self, reply=None, close=False):
        """Forgets the records and sets the script (the default reply unless given)."""
        with self.lock:
            self.conns = []
            self.requests = []
            for st in self._live:
                st["rec"] = None  # a new record when the connection brings more bytes
        self.script(reply, close)

    def _rec(self, st):
        if st["rec"] is None:
            st["rec"] = self._new_conn()
        return st["rec"]

    def _new_conn(self):
        rec = RawUpstreamConn(len(self.conns))
        self.conns.append(rec)
        return rec

    def received(self):
        """Every byte received since the last reset, connection after connection."""
        with self.lock:
            return b"".join(c.data for c in self.conns)

    def wait_requests(self, n, timeout=5.0):
        """Waits until n requests were read; returns the list."""
        wait_until(lambda: len(self.requests) >= n, timeout, what="%d upstream requests" % n)
        return list(self.requests)

    def assert_nothing_received(self, settle=0.05):
        """Asserts that no byte reached the upstream (after a moment for stragglers)."""
        time.sleep(settle)
        got = self.received()
        assert got == b"", "forwarded upstream although refused: %r" % got[:500]

    def close(self):
        self._stopped.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass

    stop = close

    def _accept(self):
        while not self._stopped.is_set():
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.accepted += 1
                st = {"rec": self._new_conn()}
                self._live.append(st)
                self._socks.append(s)
            threading.Thread(target=self._serve, args=(s, st), daemon=True).start()

    def _send(self, s, reply, req):
        """Sends a reply; returns "close", "hold" or None."""
        if callable(reply):
            reply = reply(req)
        if isinstance(reply, (bytes, bytearray, str)):
            reply = [reply]
        for piece in reply:
            if piece in ("close", "hold"):
                return piece
            if isinstance(piece, (int, float)):
                time.sleep(piece)
                continue
            if callable(piece):
                piece()
                continue
            if isinstance(piece, str):
                piece = piece.encode("latin-1")
            s.sendall(piece)
        return None

    def _serve(self, s, st):
        buf = b""
        try:
            while not self._stopped.is_set():
                try:
                    got = read_message(buf, "request")
                except ProtocolError as e:
                    self._rec(st).error = str(e)
                    return
                if got is None:
                    chunk = s.recv(65536)
                    if not chunk:
                        if st["rec"] is not None:
                            st["rec"].closed = True
                        if buf:
                            self._rec(st).error = "closed with %d bytes of a request" % len(buf)
                        return
                    with self.lock:
                        self._rec(st).data += chunk
                    buf += chunk
                    continue
                msg, used = got
                buf = buf[used:]
                with self.lock:
                    self._rec(st).requests.append(msg)
                    self.requests.append(msg)
                how = self._send(s, self.reply, msg)
                if how == "hold":
                    self._stopped.wait()
                    return
                if how == "close" or self.close_after:
                    return
        except OSError:
            pass
        finally:
            with self.lock:
                if st in self._live:
                    self._live.remove(st)
                if s in self._socks:
                    self._socks.remove(s)
            try:
                s.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------
# runner

class TestTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise TestTimeout("test exceeded its time limit")


def timeout(seconds):
    """Decorator: this test's time limit (default TG_TEST_TIMEOUT, 120 s)."""
    def deco(fn):
        fn.timeout = seconds
        return fn
    return deco


def main():
    """Runs the calling module's test_* functions in definition order (names given on the
    command line select a subset), prints PASS/FAIL per test and `N passed, N failed` last;
    exits 1 if any failed. Keeps the temp dir of a failed run (path printed)."""
    global _test_dir, _test_procs, _test_servers
    mod = sys.modules["__main__"]
    tests = [(n, f) for n, f in vars(mod).items() if n.startswith("test_") and callable(f)]
    wanted = sys.argv[1:] or [w for w in os.environ.get("TG_TEST_FILTER", "").split(",") if w]
    if wanted:
        tests = [(n, f) for n, f in tests if any(w in n for w in wanted)]
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(143))
    passed = failed = 0
    setup_ok = True
    if hasattr(mod, "setup_module"):
        try:
            mod.setup_module()
        except BaseException:
            traceback.print_exc()
            setup_ok = False
    for name, fn in tests if setup_ok else []:
        _test_dir = os.path.join(session_dir(), name)
        os.makedirs(_test_dir, exist_ok=True)
        _test_procs = []
        _test_servers = []
        t0 = time.monotonic()
        ok = True
        signal.setitimer(signal.ITIMER_REAL, getattr(fn, "timeout", TEST_TIMEOUT))
        try:
            fn()
        except BaseException as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            ok = False
            print("FAIL %s (%.2fs)" % (name, time.monotonic() - t0))
            traceback.print_exc(file=sys.stdout)
            for p in _test_procs:
                print("--- %s stderr (%s), tail:\n%s" % (p.name, p.stderr_path, p.stderr_tail(30)))
            if isinstance(e, KeyboardInterrupt):
                raise
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for p in _test_procs:
                try:
                    p.stop()
                except Exception:
                    pass
            if ok:
                for p in _test_procs:
                    errs = p.sanitizer_errors()
                    if errs:
                        ok = False
                        print("FAIL %s: sanitizer report from %s (%s):\n%s"
                              % (name, p.name, p.stderr_path, "\n".join(errs[:20])))
            for s in _test_servers:
                s.close()
            _test_procs = None
            _test_servers = None
            _test_dir = None
        if ok:
            passed += 1
            print("PASS %s (%.2fs)" % (name, time.monotonic() - t0))
        else:
            failed += 1
        sys.stdout.flush()
    if hasattr(mod, "teardown_module"):
        try:
            mod.teardown_module()
        except BaseException:
            traceback.print_exc()
            failed += 1
    cleanup_all()
    for s in _module_servers:
        s.close()
    for p in _module_procs:
        errs = p.sanitizer_errors()
        if errs:
            failed += 1
            print("FAIL: sanitizer report from %s:\n%s" % (p.name, "\n".join(errs[:20])))
    if not setup_ok:
        failed += 1
    keep = failed or os.environ.get("TG_KEEP_TMP") == "1"
    if _session_dir:
        if keep:
            print("temp files kept in %s" % _session_dir)
        else:
            shutil.rmtree(_session_dir, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    sys.stdout.flush()
    sys.exit(1 if failed else 0)
