{{/* The services of the chart: maas's own, from files/services.yaml (generated from the services'
specs by `maas generate`), and every top-level values block naming a `model` (a model served by
`maas serve`), each with its port, env prefix, v2 models, whether it runs torch, and (user models) its class.
A user model's block takes the keys it leaves out from files/user-model-defaults.yaml (the chart's
defaults of a model service, generated from values.yaml by `maas generate`). */}}
{{- define "maas.services" -}}
{{- $services := .Files.Get "files/services.yaml" | fromYaml -}}
{{- $defaults := .Files.Get "files/user-model-defaults.yaml" | fromYaml -}}
{{- range $name, $block := .Values -}}
{{- if and (kindIs "map" $block) (hasKey $block "model") -}}
{{- $_ := merge $block (deepCopy $defaults) -}}
{{- if not (regexMatch "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$" $name) -}}
{{- fail (printf "%s: a model's values key is its Kubernetes name: lowercase letters, digits and '-'" $name) -}}
{{- end -}}
{{- $prefix := printf "MAAS_%s_" ($name | upper | replace "-" "_") -}}
{{- $_ := set $services $name (dict "port" $block.port "prefix" $prefix "models" (list $name) "torch" true "model" $block.model) -}}
{{- end -}}
{{- end -}}
{{- toYaml $services -}}
{{- end -}}

{{- define "maas.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "maas.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one service's resources: <fullname>-<service>. Call with (dict "root" $ "service" "vision"). */}}
{{- define "maas.component.fullname" -}}
{{- printf "%s-%s" (include "maas.fullname" .root) .service | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "maas.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every resource. */}}
{{- define "maas.labels" -}}
helm.sh/chart: {{ include "maas.chart" . }}
app.kubernetes.io/name: {{ include "maas.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: maas
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component. Call with (dict "root" $ "service" "vision"). */}}
{{- define "maas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "maas.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{/* All labels of one component's resources. */}}
{{- define "maas.componentLabels" -}}
{{ include "maas.labels" .root }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "maas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "maas.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* A service's image reference: registry/repository then @digest or :tag. global.imageRegistry wins over
the service's registry (Bitnami's rule: a parent chart or a mirror moves every image at once). */}}
{{- define "maas.image" -}}
{{- $image := .values.image -}}
{{- $registry := .root.Values.global.imageRegistry | default $image.registry | default .root.Values.image.registry -}}
{{- $ref := printf "%s/%s" $registry $image.repository | trimPrefix "/" -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $ref $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref ($image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The drain grace a service runs with: its settings' drain_grace_seconds, else the code's default (10). */}}
{{- define "maas.drainGrace" -}}
{{- $settings := .values.settings | default dict -}}
{{- if hasKey $settings "drain_grace_seconds" -}}{{ index $settings "drain_grace_seconds" }}{{- else -}}10{{- end -}}
{{- end -}}

{{/* DNS name of a service's Service as pods of the release resolve it: the bare name, which the pod's DNS
search path completes with its own namespace, so the address stays right when kustomize or a parent
chart moves the objects to another namespace. */}}
{{- define "maas.serviceHost" -}}
{{- include "maas.component.fullname" . -}}
{{- end -}}

{{/* Image reference of the model-repository image; also the marker its install writes (source `pvc`). */}}
{{- define "maas.modelRepositoryImage" -}}
{{- include "maas.image" (dict "root" . "values" .Values.modelRepository) -}}
{{- end -}}

{{/* Name of the model repository claim. */}}
{{- define "maas.modelClaim" -}}
{{- .Values.modelRepository.pvc.existingClaim | default (printf "%s-models" (include "maas.fullname" .)) -}}
{{- end -}}

{{/* The model services (those running torch), as a list. */}}
{{- define "maas.modelServices" -}}
{{- $torch := list -}}
{{- range $service, $contract := include "maas.services" . | fromYaml -}}
{{- if $contract.torch -}}
{{- $torch = append $torch $service -}}
{{- end -}}
{{- end -}}
{{- toJson $torch -}}
{{- end -}}

{{/* The model services whose runtime is `rayservice`, as a list. */}}
{{- define "maas.rayServices" -}}
{{- $ray := list -}}
{{- range $service := include "maas.modelServices" . | fromJsonArray -}}
{{- $values := index $.Values $service -}}
{{- if and $values.enabled (eq $values.runtime "rayservice") -}}
{{- $ray = append $ray $service -}}
{{- end -}}
{{- end -}}
{{- toJson $ray -}}
{{- end -}}

{{/* DNS name of the Serve service (Serve's gRPC proxy on every Ray node), as pods of the release resolve it. */}}
{{- define "maas.rayServeHost" -}}
{{- include "maas.serviceHost" (dict "root" . "service" "ray-serve") -}}
{{- end -}}

{{/* The `annotations:` block of a resource's metadata: commonAnnotations, then the resource's own (which
win). Call with (dict "root" $ "annotations" $own); renders nothing when both are empty. */}}
{{- define "maas.annotations" -}}
{{- with merge (deepCopy (.annotations | default dict)) (.root.Values.commonAnnotations | default dict) }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Where a pod may run: nodeSelector, tolerations, affinity, topologySpreadConstraints (a constraint
without a labelSelector spreads the component's own pods), priorityClassName, runtimeClassName.
Call with (dict "root" $ "values" $block "service" $component). */}}
{{- define "maas.scheduling" -}}
{{- $values := .values -}}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.topologySpreadConstraints }}
{{- $selector := include "maas.selectorLabels" (dict "root" $.root "service" $.service) | fromYaml }}
topologySpreadConstraints:
  {{- range $constraint := . }}
  - {{- toYaml (merge (deepCopy $constraint) (dict "labelSelector" (dict "matchLabels" $selector))) | nindent 4 }}
  {{- end }}
{{- end }}
{{- with $values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $values.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* Settings the chart sets itself, refused in a service's `settings`. */}}
{{- define "maas.checkSettings" -}}
{{- range $key := list "host" "port" "metrics_port" "model_repository" "log_format" "routing_file" "api_keys_file" "http_port" "http_enabled" }}
{{- if hasKey ($.values.settings | default dict) $key }}
{{- fail (printf "%s.settings.%s is set by the chart (ports are the contract's; see modelRepository, logFormat, gateway.routes, gateway.auth and gateway.http)" $.service $key) }}
{{- end }}
{{- end }}
{{- end -}}

{{- /* The port the gateway's pods serve the REST binding on (MAAS_GATEWAY_HTTP_PORT). */}}
{{- define "maas.gatewayHttpPort" -}}8080{{- end -}}
