{{/*
Fixed object names: the compiled pipeline refers to these by name.
*/}}
{{- define "sidreasoner.teacherSecretName" -}}sidreasoner-teacher{{- end -}}
{{- define "sidreasoner.hfSecretName" -}}sidreasoner-hf{{- end -}}
{{- define "sidreasoner.s3SecretName" -}}sidreasoner-s3{{- end -}}
{{- define "sidreasoner.gcsSecretName" -}}sidreasoner-gcs{{- end -}}
{{- define "sidreasoner.minioName" -}}sidreasoner-minio{{- end -}}

{{/* Chart label value: name-version. */}}
{{- define "sidreasoner.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. Call with (dict "ctx" $ "component" "name"). */}}
{{- define "sidreasoner.labels" -}}
helm.sh/chart: {{ include "sidreasoner.chart" .ctx }}
app.kubernetes.io/name: sidreasoner
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: sidreasoner-pipelines
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels (stable across upgrades). Call with (dict "ctx" $ "component" "name"). */}}
{{- define "sidreasoner.selectorLabels" -}}
app.kubernetes.io/name: sidreasoner
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Reference of an image dict: "repository@digest" when it has a digest (the tag then only labels
it in values), else "repository:tag"; a tag starting with `@sha256:` is a digest too. */}}
{{- define "sidreasoner.image" -}}
{{- if .digest -}}
{{ .repository }}@{{ .digest }}
{{- else if hasPrefix "@" .tag -}}
{{ .repository }}{{ .tag }}
{{- else -}}
{{ .repository }}:{{ .tag }}
{{- end -}}
{{- end -}}

{{/* Pod security context: top-level podSecurityContext with the component's merged over it.
Call with (dict "ctx" $ "override" .Values.x.podSecurityContext). */}}
{{- define "sidreasoner.podSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .ctx.Values.podSecurityContext) (deepCopy (.override | default dict))) -}}
{{- end -}}

{{/* Container security context: top-level containerSecurityContext with the component's over it. */}}
{{- define "sidreasoner.containerSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .ctx.Values.containerSecurityContext) (deepCopy (.override | default dict))) -}}
{{- end -}}

{{/* The imagePullSecrets' names as a JSON list, e.g. ["my-registry"]. */}}
{{- define "sidreasoner.pullSecretNames" -}}
{{- $names := list }}
{{- range .Values.imagePullSecrets }}{{- $names = append $names .name }}{{- end }}
{{- toJson $names }}
{{- end -}}

{{/* imagePullSecrets block (empty when none). */}}
{{- define "sidreasoner.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Name of the model-cache claim the chart's pods mount. */}}
{{- define "sidreasoner.modelCacheClaim" -}}
{{- .Values.modelCache.existingClaim | default .Values.modelCache.name -}}
{{- end -}}

{{/* Where the chart's pods mount the model cache (= the pipeline's cluster.model_cache_mount). */}}
{{- define "sidreasoner.modelCacheMount" -}}
{{- .Values.modelCache.mountPath | default "/models" | trimSuffix "/" -}}
{{- end -}}

{{/* Whether the chart's pods can mount a model cache. */}}
{{- define "sidreasoner.hasModelCache" -}}
{{- if or .Values.modelCache.enabled .Values.modelCache.existingClaim }}true{{ end -}}
{{- end -}}

{{/* storageClassName line for a persistence dict ("" = omit, "-" = empty string). */}}
{{- define "sidreasoner.storageClass" -}}
{{- if eq .storageClass "-" }}
storageClassName: ""
{{- else if .storageClass }}
storageClassName: {{ .storageClass | quote }}
{{- end }}
{{- end -}}

{{/*
Name of the Secret a credential's consumers read: existingSecret, else the fixed name when the chart
creates it from values, else "" (no Secret). Call with (dict "cred" .Values.secrets.x "fixed" "name"
"has" bool).
*/}}
{{- define "sidreasoner.secretRef" -}}
{{- if .cred.existingSecret -}}
{{ .cred.existingSecret }}
{{- else if .has -}}
{{ .fixed }}
{{- end -}}
{{- end -}}

{{- define "sidreasoner.s3SecretRef" -}}
{{- $s := .Values.secrets.s3 -}}
{{- include "sidreasoner.secretRef" (dict "cred" $s "fixed" (include "sidreasoner.s3SecretName" .) "has" (or $s.accessKeyId $s.secretAccessKey)) -}}
{{- end -}}

{{- define "sidreasoner.teacherSecretRef" -}}
{{- $s := .Values.secrets.teacher -}}
{{- include "sidreasoner.secretRef" (dict "cred" $s "fixed" (include "sidreasoner.teacherSecretName" .) "has" $s.apiKey) -}}
{{- end -}}

{{- define "sidreasoner.hfSecretRef" -}}
{{- $s := .Values.secrets.hf -}}
{{- include "sidreasoner.secretRef" (dict "cred" $s "fixed" (include "sidreasoner.hfSecretName" .) "has" $s.token) -}}
{{- end -}}

{{/* Ray image: rayCluster.image, each part defaulting to images.train's; the training image's digest
too, unless rayCluster.image.tag names another image. */}}
{{- define "sidreasoner.rayImage" -}}
{{- $r := .Values.rayCluster.image -}}
{{- $t := .Values.images.train -}}
{{- $digest := $r.digest | default (ternary "" $t.digest (not (empty $r.tag))) -}}
{{- $img := dict "repository" ($r.repository | default $t.repository) "tag" ($r.tag | default $t.tag) "digest" $digest -}}
{{- include "sidreasoner.image" $img -}}
{{- end -}}

{{/* S3 endpoint of the pipeline's steps: s3.endpoint, else the chart's MinIO Service when enabled,
else "" (the steps' own defaults). */}}
{{- define "sidreasoner.s3Endpoint" -}}
{{- if .Values.s3.endpoint -}}
{{ .Values.s3.endpoint }}
{{- else if .Values.minio.enabled -}}
{{ printf "http://%s.%s.svc:%v" (include "sidreasoner.minioName" .) .Release.Namespace .Values.minio.service.port }}
{{- end -}}
{{- end -}}

{{/* rayStartParams as a JSON map of strings (KubeRay wants strings; {} when empty). */}}
{{- define "sidreasoner.rayStartParams" -}}
{{- $p := dict -}}
{{- range $k, $v := . }}{{ $_ := set $p $k (toString $v) }}{{ end -}}
{{- toJson $p -}}
{{- end -}}

{{/* Env of every Ray container: model cache as HF_HOME, HF token and S3 credentials when present. */}}
{{- define "sidreasoner.rayEnv" -}}
{{- $hf := include "sidreasoner.hfSecretRef" . -}}
{{- $s3 := include "sidreasoner.s3SecretRef" . -}}
# Hub downloads and model mirrors land in the shared model cache.
- name: HF_HOME
  value: {{ include "sidreasoner.modelCacheMount" . }}/hf
{{- if $hf }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $hf }}
      key: token
      optional: true
{{- end }}
{{- if $s3 }}
# verl checkpoints and model exports to S3/MinIO buckets.
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $s3 }}
      key: AWS_ACCESS_KEY_ID
      optional: true
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $s3 }}
      key: AWS_SECRET_ACCESS_KEY
      optional: true
{{- end }}
{{- end -}}
