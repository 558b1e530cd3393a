{{/* Names and labels. */}}
{{- define "triton-cascade.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "triton-cascade.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "triton-cascade.selectorLabels" -}}
app.kubernetes.io/name: {{ include "triton-cascade.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "triton-cascade.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "triton-cascade.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: inference-server
triton-cascade/profile: {{ .Values.profile }}
{{- end }}

{{- define "triton-cascade.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "triton-cascade.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "triton-cascade.claimName" -}}
{{- if .Values.modelRepository.pvc.existingClaim }}
{{- .Values.modelRepository.pvc.existingClaim }}
{{- else }}
{{- printf "%s-models" (include "triton-cascade.fullname" .) }}
{{- end }}
{{- end }}

{{/* The model repository Triton reads: <mountPath>/<profile> or <objectStore.url>/<profile>. */}}
{{- define "triton-cascade.repositoryPath" -}}
{{- if eq .Values.modelRepository.source "objectStore" }}
{{- printf "%s/%s" (trimSuffix "/" .Values.modelRepository.objectStore.url) .Values.profile }}
{{- else }}
{{- printf "%s/%s" (trimSuffix "/" .Values.modelRepository.mountPath) .Values.profile }}
{{- end }}
{{- end }}

{{/* Seconds the startup probe allows; the Deployment's progress deadline adds 10 min (image pull, init container). */}}
{{- define "triton-cascade.startupBudget" -}}
{{- mul (int .Values.probes.startup.periodSeconds) (int .Values.probes.startup.failureThreshold) }}
{{- end }}

{{- define "triton-cascade.progressDeadline" -}}
{{- add (int (include "triton-cascade.startupBudget" .)) 600 }}
{{- end }}

{{/* GPUs the large tier's engine needs in this pod. */}}
{{- define "triton-cascade.engineGpus" -}}
{{- mul (int .Values.largeTier.tensorParallelism) (int .Values.largeTier.pipelineParallelism) }}
{{- end }}

{{/*
Checks of combinations values.schema.json cannot express; each fails `helm template` with a
message naming the values to change. Included by every template, so any render reports them.
*/}}
{{- define "triton-cascade.validate" -}}
{{- $v := .Values -}}
{{- $gpus := int $v.gpu.count }}
{{- $engine := int (include "triton-cascade.engineGpus" .) }}
{{- if not (has $v.profile (list "cpu" "gpu")) }}
{{- fail (printf "profile must be \"cpu\" or \"gpu\", got %q" (toString $v.profile)) }}
{{- end }}
{{- if and (eq $v.profile "gpu") (lt $gpus 1) }}
{{- fail (printf "profile gpu needs gpu.count >= 1 (got %d): the TensorRT-LLM tiers need a GPU; use profile cpu (values-cpu.yaml) for a CPU-only deployment" $gpus) }}
{{- end }}
{{- if and (eq $v.profile "gpu") (gt $engine $gpus) }}
{{- fail (printf "largeTier.tensorParallelism x pipelineParallelism = %d x %d = %d GPUs, but gpu.count is %d: a TP>1 engine needs that many GPUs in the pod; raise gpu.count or lower the parallelism" (int $v.largeTier.tensorParallelism) (int $v.largeTier.pipelineParallelism) $engine $gpus) }}
{{- end }}
{{- if and (eq $v.profile "cpu") (gt $engine 1) }}
{{- fail (printf "profile cpu runs llm_large with llama.cpp, without tensor or pipeline parallelism: set largeTier.tensorParallelism and pipelineParallelism to 1 (got %d x %d)" (int $v.largeTier.tensorParallelism) (int $v.largeTier.pipelineParallelism)) }}
{{- end }}
{{- $repo := $v.modelRepository }}
{{- if eq $repo.source "pvc" }}
{{- if and (not $repo.pvc.existingClaim) (not $repo.pvc.create) }}
{{- fail "no model repository source: modelRepository.source is pvc but neither modelRepository.pvc.existingClaim nor modelRepository.pvc.create is set; name a claim, let the chart create one, or set modelRepository.source=objectStore with modelRepository.objectStore.url" }}
{{- end }}
{{- else if eq $repo.source "objectStore" }}
{{- if not $repo.objectStore.url }}
{{- fail "no model repository source: modelRepository.source is objectStore but modelRepository.objectStore.url is empty; set it to s3://bucket/prefix, gs://bucket/prefix or as://account/container/prefix" }}
{{- end }}
{{- if not (regexMatch "^(s3|gs|as)://.+" $repo.objectStore.url) }}
{{- fail (printf "modelRepository.objectStore.url must start with s3://, gs:// or as:// (Triton's object stores), got %q" $repo.objectStore.url) }}
{{- end }}
{{- if $repo.init.enabled }}
{{- fail "modelRepository.init fills a PVC: it needs modelRepository.source=pvc (Triton reads an object store itself)" }}
{{- end }}
{{- if and $repo.objectStore.gcsKeyFile (not $repo.objectStore.credentialsSecret) }}
{{- fail "modelRepository.objectStore.gcsKeyFile names a key of modelRepository.objectStore.credentialsSecret, which is empty" }}
{{- end }}
{{- else }}
{{- fail (printf "no model repository source: modelRepository.source must be pvc or objectStore, got %q" (toString $repo.source)) }}
{{- end }}
{{- if and $repo.init.enabled (not $repo.init.command) }}
{{- fail "modelRepository.init.enabled needs modelRepository.init.command (what fills the repository)" }}
{{- end }}
{{- $rp := $v.server.restrictedProtocols }}
{{- if $rp.enabled }}
{{- if not $rp.secretName }}
{{- fail "server.restrictedProtocols.enabled needs server.restrictedProtocols.secretName: the Secret holding the header value" }}
{{- end }}
{{- if has "health" $rp.protocols }}
{{- fail "server.restrictedProtocols.protocols must not contain health: the liveness, readiness and startup probes call /v2/health/* without the header" }}
{{- end }}
{{- if not $rp.protocols }}
{{- fail "server.restrictedProtocols.enabled needs at least one protocol in server.restrictedProtocols.protocols" }}
{{- end }}
{{- end }}
{{- $remote := $v.remoteLLM }}
{{- if and $remote.apiKeySecret.name (has $remote.apiKeyEnv (list "HOME" "CASCADE_LLM_THREADS" "CASCADE_LLM_LARGE_URL" "CASCADE_LLM_SMALL_URL" "TRITON_RESTRICTED_KEY" "TRTLLM_ORCHESTRATOR" "GOOGLE_APPLICATION_CREDENTIALS")) }}
{{- fail (printf "remoteLLM.apiKeyEnv %s is a variable the chart sets itself: name the one the remote tiers read their key from (default OPENAI_API_KEY)" $remote.apiKeyEnv) }}
{{- end }}
{{- if and (eq $v.server.modelControlMode "explicit") (not $v.server.loadModels) }}
{{- fail "server.modelControlMode explicit needs server.loadModels (\"*\" for all, or model names)" }}
{{- end }}
{{- if and (has "*" $v.server.loadModels) (gt (len $v.server.loadModels) 1) }}
{{- fail "server.loadModels: \"*\" (all models) cannot be combined with model names" }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d)" (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- end }}
{{- $pdb := $v.podDisruptionBudget }}
{{- if and $pdb.enabled (eq (toString $pdb.maxUnavailable) "") (eq (toString $pdb.minAvailable) "") }}
{{- fail "podDisruptionBudget.enabled needs podDisruptionBudget.maxUnavailable or minAvailable" }}
{{- end }}
{{- if and $pdb.enabled (ne (toString $pdb.maxUnavailable) "") (ne (toString $pdb.minAvailable) "") }}
{{- fail "podDisruptionBudget: set maxUnavailable or minAvailable, not both" }}
{{- end }}
{{- if ge (int $v.server.exitTimeoutSeconds) (int $v.terminationGracePeriodSeconds) }}
{{- fail (printf "server.exitTimeoutSeconds (%d) must be below terminationGracePeriodSeconds (%d), or the kubelet kills Triton before it drains" (int $v.server.exitTimeoutSeconds) (int $v.terminationGracePeriodSeconds)) }}
{{- end }}
{{- end }}

{{/* tritonserver arguments: the order of cascade/server_options.py server_command, then the chart's own. */}}
{{- define "triton-cascade.serverArgs" -}}
{{- $v := .Values -}}
- {{ printf "--model-repository=%s" (include "triton-cascade.repositoryPath" .) | quote }}
- {{ printf "--model-control-mode=%s" $v.server.modelControlMode | quote }}
{{- if eq $v.server.modelControlMode "explicit" }}
{{- range $v.server.loadModels }}
- {{ printf "--load-model=%s" . | quote }}
{{- end }}
{{- end }}
- {{ printf "--http-address=%s" $v.server.bindAddress | quote }}
- {{ printf "--http-port=%d" (int $v.ports.http) | quote }}
- {{ printf "--grpc-address=%s" $v.server.bindAddress | quote }}
- {{ printf "--grpc-port=%d" (int $v.ports.grpc) | quote }}
- {{ printf "--metrics-address=%s" $v.server.bindAddress | quote }}
- {{ printf "--metrics-port=%d" (int $v.ports.metrics) | quote }}
{{- if eq $v.profile "cpu" }}
- "--pinned-memory-pool-byte-size=0"
- "--allow-gpu-metrics=false"
{{- end }}
- {{ printf "--log-verbose=%d" (int $v.server.logVerbose) | quote }}
- {{ printf "--exit-timeout-secs=%d" (int $v.server.exitTimeoutSeconds) | quote }}
- {{ printf "--metrics-interval-ms=%d" (int $v.server.metrics.intervalMs) | quote }}
{{- range $key, $value := $v.server.metrics.config }}
- {{ printf "--metrics-config=%s=%s" $key (toString $value) | quote }}
{{- end }}
{{- $rp := $v.server.restrictedProtocols }}
{{- if $rp.enabled }}
{{- $restriction := printf "%s:%s=$(TRITON_RESTRICTED_KEY)" (join "," $rp.protocols) $rp.headerKey }}
- {{ printf "--grpc-restricted-protocol=%s" $restriction | quote }}
- {{ printf "--http-restricted-api=%s" $restriction | quote }}
{{- end }}
{{- range $v.server.extraArgs }}
- {{ toString . | quote }}
{{- end }}
{{- end }}
