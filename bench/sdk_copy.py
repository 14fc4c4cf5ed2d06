#!/usr/bin/env python3
"""Baseline "SDK sequential": the official Arvados Python SDK copying one block at a
time, as an administrator would script it (and as the Go keep-rsync does): get the
block from the source, put it to the destination with the destination's replication.

usage: sdk_copy.py SRC_CLUSTER_JSON DST_CLUSTER_JSON REPLICATION LOCATORS_FILE

LOCATORS_FILE holds one `md5+size` per line (read from the source index). Prints the
number of blocks and bytes copied as JSON on stdout.
"""

import json
import sys
import warnings

warnings.filterwarnings("ignore")

import arvados  # noqa: E402  (the SDK prints warnings on import we silence above)
import arvados.keep  # noqa: E402


def client(info):
    api = arvados.api(
        "v1",
        host=info["api_host"],
        token=info["system_root_token"],
        insecure=True,
        num_retries=2,
    )
    # Default KeepClient, as an administrator's script would build it.
    return arvados.keep.KeepClient(api_client=api, num_retries=2)


def main():
    src_info = json.load(open(sys.argv[1]))
    dst_info = json.load(open(sys.argv[2]))
    replication = int(sys.argv[3])
    locators = [line.strip() for line in open(sys.argv[4]) if line.strip()]
    src = client(src_info)
    dst = client(dst_info)
    n = 0
    size = 0
    for loc in locators:
        data = src.get(loc)
        dst.put(data, copies=replication)
        n += 1
        size += len(data)
    print(json.dumps({"blocks": n, "bytes": size}))


if __name__ == "__main__":
    main()
