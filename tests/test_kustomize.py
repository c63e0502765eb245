"""The pieces behind the Kubernetes manifests' checks: the split of .env.example into
the ConfigMap's settings (the context extension), and the strict overlay build the
sweep validates (tests/kustomize.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests import kustomize
from tests.conftest import load_extension

context = load_extension("context")

EXAMPLE = """\
# Copy to .env and fill in.

# development | test | production
ENVIRONMENT=development
LOG_LEVEL=INFO

# Password of the database user.
DB_PASSWORD=change-me
# The database's URL.
DATABASE_URL=postgresql+asyncpg://app:${DB_PASSWORD}@127.0.0.1:5432/x
# The pool: connections kept open.
DATABASE_POOL_SIZE=20

# Signs access tokens.
SECRET_KEY=change-me
ACCESS_TOKEN_EXPIRE_MINUTES=15
# Where spans go.
# OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318
# Where errors go.
# SENTRY_DSN=https://example
"""
SECRETS = """\
DATABASE_URL=postgresql+asyncpg://app:change-me@db:5432/x
SECRET_KEY=change-me
# SENTRY_DSN=
"""


def test_cluster_settings_leave_out_secrets_and_compose_passwords() -> None:
    settings = context.cluster_settings(EXAMPLE, SECRETS, "# In the cluster.")

    assert settings == (
        "# In the cluster.\n"
        "\n"
        "# development | test | production\n"
        "ENVIRONMENT=production\n"
        "LOG_LEVEL=INFO\n"
        "\n"
        "# The pool: connections kept open.\n"
        "DATABASE_POOL_SIZE=20\n"
        "\n"
        "ACCESS_TOKEN_EXPIRE_MINUTES=15\n"
        "# Where spans go.\n"
        "# OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318\n"
    )
    assert context.setting_names(settings) == [
        "ENVIRONMENT",
        "LOG_LEVEL",
        "DATABASE_POOL_SIZE",
        "ACCESS_TOKEN_EXPIRE_MINUTES",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]


def write(root: Path, files: dict[str, object]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        elif isinstance(content, list):
            path.write_text(yaml.safe_dump_all(content))
        else:
            path.write_text(yaml.safe_dump(content))


KUSTOMIZATION = {
    "apiVersion": "kustomize.config.k8s.io/v1beta1",
    "kind": "Kustomization",
}


def deployment(name: str, container: dict[str, object]) -> dict[str, object]:
    """A Deployment of one container (the fields the builder reads)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [container]}}},
    }


def patch(name: str, container: dict[str, object]) -> dict[str, str]:
    """An inline strategic-merge patch of a Deployment's container."""
    return {"patch": yaml.safe_dump(deployment(name, container))}


DEPLOYMENT = deployment(
    "api",
    {
        "name": "api",
        "image": "svc",
        "envFrom": [{"configMapRef": {"name": "settings"}}],
        "resources": {"requests": {"cpu": "250m"}},
    },
)


def project(root: Path, **overlay: object) -> Path:
    write(
        root,
        {
            "base/kustomization.yaml": {
                **KUSTOMIZATION,
                "resources": ["api.yaml"],
                "configMapGenerator": [{"name": "settings", "envs": ["settings.env"]}],
            },
            "base/api.yaml": [DEPLOYMENT],
            "base/settings.env": "# A comment.\nLOG_LEVEL=INFO\n\nPORT=8000\n",
            "overlay/kustomization.yaml": {
                **KUSTOMIZATION,
                "resources": ["../base"],
                **overlay,
            },
        },
    )
    return root / "overlay"


def test_an_overlay_builds_with_its_patches_images_and_settings(tmp_path: Path) -> None:
    plain = kustomize.build(project(tmp_path / "plain"))
    overlay = project(
        tmp_path / "changed",
        namespace="prod",
        images=[{"name": "svc", "newName": "registry/svc", "newTag": "1.0"}],
        configMapGenerator=[
            {"name": "settings", "behavior": "merge", "literals": ["LOG_LEVEL=DEBUG"]}
        ],
        patches=[
            patch("api", {"name": "api", "resources": {"limits": {"memory": "1Gi"}}})
        ],
    )

    api, settings = kustomize.build(overlay)

    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry/svc:1.0"
    assert container["resources"] == {
        "requests": {"cpu": "250m"},
        "limits": {"memory": "1Gi"},
    }
    assert settings["data"] == {"LOG_LEVEL": "DEBUG", "PORT": "8000"}
    # The generated name carries a hash of the data, and the pod refers to it.
    name = settings["metadata"]["name"]
    assert name.startswith("settings-")
    assert name != plain[1]["metadata"]["name"]
    assert container["envFrom"] == [{"configMapRef": {"name": name}}]
    assert {obj["metadata"]["namespace"] for obj in (api, settings)} == {"prod"}


@pytest.mark.parametrize(
    ("overlay", "error"),
    [
        ({"replicas": [{"name": "api", "count": 2}]}, "unsupported keys"),
        ({"patches": [patch("worker", {"name": "api"})]}, "no Deployment named worker"),
        ({"patches": [patch("api", {"name": "sidecar"})]}, "no container sidecar"),
        ({"images": [{"name": "other", "newTag": "1"}]}, "no container uses the image"),
        (
            {"configMapGenerator": [{"name": "nope", "behavior": "merge"}]},
            "not generated",
        ),
        (
            {"configMapGenerator": [{"name": "more", "literals": ["bad line"]}]},
            "not NAME=value",
        ),
        (
            {"configMapGenerator": [{"name": "more", "literals": ["A=1", "A=2"]}]},
            "given twice",
        ),
    ],
    ids=[
        "unknown-key",
        "patch-target",
        "patch-container",
        "image",
        "merge",
        "literal",
        "twice",
    ],
)
def test_what_kustomize_would_take_quietly_is_an_error(
    tmp_path: Path, overlay: dict[str, object], error: str
) -> None:
    with pytest.raises(kustomize.KustomizeError, match=error):
        kustomize.build(project(tmp_path, **overlay))


def test_an_env_file_line_that_is_not_a_setting_is_an_error(tmp_path: Path) -> None:
    root = project(tmp_path).parent
    (root / "base" / "settings.env").write_text("LOG_LEVEL=INFO\nexport PORT=1\n")

    with pytest.raises(kustomize.KustomizeError, match=r"settings\.env:2"):
        kustomize.build(root / "overlay")


def test_a_reference_to_a_config_map_never_generated_is_an_error(
    tmp_path: Path,
) -> None:
    root = project(tmp_path).parent
    deployment = yaml.safe_load((root / "base" / "api.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [
        {"configMapRef": {"name": "typo"}}
    ]
    (root / "base" / "api.yaml").write_text(yaml.safe_dump(deployment))

    with pytest.raises(kustomize.KustomizeError, match="no ConfigMap typo"):
        kustomize.build(root / "overlay")
