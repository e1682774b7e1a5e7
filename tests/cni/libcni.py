"""Stands in for containerd's and CRI-O's libcni: runs the plug-ins of a network configuration
list the way a runtime does (CNI spec 1.0, "Execution of Network Configurations"):

- ADD: each plug-in in order, its config being the plug-in's object plus the list's `cniVersion`
  and `name`, and from the second on `prevResult` = the previous plug-in's result; the last
  result is the network's. On a failure the runtime cleans up with DEL (as containerd does when
  a sandbox's network set-up fails).
- DEL: each plug-in in reverse order, with `prevResult` = the cached result of the ADD (0.4.0+).
- CHECK: each plug-in in order with `prevResult` = the cached result (0.4.0+).
- VERSION: `{"cniVersion": ...}` on stdin, nothing else.

Env as libcni sets it: CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS
(`IgnoreUnknown=1;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=..;
K8S_POD_UID=..`, containerd's CRI order), CNI_PATH; the plug-in binary found on CNI_PATH.
`netns_exec` runs every plug-in inside a network namespace (the test's "node"), as the runtime
runs them in the node's."""

import json
import os
import subprocess
import time


class CniError(Exception):
    def __init__(self, plugin, rc, stdout, stderr):
        self.plugin, self.rc, self.stdout, self.stderr = plugin, rc, stdout, stderr
        try:
            self.error = json.loads(stdout)
        except ValueError:
            self.error = None
        super().__init__(f"{plugin} exited {rc}: {stdout.strip()} {stderr.strip()}")


def pod_args(namespace, name, uid, infra="0" * 64):
    return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};"
            f"K8S_POD_INFRA_CONTAINER_ID={infra};K8S_POD_UID={uid}")


class Runtime:
    def __init__(self, cni_path, node_netns=None, timeout=60):
        self.cni_path = list(cni_path)
        self.node_netns = node_netns  # path of the namespace the plug-ins run in
        self.timeout = timeout
        self.calls = []  # (plugin type, command, seconds)
        self.results = []  # each plug-in's result of the last add()

    def find(self, plugin_type):
        for d in self.cni_path:
            p = os.path.join(d, plugin_type)
            if os.access(p, os.X_OK):
                return p
        raise FileNotFoundError(f"plug-in {plugin_type} not on CNI_PATH {self.cni_path}")

    def exec_plugin(self, plugin_type, command, conf, container_id="", netns="", ifname="eth0",
                    args="", env_override=None, stdin_bytes=None):
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
               "CNI_PATH": ":".join(self.cni_path)}
        if command != "VERSION":
            env.update({"CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
                        "CNI_IFNAME": ifname, "CNI_ARGS": args})
        if env_override is not None:
            for k, v in env_override.items():
                if v is None:
                    env.pop(k, None)
                else:
                    env[k] = v
        argv = [self.find(plugin_type)]
        if self.node_netns:
            argv = ["nsenter", f"--net={self.node_netns}", "--"] + argv
        data = stdin_bytes if stdin_bytes is not None else json.dumps(conf).encode()
        start = time.monotonic()
        proc = subprocess.run(argv, input=data, env=env, capture_output=True,
                              timeout=self.timeout)
        self.calls.append((plugin_type, command, time.monotonic() - start))
        out, err = proc.stdout.decode(), proc.stderr.decode()
        if proc.returncode != 0:
            raise CniError(plugin_type, proc.returncode, out, err)
        return out, err

    @staticmethod
    def plugin_conf(conflist, plugin, prev_result):
        conf = dict(plugin)
        conf["cniVersion"] = conflist["cniVersion"]
        conf["name"] = conflist["name"]
        if prev_result is not None:
            conf["prevResult"] = prev_result
        return conf

    def add(self, conflist, container_id, netns, args, ifname="eth0"):
        prev = None
        self.results = []
        try:
            for plugin in conflist["plugins"]:
                out, _ = self.exec_plugin(plugin["type"], "ADD",
                                          self.plugin_conf(conflist, plugin, prev),
                                          container_id, netns, ifname, args)
                prev = json.loads(out)
                self.results.append(prev)
        except CniError:
            # The runtime tears down what the earlier plug-ins set up.
            self.delete(conflist, container_id, netns, args, prev, ifname)
            raise
        return prev

    def delete(self, conflist, container_id, netns, args, cached, ifname="eth0"):
        errors = []
        for plugin in reversed(conflist["plugins"]):
            prev = cached if conflist["cniVersion"] not in ("0.3.0", "0.3.1") else None
            try:
                self.exec_plugin(plugin["type"], "DEL", self.plugin_conf(conflist, plugin, prev),
                                 container_id, netns, ifname, args)
            except CniError as e:
                errors.append(e)
        if errors:
            raise errors[0]

    def check(self, conflist, container_id, netns, args, cached, ifname="eth0"):
        for plugin in conflist["plugins"]:
            self.exec_plugin(plugin["type"], "CHECK",
                             self.plugin_conf(conflist, plugin, cached),
                             container_id, netns, ifname, args)

    def version(self, plugin_type, cni_version="1.0.0"):
        out, _ = self.exec_plugin(plugin_type, "VERSION", None,
                                  stdin_bytes=json.dumps({"cniVersion": cni_version}).encode())
        return json.loads(out)
