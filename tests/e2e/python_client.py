"""The official Python client (PyPI `kubernetes`, pinned in requirements.txt) through kproxy: create and
list, then a watch that must see ADDED, MODIFIED and DELETED. Run by tests/e2e_real_apiserver.rs:

    python python_client.py PROXY_URL NAMESPACE

Prints one JSON object on stdout: the client version, the names listed and the [type, name] of each watch
event. Any error exits non-zero with a traceback.
"""
import json
import sys
import threading

import kubernetes
from kubernetes import client, watch

proxy_url, ns = sys.argv[1], sys.argv[2]

cfg = client.Configuration()
cfg.host = proxy_url  # plain http to kproxy and no credentials: kproxy adds them
api = client.CoreV1Api(client.ApiClient(cfg))


def config_map(name, data):
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data=data)


for name in ("py-a", "py-b"):
    api.create_namespaced_config_map(ns, config_map(name, {"k": name}))
listed = api.list_namespaced_config_map(ns)
rv = listed.metadata.resource_version


def mutate():
    api.create_namespaced_config_map(ns, config_map("py-watched", {"v": "1"}))
    api.patch_namespaced_config_map("py-watched", ns, {"data": {"v": "2"}})
    api.delete_namespaced_config_map("py-watched", ns)


# The watch starts at the list's resourceVersion, so it sees every change the thread makes, whether the
# change lands before or after the watch request reaches the API server: no sleeps, no races.
mutator = threading.Thread(target=mutate)
mutator.start()
events = []
w = watch.Watch()
for ev in w.stream(api.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=60, _request_timeout=90):
    events.append([ev["type"], ev["object"].metadata.name])
    if ev["type"] == "DELETED" and ev["object"].metadata.name == "py-watched":
        w.stop()
mutator.join(timeout=60)

print(json.dumps({
    "client": kubernetes.__version__,
    "listed": sorted(item.metadata.name for item in listed.items),
    "events": events,
}))
