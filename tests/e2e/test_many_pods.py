"""End to end: many pods, each with its own service account, enrolled on one node at once.

- ManyPodsTest: 200 pods on node1, 200 identities. Every pod gets its certificate and the agent
  is ready within a bound. With both ends of the control channel sending with blocking
  sendmsg(), ambitd answering CSRs and ambit-tunnel still sending them filled both directions
  from about 118 pods on: neither read again, no pod got a certificate and the agent was never
  ready (125 reproduced it every time). Past the built-in CA's burst of 100 signatures a node,
  the rest come at 5 a second: they wait in ambitd for the rate, in order, and none is refused
  (refused, each backed off per identity, doubling, and a few of 150 were still waiting past
  the bound). The pods have long names (about 230 bytes of uid), so the data plane's heartbeat
  answers, which list every pod, go in a sealed file instead of inline.
"""

import json
import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import Topology, build_dir, run  # noqa: E402

AMBITCTL = str(build_dir() / "agent/cli/ambitctl")
# AMBIT_MANY_PODS: another count, e.g. to find where a build stops coping.
PODS = int(os.environ.get("AMBIT_MANY_PODS", "200"))
READY_WITHIN_S = 90
# A DNS-1123 subdomain: dot-separated labels of at most 63 bytes each ("p199-" and the first one
# too), 228 bytes in all.
LONG = ".".join(["l" * 55] * 4)


class ManyPodsTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("mp")
        cls.topo.__enter__()
        try:
            started = time.monotonic()
            # Long names (a pod name may have 253 bytes): the heartbeat answer lists every pod
            # by uid, and at about 230 bytes each it is over what goes inline.
            cls.pods = [cls.topo.add_pod(f"p{i}-{LONG}", namespace="many",
                                         service_account=f"sa{i}") for i in range(PODS)]
            print(f"\n  {PODS} pods created in {time.monotonic() - started:.1f}s", flush=True)
            cls.agent = cls.topo.add_agent("node1")
            cls.topo.write_pods(cls.agent, cls.pods)
        except Exception:
            cls.topo.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def identities_with_certificates(self):
        r = run(AMBITCTL, "config-dump", "--admin-socket", self.agent.admin_socket, check=False)
        if r.returncode != 0:
            return set()
        doc = json.loads(r.stdout)
        return {c["identity"] for c in doc["certificates"]["certificates"]
                if c["state"] in ("valid", "renewing")}

    def test_every_pod_gets_its_certificate_and_the_agent_gets_ready(self):
        want = {f"spiffe://cluster.local/ns/many/sa/sa{i}" for i in range(PODS)}
        started = time.monotonic()
        self.agent.start()
        deadline = started + READY_WITHIN_S
        status, body, have = None, "", set()
        while time.monotonic() < deadline:
            status, body = self.agent.try_ready(default=(None, ""))
            if status == 200:
                have = self.identities_with_certificates()
                if have == want:
                    break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        print(f"  ready with {len(have)} certificates {elapsed:.1f}s after start", flush=True)
        self.assertEqual(status, 200, f"not ready after {READY_WITHIN_S}s: {body[:2000]}\n"
                         f"{self.agent.logs()[-3000:]}")
        self.assertEqual(have, want, f"{len(want - have)} identities without a certificate")
        logs = self.agent.logs()
        self.assertNotIn("stopped reading its control channel", logs)
        # Past the burst the requests waited for the rate; none was refused and backed off.
        if PODS > 100:
            self.assertIn("waits: certificate signing rate limit for node node1", logs)
        self.assertNotIn("refused CSR", logs)
        self.assertNotIn("certificate request failed", logs)
        for i in (0, PODS // 2, PODS - 1):
            self.assertIn(f"certificate spiffe://cluster.local/ns/many/sa/sa{i} valid", logs)
        # The heartbeat answers (every pod's uid) came in a sealed file, and every one arrived:
        # the agent is ready, and none was lost.
        if PODS >= 150:
            self.assertIn(f"heartbeat answers list {PODS} pods in", logs)
        self.assertIsNone(re.search(r"heartbeat answer \d+:", logs))


if __name__ == "__main__":
    unittest.main()
