#!/usr/bin/env python3
"""Interop checks of keep-testcluster against the real Arvados Python SDK.

Usage: sdk_interop.py DIR   (DIR is a running `keep-testcluster run --dir DIR`).
Needs arvados-python-client==3.2.1 (see run_interop.sh). Exits non-zero on failure.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.request

import arvados
import arvados.errors


def main():
    d = sys.argv[1]
    info = json.load(open(os.path.join(d, "cluster.json")))
    os.environ["ARVADOS_API_HOST"] = info["api_host"]
    os.environ["ARVADOS_API_TOKEN"] = info["system_root_token"]
    os.environ["ARVADOS_API_HOST_INSECURE"] = "false"
    os.environ["SSL_CERT_FILE"] = info["cert_path"]
    api = arvados.api("v1", host=info["api_host"], token=info["system_root_token"], num_retries=0)
    kc = arvados.KeepClient(api_client=api, num_retries=0)

    # put(copies=2) then get; the block is on at least the first two in probe order.
    data = os.urandom(100_000)
    loc = kc.put(data, copies=2)
    assert kc.get(loc) == data, "get returned other bytes"
    md5 = hashlib.md5(data).hexdigest()
    uuids = [k["uuid"] for k in info["keepstores"]]
    order = sorted(uuids, key=lambda u: hashlib.md5((md5 + u[-15:]).encode()).hexdigest(), reverse=True)
    holders = set()
    for k in info["keepstores"]:
        req = urllib.request.Request(k["url"] + "/index/" + md5,
                                     headers={"Authorization": "Bearer " + info["system_root_token"]})
        body = urllib.request.urlopen(req).read().decode()
        assert body.endswith("\n"), "index without terminator"
        if any(line.startswith(md5 + "+") for line in body.splitlines()):
            holders.add(k["uuid"])
    assert set(order[:2]) <= holders, (order, holders)
    print("ok put/get copies=2, holders", len(holders))

    # Wrong and expired signatures are refused.
    bad = loc.split("+A")[0] + "+A" + "0" * 40 + "@" + loc.split("@")[1]
    # Fresh clients: a KeepClient serves repeated reads from its block cache.
    try:
        arvados.KeepClient(api_client=api, num_retries=0).get(bad)
        raise AssertionError("wrong signature accepted")
    except (arvados.errors.KeepReadError, arvados.errors.NotFoundError):
        pass
    expired = loc.split("+A")[0] + "+A" + loc.split("+A")[1].split("@")[0] + "@20000000"
    try:
        arvados.KeepClient(api_client=api, num_retries=0).get(expired)
        raise AssertionError("expired signature accepted")
    except (arvados.errors.KeepReadError, arvados.errors.NotFoundError):
        pass
    print("ok bad/expired signatures refused")

    # Through the keepproxy, when the cluster has one (the SDK treats it as a proxy:
    # one writer, X-Keep-Desired-Replicas tells the proxy how many copies to make).
    if info.get("proxy"):
        pk = arvados.KeepClient(proxy=info["proxy"]["url"], api_token=info["user_token"], num_retries=0)
        pdata = os.urandom(5000)
        ploc = pk.put(pdata, copies=2)
        assert pk.get(ploc) == pdata
        print("ok keepproxy put/get copies=2")

    # arv-put --raw and arv-get round-trip a file larger than one block (64 MiB + 1 MiB).
    bindir = os.path.dirname(sys.executable)
    with tempfile.TemporaryDirectory() as t:
        src = os.path.join(t, "big.bin")
        with open(src, "wb") as f:
            f.write(os.urandom((64 << 20) + (1 << 20)))
        env = dict(os.environ, HOME=t)
        out = subprocess.run([os.path.join(bindir, "arv-put"), "--no-resume", "--raw", "--retries", "0", src],
                             env=env, check=True, capture_output=True, text=True).stdout.strip()
        # --raw prints one signed locator per block, comma-separated.
        locs = out.split(",")
        assert len(locs) == 2, out
        back = b"".join(
            subprocess.run([os.path.join(bindir, "arv-get"), "--retries", "0", l, "-"],
                           env=env, check=True, capture_output=True).stdout
            for l in locs)
        assert open(src, "rb").read() == back
    print("ok arv-put --raw / arv-get round trip")
    print("interop OK")


if __name__ == "__main__":
    main()
