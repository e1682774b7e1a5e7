"""Large configurations for scale tests and benchmarks: peer pods on other nodes and one-rule
DENY policies in namespaces no test pod lives in. Peer addresses come from 2001:2:ff::/64, so
100 000 of them never meet the IPv4 subnets topologies use; nothing ever sends to them."""

import os

PODS_PER_FILE = 20_000  # a file stays far below the per-file size cap


def peer_pod(i):
    return (
        "apiVersion: v1\nkind: Pod\nmetadata:\n"
        f"  name: peer-{i}\n  namespace: scale-{i % 100}\n"
        f"  labels:\n    app: peer-{i % 1000}\n"
        f"  annotations:\n    ambit.dev/netns: /var/run/netns/peer-{i}\n"
        f"spec:\n  serviceAccountName: sa-{i % 500}\n  nodeName: far-{i % 50}\n"
        f"status:\n  podIP: 2001:2:ff::{i >> 16:x}:{i & 0xffff:x}\n"
    )


def deny_policy(i):
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n"
        f"  name: deny-{i}\n  namespace: scale-{i % 100}\n"
        "spec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n"
        f"        principals: [\"cluster.local/ns/scale-{i % 100}/sa/blocked-{i}\"]\n"
    )


def write_scale_config(agent, peers, policies):
    """Writes `peers` peer pods and `policies` DENY policies into the agent's config directory;
    returns the bytes written."""
    written = 0
    files = 0
    for start in range(0, peers, PODS_PER_FILE):
        text = "---\n".join(peer_pod(i) for i in range(start, min(peers, start + PODS_PER_FILE)))
        agent.write_config(f"scale-peers-{files:03d}.yaml", text)
        written += len(text)
        files += 1
    if policies:
        text = "---\n".join(deny_policy(i) for i in range(policies))
        agent.write_config("scale-policies.yaml", text)
        written += len(text)
    return written


def remove_scale_config(agent):
    for name in os.listdir(agent.config_dir):
        if name.startswith("scale-"):
            os.unlink(os.path.join(agent.config_dir, name))

