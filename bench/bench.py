#!/usr/bin/env python3
"""kproxy benchmark driver: direct vs `kubectl proxy` vs nginx as a proxy vs kproxy, alternated over rounds.

Standard library only. `bench/run.sh` installs the tools and calls `bench.py run`; the `watch-server`
and `watch-client` subcommands are helpers that `run` starts itself.

Layout: the load generator (wrk, curl, the watch client) runs on LOAD_CPU; the upstream (nginx, the
watch server) and the proxy under test share SERVER_CPU. Every load is bounded in time and count, and
everything listens on and talks to 127.0.0.1 only.
"""

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MIB = 1024 * 1024
TICK = os.sysconf("SC_CLK_TCK")

# --------------------------------------------------------------------------------------------------
# helpers


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers_200(probe, proc, seconds=10):
    """Polls `probe` (a curl run whose output starts with the status) until it answers 200, `proc`
    exits, or `seconds` pass."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        r = probe()
        if r.returncode == 0 and r.stdout.startswith("200"):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def pinned(cpu):
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def cpu_ticks(pid):
    """utime + stime of the whole process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def run(cmd, timeout, cpu=None, **kw):
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=pinned(cpu), **kw
    )


def stop(proc, timeout=5):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


# --------------------------------------------------------------------------------------------------
# upstream fixtures


def make_fixtures(tmp, token):
    """A CA, a server certificate for 127.0.0.1, the served files and the kubeconfigs."""

    def ssl_cmd(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp, timeout=60)

    ssl_cmd("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=kproxy-bench-ca")
    ssl_cmd("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    with open(os.path.join(tmp, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl_cmd("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")

    www = os.path.join(tmp, "www")
    os.makedirs(os.path.join(www, "api/v1/namespaces/bench"), exist_ok=True)
    version = {
        "major": "1", "minor": "32", "gitVersion": "v1.32.0", "gitCommit": "0" * 40,
        "gitTreeState": "clean", "buildDate": "2024-12-11T00:00:00Z", "goVersion": "go1.23.3",
        "compiler": "gc", "platform": "linux/amd64",
    }
    with open(os.path.join(www, "version"), "w") as f:
        json.dump(version, f, indent=2)
    # A ~1 MB pod LIST.
    items = []
    i = 0
    while True:
        items.append({
            "metadata": {"name": f"pod-{i:05d}", "namespace": "bench", "uid": f"{i:08x}-0000-4000-8000-000000000000",
                         "resourceVersion": str(1000 + i), "labels": {"app": "bench", "idx": str(i)}},
            "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                                     "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}],
                     "nodeName": "node-1"},
            "status": {"phase": "Running", "podIP": f"10.0.{i // 250}.{i % 250}"},
        })
        i += 1
        if i % 100 == 0 and len(json.dumps(items)) > 1_000_000:
            break
    with open(os.path.join(www, "api/v1/pods"), "w") as f:
        json.dump({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "9999"}, "items": items}, f)
    # A 100 MB object (sparse: the bytes are zeros, the cost is in moving them).
    with open(os.path.join(www, "api/v1/namespaces/bench/blob"), "wb") as f:
        f.truncate(100_000_000)

    def kubeconfig(name, port, extra_contexts=0):
        """`extra_contexts` more contexts (`ctx-01`, ...), each with a cluster and user of its own, for
        `--all-contexts` (the `clusters` target)."""
        path = os.path.join(tmp, name)
        extra = range(1, extra_contexts + 1)
        clusters = "".join(f"""- name: c{i:02}
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority: {tmp}/ca.crt
""" for i in extra)
        users = "".join(f"""- name: u{i:02}
  user:
    token: {token}
""" for i in extra)
        contexts = "".join(f"""- name: ctx-{i:02}
  context: {{cluster: c{i:02}, user: u{i:02}}}
""" for i in extra)
        with open(path, "w") as f:
            f.write(f"""apiVersion: v1
kind: Config
clusters:
- name: bench
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority: {tmp}/ca.crt
{clusters}users:
- name: bench
  user:
    token: {token}
{users}contexts:
- name: bench
  context: {{cluster: bench, user: bench}}
{contexts}current-context: bench
""")
        return path

    return www, kubeconfig


