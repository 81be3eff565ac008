"""What scripts/test-recipes reads out of the recipes in docs/recipes/, one subcommand each.

  steps WORKFLOW DIR     each `run:` step of the workflow's one job as DIR/NN.sh; prints
                         "NN<TAB>step name" lines
  k8s FILE               per container of each Job: "labels<TAB>KEY=V1,V2 ..." (nodeSelector
                         and required node affinity) and "command<TAB>shell-quoted command"
  nomad FILE             "labels<TAB>KEY=V1,V2" per constraint on client meta, and
                         "command<TAB>shell-quoted command" per task
"""

import shlex
import sys
from pathlib import Path

import hcl2
import yaml


def steps(workflow, out):
    doc = yaml.safe_load(Path(workflow).read_text())
    (job,) = doc["jobs"].values()
    n = 0
    for step in job["steps"]:
        if "run" not in step:
            continue
        n += 1
        Path(out, f"{n:02}.sh").write_text(step["run"])
        print(f"{n:02}\t{step['name']}")


def k8s(path):
    for doc in yaml.safe_load_all(Path(path).read_text()):
        pod = doc["spec"]["template"]["spec"]
        labels = [f"{k}={v}" for k, v in pod.get("nodeSelector", {}).items()]
        required = (
            pod.get("affinity", {})
            .get("nodeAffinity", {})
            .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        )
        for term in required.get("nodeSelectorTerms", []):
            for e in term["matchExpressions"]:
                labels.append(f"{e['key']}={','.join(e.get('values', []))}")
        print("labels\t" + " ".join(labels))
        for c in pod["containers"]:
            print("command\t" + shlex.join(c["command"] + c.get("args", [])))


def unquote(s):
    return s[1:-1] if s.startswith('"') and s.endswith('"') else s


def nomad(path):
    doc = hcl2.loads(Path(path).read_text())
    for job in doc["job"]:
        for body in job.values():
            for group in body["group"]:
                for g in group.values():
                    for c in g.get("constraint", []):
                        attr = unquote(c["attribute"])
                        key = attr.removeprefix("$${meta.").removesuffix("}")
                        print(f"labels\t{key}={unquote(c['value'])}")
                    for task in g["task"]:
                        for t in task.values():
                            conf = t["config"][0]
                            argv = [unquote(conf["command"])] + [unquote(a) for a in conf["args"]]
                            print("command\t" + shlex.join(argv))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"steps": steps, "k8s": k8s, "nomad": nomad}[cmd](*args)
