{{/* Names, labels and the values every template shares. */}}

{{- define "coe-router.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "coe-router.fullname" -}}
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

{{- define "coe-router.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object, besides its selector labels. */}}
{{- define "coe-router.metaLabels" -}}
helm.sh/chart: {{ include "coe-router.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of an object that belongs to no single component. */}}
{{- define "coe-router.labels" -}}
app.kubernetes.io/name: {{ include "coe-router.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "coe-router.metaLabels" . }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway"). */}}
{{- define "coe-router.selectorLabels" -}}
app.kubernetes.io/name: {{ include "coe-router.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector labels of one expert's pods: (dict "root" $ "expert" $expert). */}}
{{- define "coe-router.expertSelectorLabels" -}}
{{ include "coe-router.selectorLabels" (dict "root" .root "component" "expert") }}
coe-router.io/expert: {{ .expert.name }}
{{- end }}

{{- define "coe-router.gatewayName" -}}
{{- printf "%s-gateway" (include "coe-router.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "coe-router.redisName" -}}
{{- printf "%s-redis" (include "coe-router.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* StatefulSet and headless Service of one expert: (dict "root" $ "expert" $expert). */}}
{{- define "coe-router.expertName" -}}
{{- printf "%s-expert-%s" (include "coe-router.fullname" .root) (.expert.name | lower | replace "_" "-" | replace "." "-") | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "coe-router.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "coe-router.gatewayName" .) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "coe-router.secretName" -}}
{{- default (printf "%s-auth" (include "coe-router.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "coe-router.catalogName" -}}
{{- printf "%s-catalog" (include "coe-router.fullname" .) }}
{{- end }}

{{/* The Redis URL the gateway gets, or "" for none. */}}
{{- define "coe-router.redisUrl" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s.%s.svc:6379/0" (include "coe-router.redisName" .) .Release.Namespace }}
{{- else }}
{{- .Values.redis.external.url }}
{{- end }}
{{- end }}

{{/* Is this expert run by the chart (not external)? Returns "true" or "". */}}
{{- define "coe-router.expertInCluster" -}}
{{- if not .external }}true{{- end }}
{{- end }}

{{/* The catalog file: the experts (with their replica URLs) and the `catalog` values. */}}
{{- define "coe-router.catalog" -}}
{{- $root := . }}
{{- $experts := list }}
{{- range .Values.experts }}
{{- $e := dict "name" .name "served_model_name" .servedModelName }}
{{- if .description }}{{- $_ := set $e "description" .description }}{{- end }}
{{- $_ := set $e "generalist" (default false .generalist) }}
{{- $_ := set $e "categories" (default list .categories) }}
{{- $_ := set $e "cost" (default 1.0 .cost) }}
{{- $_ := set $e "memory_gb" (default 0 .memoryGb) }}
{{- $_ := set $e "required" (ternary .required true (hasKey . "required")) }}
{{- $t := default dict .tier }}
{{- $tier := dict "device" (default "gpu0" $t.device) "pinned" (default false $t.pinned) "sleep_level" (int (default 1 $t.sleepLevel)) "sleep_mode" (default false .sleepMode) }}
{{- if .external }}
{{- $_ := set $tier "sleep_mode" (default false .external.sleepMode) }}
{{- $_ := set $e "replicas" .external.urls }}
{{- else }}
{{- $name := include "coe-router.expertName" (dict "root" $root "expert" .) }}
{{- $urls := list }}
{{- range $i := until (int (default 1 .replicas)) }}
{{- $urls = append $urls (printf "http://%s-%d.%s.%s.svc:%d" $name $i $name $root.Release.Namespace (int $root.Values.vllm.port)) }}
{{- end }}
{{- $_ := set $e "replicas" $urls }}
{{- end }}
{{- $_ := set $e "tier" $tier }}
{{- with .catalogExtra }}{{- $e = mergeOverwrite $e (deepCopy .) }}{{- end }}
{{- $experts = append $experts $e }}
{{- end }}
{{- $catalog := dict "experts" $experts }}
{{- with .Values.catalog.virtualModels }}{{- $_ := set $catalog "virtual_models" . }}{{- end }}
{{- with .Values.catalog.keywords }}{{- $_ := set $catalog "keywords" . }}{{- end }}
{{- with .Values.catalog.extra }}{{- $catalog = merge $catalog (deepCopy .) }}{{- end }}
{{- toYaml $catalog }}
{{- end }}

{{/* Fail early on combinations the gateway cannot run. */}}
{{- define "coe-router.validate" -}}
{{- if and (not .Values.auth.existingSecret) (not .Values.auth.adminKey) }}
{{- fail "auth.adminKey is required (or auth.existingSecret): e.g. --set auth.adminKey=$(openssl rand -hex 24)" }}
{{- end }}
{{- if .Values.gateway.tiers.enabled }}
{{- $many := or (and .Values.gateway.autoscaling.enabled (gt (int .Values.gateway.autoscaling.maxReplicas) 1)) (and (not .Values.gateway.autoscaling.enabled) (gt (int .Values.gateway.replicaCount) 1)) }}
{{- if $many }}
{{- fail "gateway.tiers.enabled needs exactly one gateway (tier leases in Redis are planned): set gateway.autoscaling.enabled=false and gateway.replicaCount=1" }}
{{- end }}
{{- end }}
{{- $names := list }}
{{- $generalists := 0 }}
{{- range .Values.experts }}
{{- if has .name $names }}{{- fail (printf "experts: the name %q is used twice" .name) }}{{- end }}
{{- $names = append $names .name }}
{{- if .generalist }}{{- $generalists = add1 $generalists }}{{- end }}
{{- if and (not .external) (not .model) }}{{- fail (printf "experts[%s]: give `model` (run it here) or `external.urls`" .name) }}{{- end }}
{{- if and .external .model }}{{- fail (printf "experts[%s]: give `model` or `external`, not both" .name) }}{{- end }}
{{- end }}
{{- if gt $generalists 1 }}{{- fail "experts: at most one expert may be the generalist" }}{{- end }}
{{- end }}

{{/* The text of NOTES.txt (a helper, so tests can render it: helm template skips NOTES). */}}
{{- define "coe-router.notes" -}}
coe-router {{ .Chart.AppVersion }} is installed as {{ .Release.Name }} in {{ .Release.Namespace }}.

{{- $models := list }}
{{- range .Values.catalog.virtualModels }}{{- $models = append $models .name }}{{- end }}
{{- range .Values.experts }}{{- $models = append $models .servedModelName }}{{- end }}

The OpenAI-compatible endpoint (models: {{ join ", " $models }}):

  kubectl -n {{ .Release.Namespace }} port-forward svc/{{ include "coe-router.gatewayName" . }} 8000:{{ .Values.gateway.service.port }}
  curl localhost:8000/ready
  curl localhost:8000/v1/chat/completions -H "Authorization: Bearer $API_KEY" \
    -H 'Content-Type: application/json' \
    -d '{"model": "coe", "messages": [{"role": "user", "content": "Write a haiku"}]}'

Admin key: kubectl -n {{ .Release.Namespace }} get secret {{ include "coe-router.secretName" . }} -o jsonpath='{.data.admin-key}' | base64 -d
{{- $inCluster := list }}
{{- range .Values.experts }}{{- if not .external }}{{- $inCluster = append $inCluster .name }}{{- end }}{{- end }}
{{- if $inCluster }}

Experts run here: {{ join ", " $inCluster }}. The first start downloads the weights and
can take 20+ minutes; watch them with
  kubectl -n {{ .Release.Namespace }} get pods -w -l app.kubernetes.io/instance={{ .Release.Name }},app.kubernetes.io/component=expert
{{- if not .Values.networkPolicy.enabled }}

WARNING: networkPolicy.enabled=false. vLLM's /sleep and /wake_up (VLLM_SERVER_DEV_MODE)
have no authentication: anything in the cluster can put your experts to sleep.
{{- end }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor")) }}

WARNING: metrics.serviceMonitor.enabled=true but this cluster does not serve
monitoring.coreos.com/v1 (prometheus-operator): no ServiceMonitor was created.
{{- end }}
{{- if and (not .Values.redis.enabled) (not .Values.redis.external.url) (not .Values.redis.external.existingSecret.name) }}

Redis: none (redis.enabled=false, no redis.external.url): the gateways share no state.
{{- end }}
{{- end }}
