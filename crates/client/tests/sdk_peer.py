#!/usr/bin/env python3
"""The real Arvados Python SDK as a Keep peer for keep-client's interop test
(tests/sdk_interop.rs, issue 3). Run with the venv's python (scripts/python-venv).

    sdk_peer.py put SEED SIZE...   writes block i = block_data(SEED, i, SIZE_i) with
                                   KeepClient.put(copies=2); prints one signed locator
                                   a line, in order
    sdk_peer.py get SEED SIZE...   reads one signed locator a line from stdin and
                                   KeepClient.get()s each; the bytes must equal
                                   block_data(SEED, i, SIZE_i); prints "md5+size" a line
    sdk_peer.py collections 0      reads one collection UUID from stdin; lists it with
                                   api.collections().list(filters, select, order,
                                   include_trash, include_old_versions, limit,
                                   count="none") and gets it with .get(); prints
                                   {"list": ..., "get": ...} as one JSON line

Configuration comes from the environment, as for the SDK's CLIs: ARVADOS_API_HOST,
ARVADOS_API_TOKEN, ARVADOS_API_HOST_INSECURE, or ARVADOS_KEEP_SERVICES (then no API
is used). Signed locators are secrets: they go to stdout only, and failures are
reported on stderr with any "+A<signature>" hint redacted. Exits 1 on any failure.
"""
import hashlib
import json
import os
import re
import struct
import sys
import traceback

import arvados

# Few retries: the SDK's defaults back off for up to 420 s (python-sdk-notes §8).
RETRIES = 1


def block_data(seed, index, size):
    """MD5 in counter mode: md5(b"keep-interop" + seed + index + counter), all u64 LE.
    Must match `block_data` in tests/sdk_interop.rs."""
    prefix = b"keep-interop" + struct.pack("<QQ", seed, index)
    md5 = hashlib.md5
    n = (size + 15) // 16
    return b"".join(md5(prefix + struct.pack("<Q", c)).digest() for c in range(n))[:size]


def keep_client():
    if os.environ.get("ARVADOS_KEEP_SERVICES"):
        # Every listed URL is treated as a proxy; no API request is made.
        return arvados.KeepClient(api_token=os.environ["ARVADOS_API_TOKEN"], num_retries=RETRIES)
    api = arvados.api("v1", num_retries=RETRIES)
    return arvados.KeepClient(api_client=api, num_retries=RETRIES)


def redact(text):
    return re.sub(r"\+A[0-9a-fA-F]+@[0-9a-fA-F]+", "+A<redacted>", text)


def main():
    mode, seed, sizes = sys.argv[1], int(sys.argv[2]), [int(s) for s in sys.argv[3:]]
    kc = keep_client()
    if mode == "put":
        for i, size in enumerate(sizes):
            loc = kc.put(block_data(seed, i, size), copies=2)
            print(loc, flush=True)
    elif mode == "get":
        locs = [l.strip() for l in sys.stdin.read().splitlines() if l.strip()]
        if len(locs) != len(sizes):
            raise SystemExit("expected %d locators on stdin, got %d" % (len(sizes), len(locs)))
        for i, (loc, size) in enumerate(zip(locs, sizes)):
            # A fresh client per block: nothing comes from a cache.
            got = keep_client().get(loc)
            want = block_data(seed, i, size)
            if got != want:
                raise SystemExit("block %d (%s): SDK read %d bytes, md5 %s; want %d bytes, md5 %s" % (
                    i, loc.split("+A")[0], len(got), hashlib.md5(got).hexdigest(),
                    len(want), hashlib.md5(want).hexdigest()))
            print("%s+%d" % (hashlib.md5(got).hexdigest(), len(got)), flush=True)
    elif mode == "collections":
        uuid = sys.stdin.read().strip()
        api = arvados.api("v1", num_retries=RETRIES)
        listed = api.collections().list(
            filters=[["uuid", "=", uuid]],
            select=["uuid", "manifest_text", "portable_data_hash", "current_version_uuid",
                    "version", "is_trashed", "name"],
            include_trash=True,
            include_old_versions=True,
            order=["uuid asc"],
            limit=10,
            count="none",
        ).execute(num_retries=RETRIES)
        got = api.collections().get(uuid=uuid).execute(num_retries=RETRIES)
        print(json.dumps({"list": listed, "get": got}), flush=True)
    else:
        raise SystemExit("unknown mode %r" % mode)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as e:
        if e.code not in (None, 0):
            sys.stderr.write(redact(str(e.code)) + "\n")
            sys.exit(1)
    except BaseException:
        sys.stderr.write(redact(traceback.format_exc()))
        sys.exit(1)
