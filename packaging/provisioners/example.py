#!/usr/bin/env python3
"""Example workspaced provisioner (exec backend, protocol version 1).

Reads one JSON request line on stdin and answers with JSON lines on stdout, as
docs/provisioner-protocol.md specifies. It manages one directory per workspace under
$EXAMPLE_PROVISIONER_ROOT (default /tmp/workspaced-example):

- start: creates the directory, writes params.json, reports one resource with a ready agent;
  when the build claims a prebuild and a parameter changed, it reports the directory as
  replaced (a template whose parameters differ from the preset's defeats its prebuilds);
- stop: marks the directory stopped;
- delete: removes the directory.

The opaque state is a JSON object with a generation counter, so every build can see that
it received the previous build's state. A parameter `fail` = "true" makes the build fail
with a reported error. Copy it as a starting point for a real provisioner.
"""

import json
import os
import shutil
import sys
from datetime import datetime, timezone


def emit(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def log(output, level="info", stage="apply"):
    emit({"type": "log", "level": level, "stage": stage, "output": output})


def now():
    return datetime.now(timezone.utc).isoformat()


def main():
    request = json.loads(sys.stdin.readline())
    if request.get("protocol_version") != 1:
        emit({"type": "complete", "error": "unsupported protocol version %r" % request.get("protocol_version")})
        return 0
    root = os.environ.get("EXAMPLE_PROVISIONER_ROOT", "/tmp/workspaced-example")
    workspace = request["workspace"]
    directory = os.path.join(root, workspace["id"])
    transition = request["transition"]
    previous = json.loads(request["state"]) if request.get("state") else {"generation": 0}
    state = {"directory": directory, "generation": previous.get("generation", 0) + 1}
    started = now()
    log("%s of %s (build %d) by the example provisioner"
        % (transition, workspace["name"], request["build_number"]), stage="plan")

    if request["parameters"].get("fail") == "true":
        emit({"type": "complete", "error": "parameter fail=true asked this build to fail"})
        return 0

    resources = []
    if transition == "start":
        if request["prebuild"]["claims"]:
            changed = sorted(
                name for name, value in request["parameters"].items()
                if request["previous_parameters"].get(name) != value
            )
            if changed:
                emit({"type": "replacement", "resource": "example_directory.home", "paths": changed})
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "params.json"), "w") as out:
            json.dump({"status": "running", "parameters": request["parameters"]}, out)
        resources.append({"name": "home", "type": "example_directory",
                          "agents": [{"name": "main", "ready": True}]})
    elif transition == "stop":
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "params.json"), "w") as out:
            json.dump({"status": "stopped", "parameters": request["parameters"]}, out)
    elif transition == "delete":
        shutil.rmtree(directory, ignore_errors=True)
    log("%s done: %s" % (transition, directory))
    emit({"type": "timing", "stage": "apply", "source": "example", "action": transition,
          "resource": "example_directory.home", "started_at": started, "ended_at": now()})
    emit({"type": "complete", "state": json.dumps(state), "resources": resources})
    return 0


if __name__ == "__main__":
    sys.exit(main())
