#!/usr/bin/env python3
"""The children the redis-operator made for one Redis, as N copies to create without it.

Reads `kubectl get -o json` of the children of the Redis named SEED (a List) on stdin and
writes a List of COUNT copies, each renamed from SEED to PREFIX-<index>, with what the API
server fills in (UIDs, versions, owner references, status, cluster IPs) left out.
Usage: floor-children.py SEED PREFIX COUNT < children.json > floor.json
"""
import json
import sys

seed, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
children = json.load(sys.stdin)["items"]
for child in children:
    child.pop("status", None)
    metadata = child["metadata"]
    for field in ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields",
                  "ownerReferences", "namespace"):
        metadata.pop(field, None)
    if child["kind"] == "Service":
        for field in ("clusterIP", "clusterIPs"):
            child["spec"].pop(field, None)
template = json.dumps(children)
if seed not in template:
    sys.exit(f"the children do not name {seed!r}")
items = []
for index in range(count):
    items.extend(json.loads(template.replace(seed, f"{prefix}-{index}")))
json.dump({"apiVersion": "v1", "kind": "List", "items": items}, sys.stdout)
