"""The Helm chart's values: every key of values.yaml read by a template and every value a template reads
defined there; bad values refused by the chart's checks or its values.schema.json with a clear message.
"""

from __future__ import annotations

import re

import pytest
import yaml
from helm_chart import (
    CHART,
    VALUE_SETS,
    helm_home,  # noqa: F401 -- autouse: helm's folders in a temporary one
    template,
)


def _leaves(tree: dict, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Dotted paths of values.yaml; an empty map or any list is a leaf."""
    out = set()
    for key, value in tree.items():
        path = (*prefix, key)
        if isinstance(value, dict) and value:
            out |= _leaves(value, path)
        else:
            out.add(path)
    return out


_ALIAS = re.compile(r"{{-?\s*\$(\w+)\s*:?=\s*(\.Values|\$\w+)((?:\.\w+)*)\s*-?}}")
_REFERENCE = re.compile(r"(\.Values|\$\w+)((?:\.\w+)+)")


def template_references() -> set[tuple[str, ...]]:
    """Every values path the templates read: ``.Values.a.b``, or ``$x.b`` with ``$x := .Values.a``
    (a variable bound to exactly a values path, nothing else)."""
    texts = [p.read_text() for p in sorted((CHART / "templates").iterdir()) if p.is_file()]
    aliases: dict[str, tuple[str, ...]] = {}
    for text in texts:
        for var, root, rest in _ALIAS.findall(text):
            base = () if root == ".Values" else aliases.get(root[1:])
            if base is not None:
                aliases[var] = (*base, *rest.split(".")[1:])
    refs = set()
    for text in texts:
        text = _ALIAS.sub("", text)  # a binding is not a use
        for root, rest in _REFERENCE.findall(text):
            base = () if root == ".Values" else aliases.get(root[1:])
            if base is not None:
                refs.add((*base, *rest.split(".")[1:]))
    return refs


def test_every_values_key_is_used_by_a_template():
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    refs = template_references()
    unused = [
        ".".join(leaf)
        for leaf in sorted(_leaves(defaults))
        if not any(leaf[: len(ref)] == ref for ref in refs)  # the key itself or a whole parent (toYaml)
    ]
    assert not unused, f"values.yaml keys no template reads: {unused}"


def test_every_template_reference_is_in_values():
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    paths = _leaves(defaults) | {leaf[:i] for leaf in _leaves(defaults) for i in range(1, len(leaf))}
    missing = sorted(".".join(ref) for ref in template_references() if ref not in paths)
    assert not missing, f"templates read values not in values.yaml: {missing}"


# --- bad input -----------------------------------------------------------------------------------
#: An API key given as a value: refused, and not echoed in the error.
LITERAL_KEY = "sk-literal-test-key-0123456789"
BAD_VALUES = {
    "gpu profile with zero GPUs": (("gpu.count=0",), "profile gpu needs gpu.count >= 1"),
    "TP larger than GPUs": (
        ("largeTier.tensorParallelism=4", "gpu.count=2"),
        "a TP>1 engine needs that many GPUs in the pod",
    ),
    "TP x PP larger than GPUs": (
        ("largeTier.tensorParallelism=2", "largeTier.pipelineParallelism=2", "gpu.count=2"),
        "= 2 x 2 = 4 GPUs, but gpu.count is 2",
    ),
    "no PVC and no claim": (("modelRepository.pvc.create=false",), "no model repository source"),
    "object store without a URL": (("modelRepository.source=objectStore",), "no model repository source"),
    "unknown repository source": (("modelRepository.source=nfs",), "modelRepository.source must be pvc or objectStore"),
    "object store URL not s3/gs/as": (
        ("modelRepository.source=objectStore", "modelRepository.objectStore.url=https://bucket/models"),
        "must start with s3://, gs:// or as://",
    ),
    "restricted protocols without a Secret": (
        ("server.restrictedProtocols.enabled=true",),
        "needs server.restrictedProtocols.secretName",
    ),
    "restricting health breaks the probes": (
        (
            "server.restrictedProtocols.enabled=true",
            "server.restrictedProtocols.secretName=s",
            "server.restrictedProtocols.protocols={health,model-repository}",
        ),
        "must not contain health",
    ),
    "cpu profile with TP": (
        ("profile=cpu", "largeTier.tensorParallelism=2"),
        "profile cpu runs llm_large with llama.cpp",
    ),
    "HPA min above max": (
        ("autoscaling.enabled=true", "autoscaling.minReplicas=5", "autoscaling.maxReplicas=2"),
        "autoscaling.minReplicas (5) is above autoscaling.maxReplicas (2)",
    ),
    "init container with an object store": (
        (
            "modelRepository.source=objectStore",
            "modelRepository.objectStore.url=s3://b/p",
            "modelRepository.init.enabled=true",
            "modelRepository.init.command={sh}",
        ),
        "modelRepository.init fills a PVC",
    ),
    "drain longer than the grace period": (
        ("server.exitTimeoutSeconds=90",),
        "must be below terminationGracePeriodSeconds",
    ),
    "unknown profile (schema)": (("profile=tpu",), 'profile must be one of the following: "cpu", "gpu"'),
    "zero LLM threads (schema)": (("llm.threads=0",), "llm.threads: Must be greater than or equal to 1"),
    "LLM threads not a number (schema)": (("llm.threads=two",), "llm.threads: Invalid type"),
    "misspelt key (schema)": (("gpu.cout=2",), "Additional property cout is not allowed"),
    "a literal LLM API key (schema)": (
        (f"remoteLLM.apiKey={LITERAL_KEY}",),
        "Additional property apiKey is not allowed",
    ),
    "a literal key next to its Secret (schema)": (
        ("remoteLLM.apiKeySecret.name=llm-key", f"remoteLLM.apiKeySecret.value={LITERAL_KEY}"),
        "Additional property value is not allowed",
    ),
    "remote LLM URL not http(s) (schema)": (("remoteLLM.url=vllm:8000",), "remoteLLM.url: Does not match pattern"),
    "credentials in the remote LLM URL (schema)": (
        ("remoteLLM.url=https://user:secret@llm.example.com/v1",),
        "remoteLLM.url: Does not match pattern",
    ),
    "API key variable not a variable name (schema)": (
        ("remoteLLM.apiKeyEnv=OPENAI-KEY",),
        "remoteLLM.apiKeyEnv: Does not match pattern",
    ),
    "API key variable the chart sets itself": (
        ("remoteLLM.apiKeySecret.name=llm-key", "remoteLLM.apiKeyEnv=HOME"),
        "remoteLLM.apiKeyEnv HOME is a variable the chart sets itself",
    ),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_fail_with_a_message(case):
    sets, message = BAD_VALUES[case]
    proc = template(sets=sets)
    assert proc.returncode != 0, f"{case}: rendered anyway"
    assert message in proc.stderr, proc.stderr


def test_a_literal_api_key_is_refused_and_not_echoed():
    for sets in (
        (f"remoteLLM.apiKey={LITERAL_KEY}",),
        ("remoteLLM.url=https://llm.example.com/v1", f"apiKey={LITERAL_KEY}"),
    ):
        proc = template(sets=sets)
        assert proc.returncode != 0, f"{sets}: rendered anyway"
        assert "Additional property apiKey is not allowed" in proc.stderr, proc.stderr
        assert LITERAL_KEY not in proc.stdout + proc.stderr


def test_cpu_values_with_zero_gpus_render():
    """gpu.count is the gpu profile's business: the cpu profile renders whatever it says."""
    proc = template(VALUE_SETS["cpu"], sets=("gpu.count=0",))
    assert proc.returncode == 0, proc.stderr
