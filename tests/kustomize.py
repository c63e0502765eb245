"""A strict build of the Kustomize overlays a render holds (``k8s/overlays/<name>``),
for the parts of Kustomize they use, so the sweep can validate what an environment
really gets without a kustomize binary (none is on PyPI).

Supported: ``resources`` (files and directories), ``namespace``, ``images``,
``configMapGenerator`` (``envs``, ``literals``, ``behavior: merge``) and inline
strategic-merge ``patches``. Where kustomize would go on quietly, or would fail in
the cluster, this fails at once: a kustomization key it does not know, an env file
line that is not ``NAME=value``, a setting given twice, a merge into a ConfigMap that
was not generated, a patch whose object does not exist, a patched container that
does not exist, an image rule that no container uses.

As kustomize does, a generated ConfigMap's name ends in a hash of its data, and every
reference to it in a pod is renamed with it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

Object = dict[str, Any]
KUSTOMIZATION = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "images",
    "configMapGenerator",
    "patches",
}
ENV_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
POD_KINDS = {"Deployment", "Job", "StatefulSet", "DaemonSet"}


class KustomizeError(Exception):
    pass


def build(directory: Path) -> list[Object]:
    """The objects ``kubectl kustomize directory`` would print."""
    objects, generated = _build(directory)
    names = {}
    for name in generated:
        config_map = _find(objects, "ConfigMap", name)
        digest = hashlib.sha256(
            json.dumps(config_map["data"], sort_keys=True).encode()
        ).hexdigest()
        names[name] = config_map["metadata"]["name"] = f"{name}-{digest[:10]}"
    for obj in objects:
        for container in containers(obj):
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef")
                if ref is not None:
                    if ref["name"] not in names:
                        raise KustomizeError(f"no ConfigMap {ref['name']} is generated")
                    ref["name"] = names[ref["name"]]
    return objects


def containers(obj: Object) -> list[Object]:
    """The containers of a workload's pods (none for other kinds)."""
    if obj["kind"] not in POD_KINDS:
        return []
    pod = obj["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def _build(directory: Path) -> tuple[list[Object], list[str]]:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory} has no kustomization.yaml")
    spec = yaml.safe_load(path.read_text())
    unknown = set(spec) - KUSTOMIZATION
    if unknown:
        raise KustomizeError(f"{path}: unsupported keys {sorted(unknown)}")
    if (spec.get("apiVersion"), spec.get("kind")) != (
        "kustomize.config.k8s.io/v1beta1",
        "Kustomization",
    ):
        raise KustomizeError(f"{path}: not a Kustomization")

    objects: list[Object] = []
    generated: list[str] = []
    for entry in spec.get("resources", []):
        resource = (directory / entry).resolve()
        if resource.is_dir():
            more, names = _build(resource)
            objects += more
            generated += names
        else:
            objects += [doc for doc in yaml.safe_load_all(resource.read_text()) if doc]
    for obj in objects:
        if not {"apiVersion", "kind", "metadata"} <= set(obj):
            raise KustomizeError(f"{path}: an object without apiVersion/kind/metadata")
        same = [o for o in objects if _key(o) == _key(obj)]
        if len(same) > 1:
            raise KustomizeError(f"{path}: {_key(obj)} is declared twice")

    for generator in spec.get("configMapGenerator", []):
        _generate(directory, generator, objects, generated)
    for patch in spec.get("patches", []):
        if set(patch) != {"patch"}:
            raise KustomizeError(f"{path}: only inline patches are supported: {patch}")
        change = yaml.safe_load(patch["patch"])
        target = _find(objects, change["kind"], change["metadata"]["name"])
        if target["apiVersion"] != change["apiVersion"]:
            raise KustomizeError(f"{path}: a patch's apiVersion differs: {change}")
        _merge(target, change, change["kind"])
    for rule in spec.get("images", []):
        _set_image(path, objects, rule)
    if "namespace" in spec:
        for obj in objects:
            obj["metadata"]["namespace"] = spec["namespace"]
    return objects, generated


def _key(obj: Object) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _find(objects: list[Object], kind: str, name: str) -> Object:
    for obj in objects:
        if _key(obj) == (kind, name):
            return obj
    raise KustomizeError(f"no {kind} named {name}")


def read_env_file(path: Path) -> dict[str, str]:
    """An env file as kustomize reads it: NAME=value lines, blank lines and
    comments; strict about everything else and about a name given twice."""
    data: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = ENV_LINE.match(line)
        if not match:
            raise KustomizeError(f"{path}:{number}: not NAME=value: {line!r}")
        _add(data, *match.groups(), where=f"{path}:{number}")
    return data


def _add(data: dict[str, str], name: str, value: str, where: str) -> None:
    if name in data:
        raise KustomizeError(f"{where}: {name} is given twice")
    data[name] = value


def _generate(
    directory: Path, generator: Object, objects: list[Object], generated: list[str]
) -> None:
    unknown = set(generator) - {"name", "envs", "literals", "behavior"}
    if unknown:
        raise KustomizeError(f"configMapGenerator: unsupported keys {sorted(unknown)}")
    data: dict[str, str] = {}
    for env in generator.get("envs", []):
        for name, value in read_env_file(directory / env).items():
            _add(data, name, value, where=env)
    for literal in generator.get("literals", []):
        match = ENV_LINE.match(literal)
        if not match:
            raise KustomizeError(f"a literal is not NAME=value: {literal!r}")
        _add(data, *match.groups(), where="literals")
    name = generator["name"]
    behavior = generator.get("behavior", "create")
    if behavior == "create":
        if name in generated:
            raise KustomizeError(f"ConfigMap {name} is generated twice")
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name},
                "data": data,
            }
        )
        generated.append(name)
    elif behavior == "merge":
        if name not in generated:
            raise KustomizeError(
                f"a merge into ConfigMap {name}, which is not generated"
            )
        _find(objects, "ConfigMap", name)["data"].update(data)
    else:
        raise KustomizeError(f"configMapGenerator: unsupported behavior {behavior}")


def _merge(target: Object, change: Object, where: str) -> None:
    """A strategic merge, as kustomize does it for these kinds: maps merge, lists of
    named items merge by name, other values are replaced."""
    for key, value in change.items():
        here = f"{where}.{key}"
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value, here)
        elif (
            isinstance(value, list)
            and isinstance(target.get(key), list)
            and all(isinstance(item, dict) and "name" in item for item in value)
        ):
            existing = {item["name"]: item for item in target[key]}
            for item in value:
                if item["name"] in existing:
                    _merge(existing[item["name"]], item, f"{here}[{item['name']}]")
                elif key == "containers":
                    raise KustomizeError(f"{here}: no container {item['name']}")
                else:
                    target[key].append(copy.deepcopy(item))
        else:
            target[key] = copy.deepcopy(value)


def _set_image(path: Path, objects: list[Object], rule: Object) -> None:
    unknown = set(rule) - {"name", "newName", "newTag"}
    if unknown:
        raise KustomizeError(f"{path}: images: unsupported keys {sorted(unknown)}")
    used = False
    for obj in objects:
        for container in containers(obj):
            name, _, tag = container["image"].partition(":")
            if name == rule["name"]:
                used = True
                name = rule.get("newName", name)
                tag = str(rule.get("newTag", tag))
                container["image"] = f"{name}:{tag}" if tag else name
    if not used:
        raise KustomizeError(f"{path}: no container uses the image {rule['name']}")