def nginx_conf(tmp, www, port, token, watch_port):
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off;
master_process off;
worker_rlimit_nofile 16384;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    default_type application/json;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    # 1,000 watches on one HTTP/2 connection (the API server allows 100 streams per connection).
    http2_max_concurrent_streams 2000;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_protocols TLSv1.2 TLSv1.3;  # nginx 1.22 offers no TLS 1.3 by default; API servers do
        ssl_certificate {tmp}/server.crt;
        ssl_certificate_key {tmp}/server.key;
        root {www};
        if ($http_authorization != "Bearer {token}") {{ return 401; }}
        # Watches: relayed unbuffered from the streaming helper.
        location /api/v1/namespaces/bench/pods {{
            proxy_pass http://127.0.0.1:{watch_port};
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
""")
    return conf


def nginx_proxy_conf(tmp, port, upstream_port, token):
    """nginx as the peer proxy: plain HTTP in, the bearer token injected, TLS to the upstream over a
    keep-alive pool, like kproxy. Tuned for it: responses stream (`proxy_buffering off`, as watches
    need) through 64 KiB buffers; nginx's 4 KiB default halves its LIST rate."""
    conf = os.path.join(tmp, "nginx-proxy.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off;
master_process off;
worker_rlimit_nofile 16384;
pid {tmp}/nginx-proxy.pid;
error_log {tmp}/nginx-proxy-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-proxy-body;
    proxy_temp_path {tmp}/nginx-proxy-proxy;
    fastcgi_temp_path {tmp}/nginx-proxy-fastcgi;
    uwsgi_temp_path {tmp}/nginx-proxy-uwsgi;
    scgi_temp_path {tmp}/nginx-proxy-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream api {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass https://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {token}";
            proxy_ssl_session_reuse on;
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 4 64k;
            proxy_busy_buffers_size 128k;
            proxy_read_timeout 600s;
        }}
    }}
}}
""")
    return conf


# --------------------------------------------------------------------------------------------------
# watch upstream and client (subcommands)


WATCH_EVENT = json.dumps({
    "type": "ADDED",
    "object": {"kind": "Pod", "apiVersion": "v1",
               "metadata": {"name": "watched", "namespace": "bench", "resourceVersion": "1"}},
}).encode() + b"\n"


async def watch_server(args):
    """HTTP/1.1-only TLS server: every authorised request gets a chunked 200 with one event, then is held."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["http/1.1"])
    want = f"authorization: bearer {args.token}".encode()
    held = set()

    async def handle(reader, writer):
        held.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if want not in head.lower():
                writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n"
                             + f"{len(WATCH_EVENT):x}\r\n".encode() + WATCH_EVENT + b"\r\n")
            await writer.drain()
            while await reader.read(4096):
                pass
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            held.discard(writer)
            writer.close()

    tls = await asyncio.start_server(handle, "127.0.0.1", args.port, ssl=ctx, backlog=4096)
    plain = await asyncio.start_server(handle, "127.0.0.1", args.plain_port, backlog=4096)
    print("ready", flush=True)
    async with tls, plain:
        await asyncio.sleep(args.max_seconds)


async def watch_client(args):
    """Opens N watches through the proxy, reports when all have their first event, holds them."""
    req = (f"GET /api/v1/namespaces/bench/pods?watch=true HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
           "Accept: application/json\r\n\r\n").encode()
    sem = asyncio.Semaphore(64)
    conns = []

    async def one():
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
            writer.write(req)
            await writer.drain()
            buf = b""
            while b"ADDED" not in buf:
                chunk = await reader.read(4096)
                if not chunk:
                    raise ConnectionError(f"closed before the first event: {buf[:200]!r}")
                buf += chunk
            conns.append((reader, writer))

    try:
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(args.n))), args.timeout)
        print(f"ready {len(conns)}", flush=True)
    except Exception as e:  # noqa: BLE001 - report and exit
        print(f"failed {len(conns)} {type(e).__name__}: {e}", flush=True)
        return
    loop = asyncio.get_running_loop()
    done = loop.run_in_executor(None, sys.stdin.readline)
    await asyncio.wait_for(done, args.timeout)


# --------------------------------------------------------------------------------------------------
# the benchmark

WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99)))
end
"""


class Bench:
    def __init__(self, args):
        self.a = args
        self.tmp = tempfile.mkdtemp(prefix="kproxy-bench-")
        # 32 characters by default. Real bearer tokens (service-account JWTs, EKS and OIDC tokens) are
        # about 1 KB; `--token-bytes 1200` measures that case (see bench/README.md).
        self.token = secrets.token_hex(getattr(args, "token_bytes", 32) // 2)
        self.procs = []
        self.samples = {}  # (target, metric) -> [values]
        self.kproxy = os.path.abspath(args.kproxy)
        self.kubectl = shutil.which(args.kubectl) or args.kubectl

    # --- process management

    def spawn(self, cmd, cpu, **kw):
        p = subprocess.Popen(cmd, preexec_fn=pinned(cpu), **kw)
        self.procs.append(p)
        return p

    def cleanup(self):
        for p in reversed(self.procs):
            stop(p)
        if not self.a.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def add(self, target, metric, value):
        self.samples.setdefault((target, metric), []).append(value)

    # --- setup

    def setup(self):
        log(f"fixtures in {self.tmp}")
        www, kubeconfig = make_fixtures(self.tmp, self.token)
        self.watch_port = free_port()
        watch_plain_port = free_port()
        self.watch_kubeconfig = kubeconfig("kubeconfig-watch", self.watch_port)
        self.watch = self.spawn(
            [sys.executable, os.path.abspath(__file__), "watch-server", "--port", str(self.watch_port),
             "--plain-port", str(watch_plain_port),
             "--cert", f"{self.tmp}/server.crt", "--key", f"{self.tmp}/server.key", "--token", self.token,
             "--max-seconds", str(self.a.max_seconds)],
            self.a.server_cpu, stdout=subprocess.PIPE, text=True)
        if self.watch.stdout.readline().strip() != "ready":
            raise RuntimeError("watch server did not start")
        self.nginx_port = free_port()
        conf = nginx_conf(self.tmp, www, self.nginx_port, self.token, watch_plain_port)
        self.nginx = self.spawn(["nginx", "-c", conf, "-e", f"{self.tmp}/nginx-error.log"],
                                self.a.server_cpu, stdout=subprocess.DEVNULL)
        self.kubeconfig = kubeconfig("kubeconfig", self.nginx_port)
        # The `clusters` target: 20 contexts, requests to one of them under its prefix.
        self.kubeconfig_many = kubeconfig("kubeconfig-many", self.nginx_port, extra_contexts=19)
        with open(os.path.join(self.tmp, "report.lua"), "w") as f:
            f.write(WRK_LUA)
        # nginx answers once it is up; wait for it (bounded).
        if not answers_200(lambda: self.curl_direct("/version", timeout=2), self.nginx):
            raise RuntimeError("nginx did not come up; see nginx-error.log (--keep-tmp)")
        r = run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", f"{self.tmp}/ca.crt",
                 f"https://127.0.0.1:{self.nginx_port}/version"], 5)
        if r.stdout != "401":
            raise RuntimeError(f"nginx must require the token, answered {r.stdout}")

    def curl_direct(self, path, timeout):
        return run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{speed_download} %{size_download}",
                    "--max-time", str(timeout), "--cacert", f"{self.tmp}/ca.crt",
                    "-H", f"Authorization: Bearer {self.token}",
                    f"https://127.0.0.1:{self.nginx_port}{path}"], timeout + 5, cpu=self.a.load_cpu)

    # --- targets

    def start_nginx_proxy(self):
        """Starts the nginx peer (fresh each round, as the other proxies); returns (process, port)."""
        port = free_port()
        conf = nginx_proxy_conf(self.tmp, port, self.nginx_port, self.token)
        p = self.spawn(["nginx", "-c", conf, "-e", f"{self.tmp}/nginx-proxy-error.log"],
                       self.a.server_cpu, stdout=subprocess.DEVNULL)
        probe = lambda: run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",  # noqa: E731
                             "--max-time", "2", f"http://127.0.0.1:{port}/version"], 5)
        if answers_200(probe, p):
            return p, port
        stop(p)
        raise RuntimeError("the nginx proxy did not come up; see nginx-proxy-error.log (--keep-tmp)")

    def start_proxy(self, target, kubeconfig):
        """Starts a proxy; returns (process, port, seconds from exec to the startup line)."""
        binary = self.kubectl if target == "kubectl" else self.kproxy
        cmd = [binary, "proxy"] if target == "kubectl" else [binary]
        if target == "clusters":
            kubeconfig = self.kubeconfig_many
            cmd += ["--all-contexts"]
        cmd += ["--kubeconfig", kubeconfig, "--port=0"]
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        t0 = time.perf_counter()
        p = self.spawn(cmd, self.a.server_cpu, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                       text=True, env=env)
        line = p.stdout.readline()
        elapsed = time.perf_counter() - t0
        if not line.startswith("Starting to serve on "):
            stop(p)
            raise RuntimeError(f"{target} did not start: {line!r}")
        port = int(line.rsplit(":", 1)[1])
        return p, port, elapsed

    def base_url(self, target, port):
        if target == "direct":
            return f"https://127.0.0.1:{self.nginx_port}", ["-H", f"Authorization: Bearer {self.token}"]
        if target == "clusters":
            return f"http://127.0.0.1:{port}/clusters/bench", []
        return f"http://127.0.0.1:{port}", []

    def wrk(self, url, headers, conns, seconds):
        cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s",
               "-s", f"{self.tmp}/report.lua", *headers, url]
        r = run(cmd, seconds + 30, cpu=self.a.load_cpu)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if r.returncode != 0 or not lines:
            raise RuntimeError(f"wrk failed: {r.stdout} {r.stderr}")
        res = json.loads(lines[-1])
        if res["errors"] or res["non2xx"]:
            raise RuntimeError(f"wrk saw errors against {url}: {res}")
        res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
        res["mbps"] = res["bytes"] / res["duration_us"]  # bytes/µs == MB/s
        return res

    def measure(self, target, rnd):
        a = self.a
        proc = None
        if target == "direct":
            pid, port = self.nginx.pid, None
        elif target == "nginx":
            # No startup figure: nginx reads no kubeconfig, so its start is not the same work.
            proc, port = self.start_nginx_proxy()
            pid = proc.pid
            time.sleep(0.5)
            self.add(target, "rss_idle_mib", status_kib(pid, "VmRSS") / 1024)
            self.add(target, "rss_anon_idle_mib", status_kib(pid, "RssAnon") / 1024)
        else:
            # exec → listening, several starts.
            for _ in range(a.starts):
                p, _, t = self.start_proxy(target, self.kubeconfig)
                stop(p)
                self.add(target, "startup_ms", t * 1000)
            proc, port, t = self.start_proxy(target, self.kubeconfig)
            self.add(target, "startup_ms", t * 1000)
            pid = proc.pid
            time.sleep(0.5)
            self.add(target, "rss_idle_mib", status_kib(pid, "VmRSS") / 1024)
            # The private part: RSS less the binary's and libraries' file-backed pages.
            self.add(target, "rss_anon_idle_mib", status_kib(pid, "RssAnon") / 1024)
        base, hdr = self.base_url(target, port)
        try:
            # One connection: latency, throughput.
            r = self.wrk(base + "/version", hdr, 1, a.duration)
            self.add(target, "rps_c1", r["rps"])
            self.add(target, "p50_c1_us", r["p50_us"])
            self.add(target, "p99_c1_us", r["p99_us"])
            # 64 connections: warm the upstream pool, then measure with CPU accounting.
            self.wrk(base + "/version", hdr, 64, 1)
            c0, u0 = cpu_ticks(pid), cpu_ticks(self.nginx.pid)
            r = self.wrk(base + "/version", hdr, 64, a.duration)
            c1, u1 = cpu_ticks(pid), cpu_ticks(self.nginx.pid)
            self.add(target, "upstream_cpu_us_per_get", (u1 - u0) / TICK * 1e6 / r["requests"])
            self.add(target, "rps_c64", r["rps"])
            self.add(target, "p50_c64_us", r["p50_us"])
            self.add(target, "p99_c64_us", r["p99_us"])
            self.add(target, "cpu_us_per_get", (c1 - c0) / TICK * 1e6 / r["requests"])
            if proc is not None:
                self.add(target, "rss_peak_c64_mib", status_kib(pid, "VmHWM") / 1024)
            # 1 MB LIST at 8 connections.
            r = self.wrk(base + "/api/v1/pods", hdr, 8, a.duration)
            self.add(target, "list_mbps", r["mbps"])
            # 100 MB download, one stream.
            for _ in range(a.downloads):
                self.add(target, "download_mbps", self.download(target, base, hdr))
        finally:
            stop(proc)
        if target in ("kubectl", "kproxy"):
            self.watches(target, "h1")
            self.watches(target, "h2")
        log(f"round {rnd} {target}: " + ", ".join(
            f"{m}={v[-1]:.1f}" for (t, m), v in sorted(self.samples.items()) if t == target))

    def download(self, target, base, hdr):
        cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}",
               "--max-time", "60", *hdr, base + "/api/v1/namespaces/bench/blob"]
        if target == "direct":
            cmd[1:1] = ["--cacert", f"{self.tmp}/ca.crt"]
        r = run(cmd, 70, cpu=self.a.load_cpu)
        code, size, secs = r.stdout.split()
        if code != "200" or int(size) != 100_000_000:
            raise RuntimeError(f"download via {target} failed: {r.stdout} {r.stderr}")
        return int(size) / float(secs) / 1e6

    def watches(self, target, proto):
        """RSS per open watch. h1: the upstream speaks HTTP/1.1 only, so each watch holds an upstream
        connection too; h2: nginx multiplexes them on one HTTP/2 connection."""
        n = self.a.watches
        kubeconfig = self.watch_kubeconfig if proto == "h1" else self.kubeconfig
        proc, port, _ = self.start_proxy(target, kubeconfig)
        client = None
        try:
            time.sleep(0.5)
            before = status_kib(proc.pid, "VmRSS")
            client = self.spawn(
                [sys.executable, os.path.abspath(__file__), "watch-client", "--port", str(port), "--n", str(n),
                 "--timeout", "60"],
                self.a.load_cpu, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
            line = client.stdout.readline().strip()
            if line != f"ready {n}":
                raise RuntimeError(f"{n} watches through {target}: {line}")
            time.sleep(1.0)
            after = status_kib(proc.pid, "VmRSS")
            self.add(target, f"rss_watches_{proto}_mib", after / 1024)
            self.add(target, f"kib_per_watch_{proto}", (after - before) / n)
        finally:
            if client is not None:
                try:
                    client.stdin.close()
                except OSError:
                    pass
                stop(client)
            stop(proc)

    def go(self):
        a = self.a
        started = time.time()
        self.setup()
        for target in ("kubectl", "kproxy"):  # warm caches, first-run effects
            p, _, _ = self.start_proxy(target, self.kubeconfig)
            stop(p)
        order = ["direct", "kubectl", "nginx", "kproxy", "clusters"]
        for rnd in range(1, a.rounds + 1):
            if time.time() - started > a.max_seconds:
                log("time budget spent; stopping early")
                break
            # Alternate the order so no target always runs first or last.
            seq = order if rnd % 2 else list(reversed(order))
            for target in seq:
                if target in a.targets:
                    self.measure(target, rnd)
        size = os.path.getsize(self.kproxy)
        self.add("kproxy", "binary_mb", size / 1e6)
        self.add("kubectl", "binary_mb", os.path.getsize(self.kubectl) / 1e6)
        return time.time() - started


# --------------------------------------------------------------------------------------------------
# link order (subcommand)


def callgrind_functions(path):
    """Functions that executed, in order of first appearance in a callgrind dump (names as in the
    binary's symbol table: run valgrind with --demangle=no). Names are compressed: `fn=(id) name` or
    `cfn=(id) name` the first time, `fn=(id)` after that."""
    import re
    names, seen, out = {}, set(), []
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
            if not m:
                continue
            kind, ident, name = m.groups()
            if name:
                names[ident] = name
            if kind == "fn" and ident in names and names[ident] not in seen:
                seen.add(names[ident])
                out.append(names[ident])
    return out


def demangled_without_hashes(names):
    """`c++filt` names with the hashes taken out (v0 crate disambiguators `[…]`, legacy `::h…`): what a
    function is called in every build of the same code."""
    import re
    out = subprocess.run(["c++filt"], input="\n".join(names) + "\n", capture_output=True, text=True,
                         check=True).stdout.splitlines()
    return [re.sub(r"::h[0-9a-f]{16}$", "", re.sub(r"\[[0-9a-f]{16}\]", "", d)) for d in out]


def with_counterparts(order, other_binary):
    """`order` with, after each function, its name in `other_binary`: the static image build, whose
    symbol hashes differ (its RUSTFLAGS enter them), so the list made from the ordinary release build
    resolved about 280 of 1,600 names there. A name with more than two counterparts (a generic closure
    instantiated many times) is skipped: ordering them all would spread the hot region it is meant to
    shrink. lld ignores names a build lacks, so one file serves both builds."""
    names = [l.split()[2] for l in run(["nm", "--defined-only", other_binary], 60).stdout.splitlines()
             if len(l.split()) == 3 and l.split()[1] in "tT"]
    by_key = {}
    for key, name in zip(demangled_without_hashes(names), names):
        by_key.setdefault(key, []).append(name)
    out, seen, added = [], set(order), 0
    for name, key in zip(order, demangled_without_hashes(order)):
        out.append(name)
        twins = [t for t in by_key.get(key, []) if t not in seen]
        if 0 < len(twins) <= 2:
            out.extend(twins)
            seen.update(twins)
            added += len(twins)
    return out, added


def main_link_order(args):
    """Writes the symbol ordering file that the release link uses (see build.rs): every function that runs
    from exec to the startup line first, then those that serve GETs, a LIST and a watch. Code is mapped in
    64 KiB blocks, so scattered startup code made most of the binary's text resident; grouped, it takes
    a few blocks."""
    binary = os.path.abspath(args.kproxy)
    syms = set()
    for line in run(["nm", "--defined-only", binary], 60).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tT":
            syms.add(parts[2])
    if not syms:
        sys.exit("bench: the binary has no symbol table: build it with "
                 "`cargo rustc --release --locked --bin kproxy -- -C strip=none`")
    a = argparse.Namespace(server_cpu=None, load_cpu=None, max_seconds=300, keep_tmp=False,
                           kproxy=binary, kubectl="kubectl")
    b = Bench(a)
    try:
        b.setup()
        out = os.path.join(b.tmp, "callgrind.out")
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        p = b.spawn(["valgrind", "--tool=callgrind", "--demangle=no", f"--callgrind-out-file={out}",
                     binary, "--kubeconfig", b.kubeconfig, "--port=0"], None,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        line = p.stdout.readline()
        if not line.startswith("Starting to serve on "):
            sys.exit(f"bench: kproxy did not start under valgrind: {line!r}")
        port = int(line.rsplit(":", 1)[1])
        time.sleep(0.5)
        run(["callgrind_control", "--dump=startup", str(p.pid)], 60)
        base = f"http://127.0.0.1:{port}"
        for path in ["/version"] * 20 + ["/api/v1/pods", "/api/v1/namespaces/bench/blob", "/nope"]:
            run(["curl", "-s", "-o", "/dev/null", "--max-time", "30", base + path], 40)
        run(["curl", "-s", "-o", "/dev/null", "--max-time", "2",
             base + "/api/v1/namespaces/bench/pods?watch=true"], 10)
        run(["wrk", "-t1", "-c16", "-d2s", base + "/version"], 30)
        stop(p, timeout=30)
        dumps = sorted(f for f in os.listdir(b.tmp) if f.startswith("callgrind.out"))
        startup = [f for f in dumps if f != "callgrind.out"]
        order, seen = [], set()
        for f in startup + ["callgrind.out"]:
            for name in callgrind_functions(os.path.join(b.tmp, f)):
                if name in syms and name not in seen:
                    seen.add(name)
                    order.append(name)
        added = 0
        for other in args.also or []:
            order, n = with_counterparts(order, other)
            added += n
        with open(args.out, "w") as f:
            f.write("\n".join(order) + "\n")
        log(f"{len(order)} functions written to {args.out} ({added} of them for --also builds)")
    finally:
        b.cleanup()


# --------------------------------------------------------------------------------------------------
# reporting

METRICS = [
    # key, label, higher is better, digits
    ("cpu_us_per_get", "CPU µs per small GET (c=64)", False, 1),
    ("upstream_cpu_us_per_get", "nginx CPU µs per GET (c=64)", False, 1),
    ("rps_c1", "small GET req/s, c=1", True, 0),
    ("p50_c1_us", "p50 µs, c=1", False, 0),
    ("p99_c1_us", "p99 µs, c=1", False, 0),
    ("rps_c64", "small GET req/s, c=64", True, 0),
    ("p50_c64_us", "p50 µs, c=64", False, 0),
    ("p99_c64_us", "p99 µs, c=64", False, 0),
    ("list_mbps", "1 MB LIST MB/s, c=8", True, 0),
    ("download_mbps", "100 MB download MB/s", True, 0),
    ("rss_idle_mib", "RSS idle MiB", False, 1),
    ("rss_anon_idle_mib", "  of which anonymous MiB", False, 1),
    ("rss_peak_c64_mib", "RSS peak c=64 MiB", False, 1),
    ("rss_watches_h1_mib", "RSS, 1000 watches, h1 upstream MiB", False, 1),
    ("kib_per_watch_h1", "KiB per watch, h1 upstream", False, 1),
    ("rss_watches_h2_mib", "RSS, 1000 watches, h2 upstream MiB", False, 1),
    ("kib_per_watch_h2", "KiB per watch, h2 upstream", False, 1),
    ("startup_ms", "exec → listening ms", False, 1),
    ("binary_mb", "binary size MB", False, 1),
]


def summarise(samples):
    out = {}
    for (target, metric), vals in samples.items():
        out.setdefault(target, {})[metric] = {
            "median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals),
            "samples": [round(v, 3) for v in vals],
        }
    return out


def targets_check(s):
    def med(t, m):
        return s.get(t, {}).get(m, {}).get("median")

    checks = []

    def check(name, value, ok, shown):
        checks.append({"target": name, "value": shown, "met": bool(ok) if value is not None else None})

    k = lambda m: med("kproxy", m)  # noqa: E731
    d = lambda m: med("direct", m)  # noqa: E731
    c = lambda m: med("kubectl", m)  # noqa: E731

    def ratio(x, y):
        return x / y if x is not None and y else None

    v = k("cpu_us_per_get")
    check("CPU per small GET ≤ 15 µs", v, v is not None and v <= 15, f"{v:.1f} µs" if v else "-")
    v = ratio(k("rps_c64"), d("rps_c64"))
    check("c=64 throughput ≥ 0.40× direct", v, v is not None and v >= 0.40, f"{v:.2f}×" if v else "-")
    v = ratio(k("rps_c64"), c("rps_c64"))
    check("c=64 throughput ≥ 4× kubectl proxy", v, v is not None and v >= 4, f"{v:.1f}×" if v else "-")
    v = k("p50_c1_us") - d("p50_c1_us") if k("p50_c1_us") is not None and d("p50_c1_us") is not None else None
    check("added p50 at c=1 ≤ 40 µs", v, v is not None and v <= 40, f"{v:.0f} µs" if v is not None else "-")
    v = ratio(k("list_mbps"), d("list_mbps"))
    check("1 MB LIST ≥ 0.70× direct", v, v is not None and v >= 0.70, f"{v:.2f}×" if v else "-")
    v = ratio(k("download_mbps"), d("download_mbps"))
    check("100 MB download ≥ 0.80× direct", v, v is not None and v >= 0.80, f"{v:.2f}×" if v else "-")
    v = k("rss_idle_mib")
    check("RSS idle ≤ 6 MiB", v, v is not None and v <= 6, f"{v:.1f} MiB" if v else "-")
    v = k("rss_peak_c64_mib")
    check("RSS peak c=64 ≤ 16 MiB", v, v is not None and v <= 16, f"{v:.1f} MiB" if v else "-")
    for proto in ("h1", "h2"):
        v = k(f"kib_per_watch_{proto}")
        check(f"≤ 16 KiB per open watch (1000 open, {proto} upstream)", v, v is not None and v <= 16,
              f"{v:.1f} KiB" if v else "-")
    v = k("startup_ms")
    check("exec → listening ≤ 10 ms", v, v is not None and v <= 10, f"{v:.1f} ms" if v else "-")
    v = k("binary_mb")
    check("stripped release binary ≤ 10 MB", v, v is not None and v <= 10, f"{v:.1f} MB" if v else "-")
    return checks


def fmt(entry, digits):
    if entry is None:
        return "—"
    m, lo, hi = entry["median"], entry["min"], entry["max"]
    if entry["n"] == 1:
        return f"{m:,.{digits}f}"
    return f"{m:,.{digits}f} ({lo:,.{digits}f}–{hi:,.{digits}f})"


def table(s):
    rows = [["figure", "direct", "kubectl proxy", "nginx proxy", "kproxy", "kproxy/direct",
             "kproxy/kubectl", "kproxy/nginx"]]
    for key, label, _, digits in METRICS:
        cells = [label]
        for t in ("direct", "kubectl", "nginx", "kproxy"):
            cells.append(fmt(s.get(t, {}).get(key), digits))
        k = s.get("kproxy", {}).get(key, {}).get("median")
        for t in ("direct", "kubectl", "nginx"):
            o = s.get(t, {}).get(key, {}).get("median")
            cells.append(f"{k / o:.2f}" if k is not None and o else "—")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def clusters_table(s):
    """kproxy with 20 contexts (`--all-contexts`), requests to one under `/clusters/bench/`, against
    kproxy serving that context at `/`."""
    rows = [["figure (20 contexts, 1 used)", "kproxy at /", "kproxy at /clusters/bench/", "difference"]]
    for key, label, _, digits in METRICS:
        k = s.get("kproxy", {}).get(key)
        c = s.get("clusters", {}).get(key)
        if k is None or c is None:
            continue
        diff = c["median"] - k["median"]
        rows.append([label, fmt(k, digits), fmt(c, digits), f"{diff:+,.{max(digits, 1)}f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def kubectl_version(kubectl):
    try:
        out = run([kubectl, "version", "--client", "-o", "json"], 10).stdout
        return json.loads(out).get("clientVersion", {}).get("gitVersion")
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def main_run(args):
    for tool in ("nginx", "wrk", "curl", "openssl"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"bench: {tool} is missing (bench/run.sh installs it)")
    if not os.path.exists(args.kproxy):
        sys.exit(f"bench: {args.kproxy} is missing: cargo build --release")
    if os.cpu_count() < 2:
        log("one CPU only: pinning disabled, figures are not comparable with the targets")
        args.load_cpu = args.server_cpu = None
    os.sched_setaffinity(0, {args.load_cpu} if args.load_cpu is not None else os.sched_getaffinity(0))
    b = Bench(args)
    try:
        elapsed = b.go()
    finally:
        b.cleanup()
    s = summarise(b.samples)
    checks = targets_check(s)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "layout": {"load_cpu": args.load_cpu, "server_cpu": args.server_cpu, "rounds": args.rounds,
                   "token_bytes": args.token_bytes,
                   "duration_s": args.duration, "watches": args.watches, "elapsed_s": round(elapsed, 1)},
        "versions": {
            "kubectl": kubectl_version(b.kubectl),
            "nginx": run(["nginx", "-v"], 10).stderr.strip(),
            "git": run(["git", "-C", REPO, "describe", "--always", "--dirty"], 10).stdout.strip(),
        },
        "figures": s,
        "targets": checks,
    }
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print()
    print(f"kproxy benchmark — medians (min–max) over {args.rounds} rounds; load on CPU {args.load_cpu}, "
          f"proxy + upstream on CPU {args.server_cpu}; {elapsed:.0f} s")
    print()
    print(table(s))
    print()
    if "clusters" in s:
        print(clusters_table(s))
        print()
    for c in checks:
        mark = {True: "met   ", False: "MISSED", None: "n/a   "}[c["met"]]
        print(f"  {mark} {c['target']}: {c['value']}")
    print(f"\nJSON: {args.json}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the benchmark")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--duration", type=int, default=3, help="seconds per wrk measurement")
    r.add_argument("--downloads", type=int, default=2, help="100 MB downloads per round")
    r.add_argument("--starts", type=int, default=8, help="extra exec-to-listening samples per round")
    r.add_argument("--watches", type=int, default=1000)
    r.add_argument("--load-cpu", type=int, default=0)
    r.add_argument("--server-cpu", type=int, default=1)
    r.add_argument("--max-seconds", type=int, default=540, help="stop starting new rounds after this")
    r.add_argument("--kproxy", default=os.path.join(REPO, "target/release/kproxy"))
    r.add_argument("--kubectl", default="kubectl")
    r.add_argument("--targets", default="direct,kubectl,nginx,kproxy,clusters", type=lambda s: s.split(","),
                   help="nginx: nginx as a reverse proxy in kproxy's place, the peer for calibration; "
                        "clusters: kproxy --all-contexts with 20 contexts, requests under /clusters/bench/")
    r.add_argument("--token-bytes", type=int, default=32,
                   help="length of the bearer token (real ones are about 1,000)")
    r.add_argument("--json", default=os.path.join(HERE, "results/latest.json"))
    r.add_argument("--keep-tmp", action="store_true")
    w = sub.add_parser("watch-server")
    w.add_argument("--port", type=int, required=True, help="TLS, HTTP/1.1 only")
    w.add_argument("--plain-port", type=int, required=True, help="plain HTTP/1.1, behind nginx")
    w.add_argument("--cert", required=True)
    w.add_argument("--key", required=True)
    w.add_argument("--token", required=True)
    w.add_argument("--max-seconds", type=int, default=600)
    c = sub.add_parser("watch-client")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--n", type=int, default=1000)
    c.add_argument("--timeout", type=int, default=60)
    o = sub.add_parser("link-order", help="regenerate the release link's symbol order (bench/link-order.sh)")
    o.add_argument("--kproxy", required=True, help="a release build with its symbol table")
    o.add_argument("--out", required=True)
    o.add_argument("--also", action="append",
                   help="another build of the same code (the static image binary, with its symbol table) "
                        "whose names are added beside their counterparts")
    args = ap.parse_args()
    if args.cmd == "run":
        main_run(args)
    elif args.cmd == "link-order":
        main_link_order(args)
    elif args.cmd == "watch-server":
        asyncio.run(watch_server(args))
    else:
        asyncio.run(watch_client(args))


if __name__ == "__main__":
    main()
