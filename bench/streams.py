#!/usr/bin/env python3
"""Streams bench: port-forward throughput and exec round-trip latency through a genuine kube-apiserver
(tests/apiserver) to kwok's kubelet endpoint (tests/kwok), direct vs `kubectl proxy` vs kproxy.

Standard library only; `bench/streams.sh` builds what it needs and calls this. Everything listens on and
talks to 127.0.0.1; every wait and load is bounded.

Per round and target (the order reversed every other round, fresh port-forward and exec each time):
- port-forward MB/s: `kubectl port-forward pod/web :80` (WebSocket, kubectl's default) to Python's
  http.server on this machine; `curl -o /dev/null` of a 100 MiB file, twice.
- exec round trip: `kubectl exec -i web -- cat` (WebSocket v5); one 16-byte line written to kubectl's
  stdin and read back from its stdout, 200 times after 20 warm-up lines; median and p90.
"""

import argparse
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MIB = 1024 * 1024
TARGETS = ["direct", "kubectl", "kproxy"]


def log(msg):
    print(f"[streams {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stop(proc):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def read_line(proc, pred, seconds, what):
    """Reads proc's stdout line by line until pred(line) returns a value, within `seconds`."""
    deadline = time.time() + seconds
    buf = b""
    fd = proc.stdout.fileno()
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
        if not r:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            v = pred(line.decode(errors="replace"))
            if v is not None:
                return v
    raise RuntimeError(f"no {what} within {seconds}s (exit {proc.poll()})")


def openssl(tmp, *args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp, timeout=60)


def kubelet_pki(tmp):
    """CA, kwok's serving certificate for 127.0.0.1 and the API server's kubelet client certificate."""
    openssl(tmp, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "kubelet-ca.key", "-out", "kubelet-ca.crt", "-days", "2", "-subj", "/CN=kubelet-ca")
    with open(os.path.join(tmp, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    with open(os.path.join(tmp, "client.ext"), "w") as f:
        f.write("extendedKeyUsage=clientAuth\n")
    for name, subj, ext in [("kubelet", "/CN=kwok-kubelet", "san.ext"),
                            ("kubelet-client", "/CN=kube-apiserver-kubelet-client", "client.ext")]:
        openssl(tmp, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj)
        openssl(tmp, "x509", "-req", "-in", f"{name}.csr", "-CA", "kubelet-ca.crt", "-CAkey",
                "kubelet-ca.key", "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", ext)


class Bed:
    """The API server, kwok with one node and one Running pod, the HTTP server behind the pod, and
    the two proxies."""

    def __init__(self, a, tmp):
        self.a, self.tmp, self.procs = a, tmp, []
        self.env = {"HOME": os.path.join(tmp, "home"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        os.makedirs(self.env["HOME"], exist_ok=True)

    def spawn(self, cmd, **kw):
        p = subprocess.Popen(cmd, **kw)
        self.procs.append(p)
        return p

    def close(self):
        for p in reversed(self.procs):
            stop(p)

    def kubectl(self, target):
        base = [self.a.kubectl, f"--cache-dir={self.env['HOME']}/kube-cache", "--request-timeout=60s"]
        if target == "direct":
            return base + [f"--kubeconfig={self.kubeconfig}"]
        return base + ["--kubeconfig=/dev/null", f"--server={self.urls[target]}"]

    def admin(self, *args, stdin=None):
        return subprocess.run(self.kubectl("direct") + list(args), input=stdin, capture_output=True,
                              text=True, env=self.env, timeout=90)

    def start(self):
        t = self.tmp
        kubelet_pki(t)
        env_dir = os.path.join(t, "env")
        api = self.spawn([self.a.apiserver, f"--kubelet-certificate-authority={t}/kubelet-ca.crt",
                          f"--kubelet-client-certificate={t}/kubelet-client.crt",
                          f"--kubelet-client-key={t}/kubelet-client.key",
                          "--kubelet-preferred-address-types=InternalIP"],
                         env={**self.env, "TESTENV_DIR": env_dir, "TESTENV_STDIN_EOF_EXIT": "1"},
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=open(os.path.join(t, "apiserver.err"), "w"))
        read_line(api, lambda l: l if l.startswith("ready ") else None, 240, "API server ready line")
        self.kubeconfig = os.path.join(env_dir, "admin.kubeconfig")
        log("API server ready")

        www = os.path.join(t, "www")
        os.makedirs(www)
        with open(os.path.join(www, "big.bin"), "wb") as f:
            f.write(os.urandom(100 * MIB))
        http = self.spawn([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1",
                           "--directory", www, "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        http_port = read_line(http, lambda l: int(l.split(" port ")[1].split()[0]) if " port " in l else None,
                              30, "http.server line")

        root = os.path.join(t, "root")
        os.makedirs(root)
        rules = os.path.join(t, "rules.yaml")
        with open(rules, "w") as f:
            f.write("kind: ClusterExec\napiVersion: kwok.x-k8s.io/v1alpha1\nmetadata: {name: exec}\n"
                    f"spec:\n  execs:\n  - local:\n      workDir: {root}\n---\n"
                    "kind: ClusterPortForward\napiVersion: kwok.x-k8s.io/v1alpha1\nmetadata: {name: pf}\n"
                    f"spec:\n  forwards:\n  - target: {{port: {http_port}, address: 127.0.0.1}}\n")
        with socket_port() as kport:
            pass
        stages = os.path.join(os.path.dirname(self.a.kwok), "stages.yaml")
        self.spawn([self.a.kwok, f"--config={stages}", f"--config={rules}", f"--kubeconfig={self.kubeconfig}",
                    "--manage-single-node=bench", "--node-ip=127.0.0.1", f"--node-port={kport}",
                    f"--server-address=127.0.0.1:{kport}", f"--tls-cert-file={t}/kubelet.crt",
                    f"--tls-private-key-file={t}/kubelet.key"],
                   env=self.env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(t, "kwok.err"), "w"))
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "bench", "annotations": {"kwok.x-k8s.io/node": "fake"}}}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"},
               "spec": {"nodeName": "bench", "containers": [{"name": "main", "image": "none"}]}}
        for obj in (node, pod):
            r = self.admin("apply", "-f", "-", stdin=json.dumps(obj))
            if r.returncode != 0:
                raise RuntimeError(f"kubectl apply: {r.stderr}")
        deadline = time.time() + 90
        while self.admin("get", "pod", "web", "-o", "jsonpath={.status.phase}").stdout != "Running":
            if time.time() > deadline:
                raise RuntimeError("pod web never Running (see kwok.err)")
            time.sleep(0.2)
        log("kwok: pod Running")

        self.urls = {}
        for name, cmd in [("kubectl", [self.a.kubectl, "proxy"]), ("kproxy", [self.a.kproxy])]:
            p = self.spawn(cmd + [f"--kubeconfig={self.kubeconfig}", "--port=0", "--reject-paths="],
                           env=self.env, stdout=subprocess.PIPE,
                           stderr=open(os.path.join(t, f"{name}.err"), "w"))
            addr = read_line(p, lambda l: l.split("Starting to serve on ")[1].strip()
                             if "Starting to serve on " in l else None, 30, f"{name} startup line")
            self.urls[name] = f"http://{addr}"

    def port_forward_mbs(self, target, downloads):
        pf = subprocess.Popen(self.kubectl(target) + ["port-forward", "--address=127.0.0.1", "pod/web", ":80"],
                              env=self.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            port = read_line(pf, lambda l: int(l.split("127.0.0.1:")[1].split()[0])
                             if l.startswith("Forwarding from 127.0.0.1:") else None, 60, "Forwarding line")
            out = []
            for _ in range(downloads):
                r = subprocess.run(["curl", "-q", "-sSf", "--max-time", "120", "-o", "/dev/null", "-w",
                                    "%{size_download} %{time_total}", f"http://127.0.0.1:{port}/big.bin"],
                                   capture_output=True, text=True, timeout=130)
                size, secs = r.stdout.split()
                if r.returncode != 0 or int(size) != 100 * MIB:
                    raise RuntimeError(f"download via {target}: {r.returncode} {r.stdout} {r.stderr}")
                out.append(int(size) / MIB / float(secs))
            return out
        finally:
            stop(pf)

    def exec_rtt_us(self, target, n, warmup=20):
        ex = subprocess.Popen(self.kubectl(target) + ["exec", "-i", "web", "--", "cat"], env=self.env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            samples = []
            for i in range(warmup + n):
                line = f"ping {i:010d}\n".encode()
                t0 = time.perf_counter()
                ex.stdin.write(line)
                ex.stdin.flush()
                read_line(ex, lambda l, want=line.decode().strip(): True if l == want else None, 60,
                          f"echo {i} via {target}")
                if i >= warmup:
                    samples.append((time.perf_counter() - t0) * 1e6)
            return samples
        finally:
            stop(ex)


class socket_port:
    def __enter__(self):
        import socket
        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return self.s.getsockname()[1]

    def __exit__(self, *exc):
        self.s.close()


def fmt(vals, digits=0):
    if not vals:
        return "—"
    m = statistics.median(vals)
    return f"{m:,.{digits}f} ({min(vals):,.{digits}f}–{max(vals):,.{digits}f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apiserver", required=True)
    ap.add_argument("--kwok", required=True)
    ap.add_argument("--kproxy", default=os.path.join(REPO, "target/release/kproxy"))
    ap.add_argument("--kubectl", default=shutil.which("kubectl"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rtt-lines", type=int, default=200)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "streams.json"))
    a = ap.parse_args()
    started = time.time()
    tmp = tempfile.mkdtemp(prefix="kproxy-bench-streams.")
    bed = Bed(a, tmp)
    mbs = {t: [] for t in TARGETS}
    rtt_med = {t: [] for t in TARGETS}
    rtt_p90 = {t: [] for t in TARGETS}
    try:
        bed.start()
        for rnd in range(a.rounds):
            order = TARGETS if rnd % 2 == 0 else list(reversed(TARGETS))
            for t in order:
                mbs[t] += bed.port_forward_mbs(t, 2)
                s = sorted(bed.exec_rtt_us(t, a.rtt_lines))
                rtt_med[t].append(statistics.median(s))
                rtt_p90[t].append(s[int(len(s) * 0.9) - 1])
                log(f"round {rnd + 1} {t}: {mbs[t][-2]:.0f}, {mbs[t][-1]:.0f} MiB/s; "
                    f"exec rtt median {rtt_med[t][-1]:.0f} µs, p90 {rtt_p90[t][-1]:.0f} µs")
    finally:
        bed.close()
        shutil.rmtree(tmp, ignore_errors=True)

    rows = [("port-forward 100 MiB download MiB/s", mbs, 0),
            ("exec round trip median µs", rtt_med, 0),
            ("exec round trip p90 µs", rtt_p90, 0)]
    med = lambda v: statistics.median(v)  # noqa: E731
    print(f"{a.rounds} rounds in {time.time() - started:.0f}s; medians (min–max)\n")
    print("| figure | direct | kubectl proxy | kproxy | kproxy/direct | kproxy/kubectl |")
    print("|---|---|---|---|---|---|")
    for name, vals, d in rows:
        print(f"| {name} | {fmt(vals['direct'], d)} | {fmt(vals['kubectl'], d)} | {fmt(vals['kproxy'], d)} "
              f"| {med(vals['kproxy']) / med(vals['direct']):.2f} | {med(vals['kproxy']) / med(vals['kubectl']):.2f} |")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"rounds": a.rounds, "port_forward_mib_s": mbs, "exec_rtt_median_us": rtt_med,
                   "exec_rtt_p90_us": rtt_p90}, f, indent=1)


if __name__ == "__main__":
    main()
