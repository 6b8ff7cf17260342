"""Checking k8s/ manifests against KubeRay's CRDs, with or without the CRD files at hand.

KubeRay's CRDs (ray-project/kuberay, ``ray-operator/config/crd/bases/ray.io_*.yaml``) are
~3 MB of generated schema; they are not copied here. Instead ``kuberay_fields.txt`` lists
every field path our manifests use, each one verified against the CRDs of the version named
in its header. The test checks that the manifests use no path outside that list; with
``KUBERAY_CRD_DIR`` pointing at a folder of the CRD files it checks against the CRDs
themselves. Regenerate the list after changing a manifest:

    python -m tests.ops.kuberay --crd-dir DIR --write

Why a walker and not plain ``jsonschema``: CRD schemas leave ``additionalProperties`` unset,
and Kubernetes silently *drops* unknown fields, so a misspelled field validates and then
does nothing. Here an unknown field is an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
FIELDS_FILE = Path(__file__).with_name("kuberay_fields.txt")
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every KubeRay resource under k8s/."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def _free_form(schema: dict[str, Any]) -> bool:
    """A map whose keys are data, not fields (labels, resources, rayStartParams, ...)."""
    return (
        "properties" not in schema
        and ("additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields"))
    ) or ("properties" not in schema and schema.get("type") == "object")


FREE = "/*"  # suffix of a path whose value is a free-form map (its keys are data)


def field_paths(value: Any, free: set[str], prefix: str = "") -> set[str]:
    """Every path in a manifest, lists as ``[]``; ``free`` holds the free-form map paths
    (from the fields file), whose keys are not descended into."""
    paths: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if path in free:
                paths.add(path + FREE)
                continue
            paths.add(path)
            paths |= field_paths(item, free, path)
    elif isinstance(value, list):
        for item in value:
            paths |= field_paths(item, free, f"{prefix}[]")
    return paths


def check_against_crd(value: Any, schema: dict[str, Any], prefix: str = "") -> tuple[set, list]:
    """(paths used, errors): unknown fields and wrong basic types, walking the CRD schema."""
    paths: set[str] = set()
    errors: list[str] = []
    if isinstance(value, dict):
        if schema.get("type") not in (None, "object"):
            errors.append(f"{prefix}: expected {schema.get('type')}, got a mapping")
            return paths, errors
        props = schema.get("properties", {})
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in props:
                errors.append(f"{path}: not a field of the CRD")
                continue
            if _free_form(props[key]) and isinstance(item, dict):
                paths.add(path + FREE)
                continue
            paths.add(path)
            sub_paths, sub_errors = check_against_crd(item, props[key], path)
            paths |= sub_paths
            errors += sub_errors
    elif isinstance(value, list):
        if schema.get("type") != "array":
            errors.append(f"{prefix}: expected {schema.get('type')}, got a list")
            return paths, errors
        for item in value:
            sub_paths, sub_errors = check_against_crd(item, schema.get("items", {}), f"{prefix}[]")
            paths |= sub_paths
            errors += sub_errors
    else:
        expected = schema.get("type")
        if schema.get("x-kubernetes-int-or-string"):
            ok = isinstance(value, int | str)
        else:
            ok = {
                None: True,
                "string": isinstance(value, str),
                "integer": isinstance(value, int) and not isinstance(value, bool),
                "number": isinstance(value, int | float) and not isinstance(value, bool),
                "boolean": isinstance(value, bool),
            }.get(expected, False)
        if not ok:
            errors.append(f"{prefix}: expected {expected}, got {type(value).__name__}")
        if "enum" in schema and value not in schema["enum"]:
            errors.append(f"{prefix}: {value!r} not one of {schema['enum']}")
    return paths, errors


def crd_schema(crd_dir: Path, kind: str, version: str = "v1") -> dict[str, Any]:
    crd = yaml.safe_load((crd_dir / CRD_FILES[kind]).read_text())
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(f"{kind} has no version {version}")


def qualified(kind: str, path: str) -> str:
    return f"{kind}:{path}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crd-dir", type=Path, required=True)
    parser.add_argument("--source", default="ray-project/kuberay v1.7.0", help="for the header")
    parser.add_argument("--write", action="store_true", help=f"rewrite {FIELDS_FILE.name}")
    args = parser.parse_args()
    used: set[str] = set()
    failed = False
    for name, doc in manifests():
        schema = crd_schema(args.crd_dir, doc["kind"], doc["apiVersion"].split("/")[-1])
        paths, errors = check_against_crd(doc, schema)
        for error in errors:
            print(f"{name}: {error}")
            failed = True
        used |= {qualified(doc["kind"], p) for p in paths}
    if args.write and not failed:
        header = (
            f"# Field paths of KubeRay resources used in k8s/, each verified against the CRDs\n"
            f"# of {args.source} (ray-operator/config/crd/bases/ray.io_*.yaml).\n"
            "# Generated by `python -m tests.ops.kuberay --crd-dir DIR --write`.\n"
        )
        FIELDS_FILE.write_text(header + "\n".join(sorted(used)) + "\n")
        print(f"wrote {len(used)} paths to {FIELDS_FILE}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
