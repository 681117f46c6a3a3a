#!/usr/bin/env python3
"""Checks the OCI archive build/image.sh wrote, without a container runtime.

Verifies every blob against its digest, then that the image config runs /kproxy as 65532:65532 with
port 8001 exposed, that the layers hold the CA bundle and a /kproxy byte-identical to the static
binary, and that this binary, extracted, prints its version.

Usage: build/check_image.py ARCHIVE [BINARY]   (BINARY defaults to build/out/kproxy)
"""
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile


def fail(msg):
    print(f"check_image: ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) not in (2, 3):
        fail("usage: check_image.py ARCHIVE [BINARY]")
    archive = sys.argv[1]
    binary = sys.argv[2] if len(sys.argv) == 3 else "build/out/kproxy"

    with tarfile.open(archive) as outer:
        def blob(digest):
            algo, _, hexdigest = digest.partition(":")
            if algo != "sha256":
                fail(f"unsupported digest {digest}")
            member = outer.extractfile(f"blobs/sha256/{hexdigest}")
            if member is None:
                fail(f"blob {digest} missing from {archive}")
            data = member.read()
            if hashlib.sha256(data).hexdigest() != hexdigest:
                fail(f"blob {digest} does not match its digest")
            return data

        index = json.load(outer.extractfile("index.json"))
        if len(index.get("manifests", [])) != 1:
            fail(f"expected one manifest in index.json, found {len(index.get('manifests', []))}")
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"])).get("config", {})

        if config.get("User") != "65532:65532":
            fail(f"image user is {config.get('User')!r}, want '65532:65532'")
        if (config.get("Entrypoint") or [None])[0] != "/kproxy":
            fail(f"entrypoint is {config.get('Entrypoint')!r}, want /kproxy first")
        if "8001/tcp" not in (config.get("ExposedPorts") or {}):
            fail(f"port 8001/tcp not exposed: {config.get('ExposedPorts')!r}")

        files = {}
        for layer in manifest["layers"]:
            data = blob(layer["digest"])
            if layer["mediaType"].endswith("+gzip"):
                data = gzip.decompress(data)
            with tempfile.TemporaryFile() as raw:
                raw.write(data)
                raw.seek(0)
                with tarfile.open(fileobj=raw) as inner:
                    for m in inner.getmembers():
                        if m.isfile():
                            files[m.name.lstrip("./")] = (m.mode, inner.extractfile(m).read())

    for want in ("kproxy", "etc/ssl/certs/ca-certificates.crt"):
        if want not in files:
            fail(f"/{want} is not in the image (files: {sorted(files)})")
    mode, kproxy = files["kproxy"]
    if not mode & 0o111:
        fail(f"/kproxy is not executable (mode {oct(mode)})")
    with open(binary, "rb") as f:
        if f.read() != kproxy:
            fail(f"/kproxy in the image differs from {binary}")

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "kproxy")
        with open(path, "wb") as f:
            f.write(kproxy)
        os.chmod(path, 0o755)
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        if out.returncode != 0 or not out.stdout.startswith("kproxy "):
            fail(f"/kproxy --version: exit {out.returncode}, stdout {out.stdout!r}, stderr {out.stderr!r}")
    print(f"check_image: ok: {out.stdout.strip()}, user 65532:65532, {len(files)} files", file=sys.stderr)


if __name__ == "__main__":
    main()
