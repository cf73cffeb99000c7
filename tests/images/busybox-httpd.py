#!/usr/bin/env python3
"""Build a tiny HTTP-server image from Debian's busybox-static and push it to a registry.

    busybox-httpd.py REGISTRY REPOSITORY:TAG [--page TEXT] [--add IMAGE_PATH=FILE ...]

REGISTRY is `host:port` of a plain-HTTP registry (tests/registry/registry.sh). The image has
one layer: /bin/busybox with its applet links, /www/index.html holding TEXT, and
`httpd -f -v -p 80 -h /www` as its command; `--add` puts more executables in (the hostPort
tests' UDP server, tests/images/udp-echo.rs, since busybox's `nc` has no UDP mode). Standard library only, so the demo needs no
image tool: the registry's v2 API is three requests per blob and one for the manifest.
"""
import argparse
import gzip
import hashlib
import io
import json
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request

BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")
APPLETS = ("sh", "httpd", "cat", "echo", "ls", "sleep", "wget", "hostname", "ip")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def busybox() -> bytes:
    for path in BUSYBOX_PATHS:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            continue
    sys.exit("busybox-httpd.py: busybox not found; install Debian's busybox-static (scripts/install-deps)")


def layer(page: str, extra: dict) -> bytes:
    """The layer as an uncompressed tar, with fixed times so the digest is reproducible."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add_dir(name):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)

        def add_file(name, data, mode):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for name in ("bin", "www", "tmp", "etc"):
            add_dir(name)
        add_file("bin/busybox", busybox(), 0o755)
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(info)
        add_file("www/index.html", page.encode() + b"\n", 0o644)
        add_file("etc/passwd", b"root:x:0:0:root:/:/bin/sh\n", 0o644)
        for name, data in sorted(extra.items()):
            add_file(name, data, 0o755)
    return out.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def request(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        return urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as e:
        sys.exit(f"busybox-httpd.py: {method} {url} failed: {e.code} {e.read().decode(errors='replace')}")
    except urllib.error.URLError as e:
        sys.exit(f"busybox-httpd.py: {method} {url} failed: {e.reason}")


def push_blob(base, repository, data):
    digest = sha256(data)
    started = request("POST", f"{base}/v2/{repository}/blobs/uploads/")
    location = urllib.parse.urljoin(base, started.headers["Location"])
    separator = "&" if "?" in location else "?"
    request("PUT", f"{location}{separator}digest={urllib.parse.quote(digest)}", data,
            {"Content-Type": "application/octet-stream"})
    return digest


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("registry")
    parser.add_argument("reference", help="REPOSITORY:TAG")
    parser.add_argument("--page", default="hello from a cellet cell")
    parser.add_argument("--add", action="append", default=[], metavar="IMAGE_PATH=FILE",
                        help="an executable to add, e.g. /bin/udp-echo=target/udp-echo (under /bin)")
    args = parser.parse_args()
    extra = {}
    for item in args.add:
        path, sep, file = item.partition("=")
        if not sep or not path.startswith("/bin/") or "/" in path[5:] or not path[5:]:
            sys.exit(f"busybox-httpd.py: --add {item!r} is not /bin/NAME=FILE")
        try:
            with open(file, "rb") as f:
                extra[path.lstrip("/")] = f.read()
        except OSError as e:
            sys.exit(f"busybox-httpd.py: --add {item!r}: {e}")
    repository, _, tag = args.reference.rpartition(":")
    if not repository or not tag:
        sys.exit(f"busybox-httpd.py: {args.reference!r} is not REPOSITORY:TAG")
    base = f"http://{args.registry}"

    tar = layer(args.page, extra)
    compressed = gzip.compress(tar, mtime=0)
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/httpd", "-f", "-v", "-p", "80", "-h", "/www"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": push_blob(base, repository, config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": push_blob(base, repository, compressed), "size": len(compressed)}],
    }, sort_keys=True).encode()
    request("PUT", f"{base}/v2/{repository}/manifests/{tag}", manifest, {"Content-Type": OCI_MANIFEST})
    print(f"{args.registry}/{repository}:{tag}@{sha256(manifest)}")


if __name__ == "__main__":
    main()
